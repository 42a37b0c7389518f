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
{{- $_ := set $l "tls" $tls }}
{{- end }}
{{- $listeners = append $listeners $l }}
{{- end }}
{{- $config := dict
  "listeners" $listeners
  "backends" .Values.backends
  "admin" (dict "bind" (printf "0.0.0.0:%d" (int .Values.admin.port)))
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
