{{/*
Names and labels, the usual Helm way: <release>-<chart> unless overridden,
truncated to the 63 characters a DNS label allows.
*/}}
{{- define "fedgrpc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedgrpc.fullname" -}}
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

{{- define "fedgrpc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedgrpc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedgrpc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end }}

{{- define "fedgrpc.labels" -}}
helm.sh/chart: {{ include "fedgrpc.chart" . }}
{{ include "fedgrpc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Where the pod keeps things; the ConfigMap's TOML and the volume mounts
must agree on these paths.
*/}}
{{- define "fedgrpc.paths" -}}
config: /etc/fedgrpc/config
state: /var/lib/fedgrpc
checkpoints: /var/lib/fedgrpc/checkpoints
scratch: /tmp
spool: /tmp/fedgrpc-spool
identity: /etc/fedgrpc/identity
clients: /etc/fedgrpc/clients
admin: /etc/fedgrpc/admin
tls: /etc/fedgrpc/tls
clientCA: /etc/fedgrpc/client-ca
shardToken: /etc/fedgrpc/shard-token
shardCA: /etc/fedgrpc/shard-ca
shardClient: /etc/fedgrpc/shard-client
{{- end }}

{{/*
The [coordinator] keys the chart sets itself: they name the pod's ports,
mounts and Secrets, so a value in coordinator.config would contradict them.
*/}}
{{- define "fedgrpc.ownedKeys" -}}
listen metrics_listen http_listen checkpoint_dir spool_dir tls_cert tls_key tls_client_ca identity_key allowed_client_keys admin_token_file init_model open_enrollment seed_from_first_client ready_file shard shard_peers shard_token_file shard_tls_ca shard_tls_cert shard_tls_key
{{- end }}

{{/*
One TOML value from a values.yaml scalar. Helm reads every YAML number as
a float64, so whole numbers are written as integers (a float64 would print
1e+09 for max_samples_per_update); strings go through toJson, whose
escapes are TOML basic-string escapes too.
*/}}
{{- define "fedgrpc.tomlValue" -}}
{{- $value := .value }}
{{- if kindIs "string" $value }}
{{- $value | toJson }}
{{- else if kindIs "bool" $value }}
{{- $value }}
{{- else if kindIs "float64" $value }}
{{- if eq $value (floor $value) }}{{ int64 $value }}{{ else }}{{ $value }}{{ end }}
{{- else if or (kindIs "int64" $value) (kindIs "int" $value) }}
{{- $value }}
{{- else }}
{{- fail (printf "coordinator.config.%s: only strings, numbers and booleans go here (got %s); write tables in coordinator.extraToml" .key (kindOf $value)) }}
{{- end }}
{{- end }}

{{/*
Probes: the coordinator's own health signals (README "Running on Kubernetes").
*/}}
{{- define "fedgrpc.probeAction" -}}
{{- $root := .root }}
{{- if eq $root.Values.probes.type "grpc" }}
grpc:
  port: {{ $root.Values.ports.grpc }}
{{- else if eq $root.Values.probes.type "http" }}
httpGet:
  path: {{ .path }}
  port: http
{{- else }}
tcpSocket:
  port: grpc
{{- end }}
{{- end }}

{{/*
Every shard's address in shard order (--shard-peers): sharding.peers, or
each pod's stable name on the headless Service.
*/}}
{{- define "fedgrpc.shardPeers" -}}
{{- if .Values.sharding.peers }}
{{- join "," .Values.sharding.peers }}
{{- else }}
{{- $fullname := include "fedgrpc.fullname" . }}
{{- $peers := list }}
{{- range $index := until (int .Values.shards) }}
{{- $peers = append $peers (printf "%s-%d.%s-headless.%s.svc:%d" $fullname $index $fullname $.Release.Namespace (int $.Values.ports.grpc)) }}
{{- end }}
{{- join "," $peers }}
{{- end }}
{{- end }}
