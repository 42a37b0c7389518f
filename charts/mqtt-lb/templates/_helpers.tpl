{{/* Names and labels. */}}
{{- define "mqtt-lb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mqtt-lb.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mqtt-lb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mqtt-lb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mqtt-lb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mqtt-lb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mqtt-lb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mqtt-lb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A listener's port name (Kubernetes: at most 15 characters, lower case, digits and '-'). */}}
{{- define "mqtt-lb.portName" -}}
{{- . | lower | replace "_" "-" | trunc 15 | trimSuffix "-" }}
{{- end }}

{{/* The lowest container port of the listeners. */}}
{{- define "mqtt-lb.lowestPort" -}}
{{- $lowest := 65535 }}
{{- range .Values.listeners }}
{{- $p := int (default .port .containerPort) }}
{{- if lt $p $lowest }}{{ $lowest = $p }}{{ end }}
{{- end }}
{{- $lowest }}
{{- end }}

{{/* Where the TLS Secret is mounted. */}}
{{- define "mqtt-lb.tlsDir" -}}/etc/mqtt-lb/tls{{- end }}

{{/* Where the Secret of tls.ticketKeys is mounted (a directory, not a subPath: Kubernetes updates it in place). */}}
{{- define "mqtt-lb.ticketKeysDir" -}}/etc/mqtt-lb/tls-tickets{{- end }}

{{/* config.yaml: listeners bound on all addresses of the pod, TLS files from the Secret mount. */}}
{{- define "mqtt-lb.config" -}}
{{- $tlsDir := include "mqtt-lb.tlsDir" . }}
{{- $listeners := list }}
{{- range .Values.listeners }}
{{- $l := omit . "port" "containerPort" "tls" }}
{{- $_ := set $l "bind" (printf "0.0.0.0:%d" (int (default .port .containerPort))) }}
{{- if .tls }}
{{- $tls := dict "cert" (printf "%s/tls.crt" $tlsDir) "key" (printf "%s/tls.key" $tlsDir) }}
{{- if $.Values.tls.clientCa }}
{{- $_ := set $tls "client_ca" (printf "%s/ca.crt" $tlsDir) }}
{{- end }}
{{- with $.Values.tls.ticketKeys }}
{{- if .secretName }}
{{- $key := required "tls.ticketKeys.key: the entry of the Secret holding the key file" .key }}
{{- $_ := set $tls "ticket_keys" (printf "%s/%s" (include "mqtt-lb.ticketKeysDir" $) $key) }}
{{- end }}
{{- end }}
{{- $_ := set $l "tls" $tls }}
{{- end }}
{{- $listeners = append $listeners $l }}
{{- end }}
{{- $config := dict
  "listeners" $listeners
  "backends" .Values.backends
  "admin" (include "mqtt-lb.adminConfig" . | fromYaml)
  "limits" .Values.limits
  "shutdown" .Values.shutdown
  "log" .Values.log }}
{{- if .Values.workers }}
{{- $_ := set $config "workers" .Values.workers }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Non-empty when the cluster has the `sleep` lifecycle action (Kubernetes 1.30, PodLifecycleSleepAction on by
default). The image is distroless, with no shell and no `sleep` binary, so older clusters get no preStop at all
rather than an exec hook that fails. */}}
{{- define "mqtt-lb.hasSleepAction" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{/* Memory (MiB) a pod needs for limits.max_connections clients: sizing.memoryBaseMiB plus
sizing.memoryPerClientKiB per client, rounded up (docs/deployment.md, "Sizing"). */}}
{{- define "mqtt-lb.memoryNeededMiB" -}}
{{- $clients := int64 .Values.limits.max_connections }}
{{- $perClient := int64 .Values.sizing.memoryPerClientKiB }}
{{- add (int64 .Values.sizing.memoryBaseMiB) (div (add (mul $clients $perClient) 1023) 1024) }}
{{- end }}

{{/* Descriptors a pod needs: two per client (its socket and the one to its broker) plus sizing.openFilesReserve
(listeners, admin, health probes, the runtime's own). */}}
{{- define "mqtt-lb.openFilesNeeded" -}}
{{- add (mul 2 (int64 .Values.limits.max_connections)) (int64 .Values.sizing.openFilesReserve) }}
{{- end }}

{{/* A Kubernetes memory quantity (512Mi, 4Gi, 4G, 4294967296) in MiB, rounded down. */}}
{{- define "mqtt-lb.quantityMiB" -}}
{{- $q := toString . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $unit := trimPrefix $number $q }}
{{- $bytes := dict "" 1.0 "k" 1e3 "K" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 }}
{{- if or (not $number) (not (hasKey $bytes $unit)) }}
{{- fail (printf "resources.limits.memory: %q is not a memory quantity such as 4Gi or 4096Mi" $q) }}
{{- end }}
{{- floor (divf (mulf (float64 $number) (get $bytes $unit)) 1048576.0) | int64 }}
{{- end }}

{{/* The container's resources: memory request and limit computed from limits.max_connections unless set, and an
explicit memory limit, or the open-file limit of the nodes, refused when too small for it. */}}
{{- define "mqtt-lb.resources" -}}
{{- $r := deepCopy .Values.resources }}
{{- $limits := default dict $r.limits }}
{{- $requests := default dict $r.requests }}
{{- $clients := int64 .Values.limits.max_connections }}
{{- if eq $clients 0 }}
{{- if not $limits.memory }}
{{- fail "limits.max_connections is 0 (unlimited): set it, so the chart can size the pod's memory, or set resources.limits.memory" }}
{{- end }}
{{- else }}
{{- $needed := int64 (include "mqtt-lb.memoryNeededMiB" .) }}
{{- if $limits.memory }}
{{- $given := int64 (include "mqtt-lb.quantityMiB" $limits.memory) }}
{{- if lt $given $needed }}
{{- fail (printf "resources.limits.memory %v is too small for limits.max_connections %d: it needs %dMi (%d MiB + %d KiB per client, see sizing in values.yaml); lower max_connections or raise the limit" $limits.memory $clients $needed (int64 .Values.sizing.memoryBaseMiB) (int64 .Values.sizing.memoryPerClientKiB)) }}
{{- end }}
{{- else }}
{{- $_ := set $limits "memory" (printf "%dMi" $needed) }}
{{- end }}
{{- if not $requests.memory }}
{{- $_ := set $requests "memory" $limits.memory }}
{{- end }}
{{- $files := int64 (include "mqtt-lb.openFilesNeeded" .) }}
{{- if lt (int64 .Values.sizing.openFiles) $files }}
{{- fail (printf "limits.max_connections %d needs %d open files (2 per client + %d), more than sizing.openFiles %d, the limit your nodes give a container: lower max_connections or raise the nodes' limit and sizing.openFiles" $clients $files (int64 .Values.sizing.openFilesReserve) (int64 .Values.sizing.openFiles)) }}
{{- end }}
{{- end }}
{{- $_ := set $r "limits" $limits }}
{{- $_ := set $r "requests" $requests }}
{{- toYaml $r }}
{{- end }}

{{/* The admin section: read-only endpoints on the pod network, control on loopback unless exposeControl (which needs
the token). */}}
{{- define "mqtt-lb.adminConfig" -}}
{{- if and .Values.admin.exposeControl (not .Values.admin.tokenSecret) }}
{{- fail "admin.exposeControl: set admin.tokenSecret too, or anyone in the cluster could drain every broker" }}
{{- end }}
bind: {{ printf "0.0.0.0:%d" (int .Values.admin.port) | quote }}
control_bind: {{ printf "%s:%d" (ternary "0.0.0.0" "127.0.0.1" .Values.admin.exposeControl) (int .Values.admin.controlPort) | quote }}
{{- if .Values.admin.tokenSecret }}
token_file: /etc/mqtt-lb/admin-token/token
{{- end }}
{{- end }}
