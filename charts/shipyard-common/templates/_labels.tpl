{{/*
Usage: {{ include "shipyard-common.labels" (dict "context" $ "component" "api") | nindent 4 }}
The recommended app.kubernetes.io/* labels of every object; "component" is optional.
*/}}
{{- define "shipyard-common.labels" -}}
helm.sh/chart: {{ include "shipyard-common.chart" .context }}
{{ include "shipyard-common.selectorLabels" . }}
{{- with .context.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | trunc 63 | trimSuffix "-" | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: {{ include "shipyard-common.name" .context }}
{{- end -}}

{{/*
Usage: {{ include "shipyard-common.selectorLabels" (dict "context" $ "component" "api") | nindent 6 }}
Selectors are immutable on Deployments, so they hold only name + instance (+ component),
never the version or chart labels that change on upgrade.
*/}}
{{- define "shipyard-common.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shipyard-common.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}
