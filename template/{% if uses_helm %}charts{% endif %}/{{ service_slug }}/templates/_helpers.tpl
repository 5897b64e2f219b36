{{/*
Helpers of this chart; names, labels, images and security contexts come from the vendored
shipyard-common library chart (charts/shipyard-common).
*/}}

{{/*
Usage: {{ include "app.replicas" (dict "context" $ "component" $c) }}
The component's replica count: its own replicaCount, else the top-level one.
*/}}
{{- define "app.replicas" -}}
{{- if kindIs "invalid" .component.replicaCount -}}
{{- .context.Values.replicaCount -}}
{{- else -}}
{{- .component.replicaCount -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "app.minReplicas" (dict "context" $ "component" $c) }}
Fewest pods the component runs: the HPA's minReplicas when autoscaling, else its replicas.
*/}}
{{- define "app.minReplicas" -}}
{{- if and .component.autoscaling.enabled (not (kindIs "invalid" .component.autoscaling.minReplicas)) -}}
{{- .component.autoscaling.minReplicas -}}
{{- else -}}
{{- include "app.replicas" . -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "app.image" (dict "context" $ "image" $c.image "path" "components.api.image") }}
A component's (or the backup's) image reference from image.registry/mirror/tag. A release
(install or upgrade, and `helm template`, which renders one) refuses an image without a digest
unless image.tag is set: a chart installed by hand must not silently run a moving tag.
`helm lint` (neither an install nor an upgrade) renders the defaults, which carry no digest.
*/}}
{{- define "app.image" -}}
{{- $v := .context.Values.image -}}
{{- $release := .context.Release -}}
{{- if and (not .image.digest) (not $v.tag) (or $release.IsInstall $release.IsUpgrade) -}}
{{- fail (printf "%s.digest is empty: each image runs by digest (`invoke deploy` passes the pushed ones: --set %s.digest=sha256:...); to run a tag instead, set image.tag explicitly" .path .path) -}}
{{- end -}}
{{- include "shipyard-common.image" (dict "registry" $v.registry "mirror" $v.mirror "repository" .image.repository "digest" .image.digest "tag" (default .context.Chart.AppVersion $v.tag)) -}}
{{- end -}}

{{/*
Usage: {{ include "app.urlPort" "http://minio:9000" }}
The port of a URL's host ("minio:9000", "[fd00::1]:9000"), else its scheme's (443, 80).
*/}}
{{- define "app.urlPort" -}}
{{- $url := urlParse . -}}
{{- trimPrefix ":" (regexFind ":[0-9]+$" $url.host) | default (ternary "443" "80" (eq $url.scheme "https")) -}}
{{- end -}}

{{/*
Usage: {{ include "app.serviceAccountName" . }}
*/}}
{{- define "app.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shipyard-common.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "app.secretEnv" (dict "context" $ "component" $c) | nindent 12 }}
A component's variables beside the shared ConfigMap: its own env, then the shared secret keys
and its own (secretEnv), each read from the existing Secret: a missing key stops the pod
from starting (CreateContainerConfigError) instead of running half-configured.
*/}}
{{- define "app.secretEnv" -}}
{{- $secret := .context.Values.secretEnv.existingSecret }}
{{- $cluster := include "app.cnpgCluster" .context }}
{{- range $k, $v := .component.env }}
- name: {{ $k }}
  value: {{ toString $v | quote }}
{{- end }}
{{- range concat .context.Values.secretEnv.keys (default (list) .component.secretEnv) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      {{- if and $cluster (eq . "DATABASE_URL") }}
      # The CloudNativePG Cluster's owner credentials, written by the operator.
      name: {{ $cluster }}-app
      key: uri
      {{- else }}
      name: {{ $secret }}
      key: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ with include "app.cnpgCluster" . }}...{{ end }}
The name of the CloudNativePG Cluster that runs the service's PostgreSQL (<fullname>-postgres)
when cloudnativepg.enabled, else empty. The values have a cloudnativepg block only in kits
answered database_on_kubernetes=cloudnativepg, hence `dig`.
*/}}
{{- define "app.cnpgCluster" -}}
{{- if dig "cloudnativepg" "enabled" false .Values.AsMap -}}
{{- include "shipyard-common.componentName" (dict "context" . "component" "postgres") -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ if include "app.kitBackups" . }}...{{ end }}
"true" when the kit's own backup pods run (backup-cronjob.yaml): backups on, and either no
CloudNativePG Cluster or a component with data paths (app.filesOnlyBackups); else empty.
*/}}
{{- define "app.kitBackups" -}}
{{- if and .Values.backup.enabled (or (not (include "app.cnpgCluster" .)) (include "app.dataPaths" .)) -}}true{{- end -}}
{{- end -}}

