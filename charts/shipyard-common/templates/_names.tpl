{{/*
Kubernetes names are DNS-1123 labels: at most 63 characters, no trailing '-'.
*/}}

{{/*
Usage: {{ include "shipyard-common.name" . }}
The chart's name, or .Values.nameOverride.
*/}}
{{- define "shipyard-common.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "shipyard-common.fullname" . }}
<release>-<chart>, or just <release> when it already contains the chart name (release
"pe-portal" of chart "pe-portal" gives "pe-portal", not "pe-portal-pe-portal"), or
.Values.fullnameOverride.
*/}}
{{- define "shipyard-common.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "shipyard-common.componentName" (dict "context" $ "component" "api") }}
<fullname>-<component>: the name of a component's Deployment, Service, HPA...
Truncated from the left part so the component suffix always survives.
*/}}
{{- define "shipyard-common.componentName" -}}
{{- $suffix := printf "-%s" .component -}}
{{- $base := include "shipyard-common.fullname" .context | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s%s" $base $suffix -}}
{{- end -}}

{{/*
Usage: {{ include "shipyard-common.chart" . }}
<chart>-<version> for the helm.sh/chart label ('+' is not allowed in label values).
*/}}
{{- define "shipyard-common.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}
