{{/*
Pod Security Standards "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
every pod and container of a Shipyard chart uses these, so a namespace labelled
pod-security.kubernetes.io/enforce=restricted admits them unchanged.
*/}}

{{/*
Usage: {{ include "shipyard-common.podSecurityContext" (dict "uid" 1000) | nindent 8 }}
Non-root numeric user (the images' USER), a group owning mounted volumes, seccomp RuntimeDefault.
*/}}
{{- define "shipyard-common.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .uid }}
runAsGroup: {{ int .uid }}
fsGroup: {{ int .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Usage: {{ include "shipyard-common.containerSecurityContext" (dict "uid" 1000) | nindent 12 }}
No privilege escalation, no capabilities, read-only root filesystem (mount an emptyDir for
anything the process writes, e.g. /tmp).
*/}}
{{- define "shipyard-common.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .uid }}
runAsGroup: {{ int .uid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
