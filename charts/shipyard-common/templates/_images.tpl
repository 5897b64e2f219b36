{{/*
Usage: {{ include "shipyard-common.image" (dict "registry" "ghcr.io/acme" "repository" "svc-api" "tag" "1.2.3" "digest" "" "mirror" "" ) }}
registry/repository, then "@digest" when a digest is given (deploys pin the pushed digest, so
a tag moved later never changes what runs), else ":tag". A non-empty "mirror" replaces the
registry, so an air-gapped site pulls every image through its mirror.
*/}}
{{- define "shipyard-common.image" -}}
{{- $registry := default .registry .mirror | trimSuffix "/" -}}
{{- $ref := .repository -}}
{{- if $registry -}}
{{- $ref = printf "%s/%s" $registry .repository -}}
{{- end -}}
{{- if .digest -}}
{{- printf "%s@%s" $ref .digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (required "an image needs a tag or a digest" (toString .tag)) -}}
{{- end -}}
{{- end -}}