{{/*
Usage: {{ if include "app.filesOnlyBackups" . }}...{{ end }}
"true" when the kit's backup pods archive the data paths alone (`shipyard backup run
--files-only`): a CloudNativePG Cluster backs the database up, but not the components' files,
which only the kit's CronJob reaches (their claims); else empty.
*/}}
{{- define "app.filesOnlyBackups" -}}
{{- if and (include "app.kitBackups" .) (include "app.cnpgCluster" .) -}}true{{- end -}}
{{- end -}}

{{/*
Usage: {{ if include "app.dataPaths" . }}...{{ end }}
"true" when a component keeps files in data paths (components.<name>.dataPaths); else empty.
*/}}
{{- define "app.dataPaths" -}}
{{- range $name, $c := .Values.components -}}{{- if $c.dataPaths -}}true{{- end -}}{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "app.cnpgSchedule" .Values.backup.schedule }}
A 5-field cron schedule as CloudNativePG's 6-field one (seconds first). Its weekdays run 0-6:
a lone 7 (Sunday, which the 5-field form allows) becomes 0; validateValues refuses 7 elsewhere.
*/}}
{{- define "app.cnpgSchedule" -}}
{{- $f := splitList " " (. | trim) -}}
{{- if eq (last $f) "7" -}}{{- $f = append (initial $f) "0" -}}{{- end -}}
{{- printf "0 %s" (join " " $f) -}}
{{- end -}}

{{/*
Usage: {{ include "app.validateValues" . }}
Checks the schema cannot express; each failure says what to change.
*/}}
{{- define "app.validateValues" -}}
{{- include "shipyard-common.validateValues" . -}}
{{- range $name, $c := .Values.components }}
{{- include "shipyard-common.validateDigest" (dict "context" $ "path" (printf "components.%s.image.digest" $name) "value" $c.image.digest) -}}
{{- if eq $c.kind "http" }}
{{- include "shipyard-common.validatePort" (dict "context" $ "path" (printf "components.%s.port" $name) "value" $c.port) -}}
{{- end }}
{{- if and $c.autoscaling.enabled (not $c.resources.requests.cpu) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "components.%s.autoscaling needs resources.requests.cpu: the HPA scales on CPU use relative to it" $name)) -}}
{{- end }}
{{- if and (include "app.exclusiveData" $c) (or $c.autoscaling.enabled (gt (int (include "app.replicas" (dict "context" $ "component" $c))) 1)) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "components.%s keeps files on claims only one pod can mount (dataPaths with persistence.accessModes %v): run 1 replica without autoscaling, or set persistence.accessModes to [ReadWriteMany] with a storageClass that offers it" $name $c.persistence.accessModes)) -}}
{{- end }}
{{- if and $c.autoscaling.enabled (lt (int $c.autoscaling.maxReplicas) (int (include "app.minReplicas" (dict "context" $ "component" $c)))) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "components.%s.autoscaling.maxReplicas (%v) is below its minimum replica count (%s)" $name $c.autoscaling.maxReplicas (include "app.minReplicas" (dict "context" $ "component" $c)))) -}}
{{- end }}
{{- end }}
{{- include "shipyard-common.validateDigest" (dict "context" $ "path" "backup.image.digest" "value" .Values.backup.image.digest) -}}
{{- if and (or .Values.ingress.enabled .Values.gateway.enabled) (not .Values.host) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" "ingress.enabled / gateway.enabled need host: the public hostname (values-<env>.yaml sets it)") -}}
{{- end }}
{{- if and (or .Values.ingress.enabled .Values.gateway.enabled) (not (include "app.httpComponents" .)) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" "ingress.enabled / gateway.enabled need a component of kind http to route to; every component is a worker") -}}
{{- end }}
{{- if and .Values.maintenance.enabled (not (include "app.httpComponents" .)) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" "maintenance.enabled needs a component of kind http: every component is a worker, and no request reaches a worker") -}}
{{- end }}
{{- $seen := dict }}
{{- range $name, $c := .Values.components }}
{{- if eq $c.kind "http" }}
{{- $where := printf "%s%s" (include "app.host" (dict "context" $ "component" $c)) $c.route }}
{{- if hasKey $seen $where }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "components.%s and components.%s are both routed to %s: give one another route or subdomain" (get $seen $where) $name $where)) -}}
{{- end }}
{{- $_ := set $seen $where $name }}
{{- end }}
{{- end }}
{{- if and .Values.secretEnv.keys (not .Values.secretEnv.existingSecret) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" "secretEnv.keys need secretEnv.existingSecret: the name of the Secret holding them") -}}
{{- end }}
{{- range $name, $c := .Values.components }}
{{- if and $c.secretEnv (not $.Values.secretEnv.existingSecret) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "components.%s.secretEnv needs secretEnv.existingSecret: the name of the Secret holding them" $name)) -}}
{{- end }}
{{- end }}
{{- if .Values.migrations.enabled }}
{{- if not (hasKey .Values.components .Values.migrations.component) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "migrations.component %q is not one of the components (%s)" .Values.migrations.component (keys .Values.components | sortAlpha | join ", "))) -}}
{{- end }}
{{- if not .Values.migrations.command }}
{{- include "shipyard-common.fail" (dict "context" $ "message" "migrations.enabled needs migrations.command: the command that applies migrations") -}}
{{- end }}
{{- end }}
{{- if .Values.backup.enabled }}
{{- if not (regexMatch "^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:///.+)$" .Values.backup.target) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "backup.target must be s3://BUCKET/PREFIX or file:///backups, got %q" .Values.backup.target)) -}}
{{- end }}
{{- end }}
{{- if and (include "app.cnpgCluster" .) .Values.backup.enabled }}
{{- if not (hasPrefix "s3://" .Values.backup.target) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "cloudnativepg.enabled with backup.enabled needs an s3://BUCKET/PREFIX backup.target: CloudNativePG archives to object storage, got %q" .Values.backup.target)) -}}
{{- end }}
{{- $dow := last (splitList " " (.Values.backup.schedule | trim)) }}
{{- if and (ne $dow "7") (regexMatch "(^|[,-])7($|[,/-])" $dow) }}
{{- include "shipyard-common.fail" (dict "context" $ "message" (printf "backup.schedule's weekday field %q names day 7: CloudNativePG's schedule knows weekdays 0-6 (Sunday is 0)" $dow)) -}}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ if include "app.httpComponents" . }}
The names of the http components, space-separated; empty when every component is a worker
(then nothing routes to the release: no Ingress, HTTPRoute or Service).
*/}}
{{- define "app.httpComponents" -}}
{{- $names := list -}}
{{- range $name, $c := .Values.components -}}
{{- if eq $c.kind "http" -}}{{- $names = append $names $name -}}{{- end -}}
{{- end -}}
{{- join " " $names -}}
{{- end -}}

