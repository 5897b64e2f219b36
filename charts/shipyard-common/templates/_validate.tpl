{{/*
Usage: {{ include "shipyard-common.fail" (dict "context" $ "message" "replicaCount must be at least 1") }}
Stops rendering with "<chart>: <message>", so the user sees which chart and what to change.
*/}}
{{- define "shipyard-common.fail" -}}
{{- fail (printf "\n%s: %s" .context.Chart.Name .message) -}}
{{- end -}}

{{/*
Usage: {{ include "shipyard-common.validateDigest" (dict "context" $ "path" "components.api.image.digest" "value" .digest) }}
A digest is "sha256:" and 64 hex digits; anything else would be pulled as a broken reference.
*/}}
{{- define "shipyard-common.validateDigest" -}}
{{- if and .value (not (regexMatch "^sha256:[a-f0-9]{64}$" (toString .value))) -}}
{{- include "shipyard-common.fail" (dict "context" .context "message" (printf "%s must look like sha256:<64 hex digits>, got %q" .path (toString .value))) -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "shipyard-common.validatePort" (dict "context" $ "path" "components.api.port" "value" .port) }}
A TCP port between 1 and 65535.
*/}}
{{- define "shipyard-common.validatePort" -}}
{{- /* Helm 3 reads numbers as json.Number, Helm 4 as float64: compare their text. */ -}}
{{- $port := toString .value -}}
{{- if or (not (regexMatch "^[0-9]{1,5}$" $port)) (lt (atoi $port) 1) (gt (atoi $port) 65535) -}}
{{- include "shipyard-common.fail" (dict "context" .context "message" (printf "%s must be a port number between 1 and 65535, got %q" .path $port)) -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "shipyard-common.validateValues" $ }}
Checks the values every Shipyard chart shares, beyond what values.schema.json can say
(the schema catches types and unknown keys first): name lengths, digests. Call it once from a
template that always renders; it outputs nothing when the values are fine.
*/}}
{{- define "shipyard-common.validateValues" -}}
{{- $fullname := include "shipyard-common.fullname" . -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $fullname) -}}
{{- include "shipyard-common.fail" (dict "context" . "message" (printf "the release name gives object name %q, which is not a DNS-1123 label: use lowercase letters, digits and '-'" $fullname)) -}}
{{- end -}}
{{- end -}}