{{/*
Usage: {{ include "app.host" (dict "context" $ "component" $c) }}
The host an http component is served on: <subdomain>.<host>, or host itself without one.
*/}}
{{- define "app.host" -}}
{{- if .component.subdomain -}}
{{- printf "%s.%s" .component.subdomain .context.Values.host -}}
{{- else -}}
{{- .context.Values.host -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ range $host, $names := include "app.routedHosts" . | fromJson }}
Every public host and the http components it serves (names in order), as JSON: the Ingress has
a rule per host and lists them all for TLS; the Gateway API gets an HTTPRoute per host.
*/}}
{{- define "app.routedHosts" -}}
{{- $hosts := dict -}}
{{- range $name, $c := .Values.components -}}
{{- if eq $c.kind "http" -}}
{{- $host := include "app.host" (dict "context" $ "component" $c) -}}
{{- $_ := set $hosts $host (append (get $hosts $host | default list) $name) -}}
{{- end -}}
{{- end -}}
{{- toJson $hosts -}}
{{- end -}}

{{/*
Usage: {{ $backend := include "app.backend" (dict "context" $ "component" $name) | fromJson }}
The Service (name, port) a route sends a component's requests to, decided here for the Ingress
and the HTTPRoute alike: the component's own, or in maintenance mode (maintenance.enabled) the
maintenance page's (templates/maintenance.yaml, port 8080), for every component.
*/}}
{{- define "app.backend" -}}
{{- if .context.Values.maintenance.enabled -}}
{{- toJson (dict "name" (include "shipyard-common.componentName" (dict "context" .context "component" "maintenance")) "port" 8080) -}}
{{- else -}}
{{- $c := get .context.Values.components .component -}}
{{- toJson (dict "name" (include "shipyard-common.componentName" (dict "context" .context "component" .component)) "port" (int $c.port)) -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "app.hostRouteName" (dict "context" $ "subdomain" $c.subdomain) }}
The name of the HTTPRoute of a host: <fullname> for host itself, <fullname>-<subdomain> for a
subdomain (a long label is cut and given a hash, so the name stays unique within 63).
*/}}
{{- define "app.hostRouteName" -}}
{{- if not .subdomain -}}
{{- include "shipyard-common.fullname" .context -}}
{{- else -}}
{{- $suffix := .subdomain -}}
{{- if gt (len $suffix) 30 -}}
{{- $suffix = printf "%s-%s" ($suffix | trunc 23 | trimSuffix "-") (sha256sum .subdomain | trunc 6) -}}
{{- end -}}
{{- include "shipyard-common.componentName" (dict "context" .context "component" $suffix) -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ with include "app.probes" (dict "context" $ "component" $c) | trim }}{{ . | nindent 10 }}{{ end }}
The component's startupProbe, readinessProbe and livenessProbe: an http component GETs its
healthPath on its port, a worker runs its healthCommand or GETs healthPath on healthPort; empty
for a worker that declares neither. Timings: `probes`, overridden by the component's own.
*/}}
{{- define "app.probes" -}}
{{- $c := .component -}}
{{- $check := dict -}}
{{- if eq $c.kind "http" -}}
{{- $check = dict "httpGet" (dict "path" $c.healthPath "port" "http") -}}
{{- else if $c.healthCommand -}}
{{- $check = dict "exec" (dict "command" $c.healthCommand) -}}
{{- else if $c.healthPort -}}
{{- $check = dict "httpGet" (dict "path" $c.healthPath "port" $c.healthPort) -}}
{{- end -}}
{{- if $check -}}
{{- $timings := mergeOverwrite (deepCopy .context.Values.probes) (deepCopy (default (dict) $c.probes)) -}}
{{- range $probe := list "startup" "readiness" "liveness" }}
{{ $probe }}Probe:
  {{- toYaml (merge (deepCopy $check) (get $timings $probe)) | nindent 2 }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "app.tmpVolume" . }}
Writable scratch space: the root filesystem is read-only.
*/}}
{{- define "app.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{/*
Usage: {{ include "app.scratchEnv" . | nindent 12 }}
The root filesystem is read-only: temporary files, HOME and npm's cache and logs (`npm run`,
`npx`) go to the writable /tmp volume.
*/}}
{{- define "app.scratchEnv" -}}
- name: TMPDIR
  value: /tmp
- name: HOME
  value: /tmp
- name: npm_config_cache
  value: /tmp/.npm
{{- end -}}

{{/*
Usage: {{ include "app.dataClaim" (dict "context" $ "component" $name "key" $key) }}
The PersistentVolumeClaim of a component's data path: <component's name>-data-<key>.
*/}}
{{- define "app.dataClaim" -}}
{{- include "shipyard-common.componentName" (dict "context" .context "component" .component) }}-data-{{ .key }}
{{- end -}}

{{/*
Usage: {{ if include "app.exclusiveData" $c }}
Non-empty when the component has data claims that only one pod can mount (no ReadWriteMany):
it then runs one replica and is replaced, not rolled.
*/}}
{{- define "app.exclusiveData" -}}
{{- if and .dataPaths (not (has "ReadWriteMany" .persistence.accessModes)) -}}true{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "app.backupNeedsPostgres" . }} - fails when backups are on in a chart with no
PostgreSQL (networkPolicy.egress.postgres says where the service's is). Included by every
template that renders for backups, whichever Helm renders first. Files-only backups reach no
database, so need none.
*/}}
{{- define "app.backupNeedsPostgres" -}}
{{- if and .Values.backup.enabled (not (include "app.filesOnlyBackups" .)) (not (hasKey .Values.networkPolicy.egress "postgres")) -}}
{{- include "shipyard-common.fail" (dict "context" . "message" "backup.enabled needs the service's PostgreSQL, and this chart has none (no networkPolicy.egress.postgres says where it is): leave backup.enabled false, or add networkPolicy.egress.postgres for an external one") -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "app.serviceEgress" (dict "context" $ "uses" (list "postgres") "who" "the backup pods" "extra" $rules) }}
NetworkPolicy egress rules to the backing services named (networkPolicy.egress.<name>: its port,
from its cidrs or any address), then the `extra` rules; empty when there are none. A name
networkPolicy.egress does not define fails with what to change: an unknown one opens nothing.
*/}}
{{- define "app.serviceEgress" -}}
{{- $np := .context.Values.networkPolicy -}}
{{- $rules := list -}}
{{- range .uses -}}
{{- $rule := get $np.egress . -}}
{{- if not $rule -}}
{{- include "shipyard-common.fail" (dict "context" $.context "message" (printf "%s names %q, which networkPolicy.egress does not define: add networkPolicy.egress.%s (its port and cidrs), or remove it" $.who . .)) -}}
{{- end -}}
{{- $to := list -}}
{{- range $rule.cidrs }}{{ $to = append $to (dict "ipBlock" (dict "cidr" .)) }}{{ end -}}
{{- $r := dict "ports" (list (dict "port" (int $rule.port) "protocol" "TCP")) -}}
{{- if $to }}{{ $_ := set $r "to" $to }}{{ end -}}
{{- $rules = append $rules $r -}}
{{- end -}}
{{- with concat $rules (.extra | default list) }}{{ toYaml . }}{{ end -}}
{{- end -}}
