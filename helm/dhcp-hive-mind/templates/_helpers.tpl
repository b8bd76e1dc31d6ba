{{/*
Expand the name of the chart.
*/}}
{{- define "dhcp-hive-mind.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name, at most 57 characters so that "-redis" and "-http"
suffixes stay within the 63 of a DNS label.
*/}}
{{- define "dhcp-hive-mind.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "dhcp-hive-mind.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels. part-of is constant: the ServiceMonitor takes the `job` label from it, and the
alert rules and dashboard select job="dhcp-hive-mind".
*/}}
{{- define "dhcp-hive-mind.labels" -}}
helm.sh/chart: {{ include "dhcp-hive-mind.chart" . }}
{{ include "dhcp-hive-mind.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dhcp-hive-mind
{{- end }}

{{/*
Selector labels
*/}}
{{- define "dhcp-hive-mind.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dhcp-hive-mind.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the nodes (the hive's pods), apart from the in-chart Redis.
*/}}
{{- define "dhcp-hive-mind.nodeSelectorLabels" -}}
{{ include "dhcp-hive-mind.selectorLabels" . }}
app.kubernetes.io/component: node
{{- end }}

{{/*
Selector labels of the in-chart Redis.
*/}}
{{- define "dhcp-hive-mind.redisSelectorLabels" -}}
{{ include "dhcp-hive-mind.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "dhcp-hive-mind.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dhcp-hive-mind.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference.
*/}}
{{- define "dhcp-hive-mind.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Name of the Secret holding the Redis password (or URL).
*/}}
{{- define "dhcp-hive-mind.redisSecretName" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else }}
{{- printf "%s-redis" (include "dhcp-hive-mind.fullname" .) }}
{{- end }}
{{- end }}

{{/*
"true" when the nodes authenticate to Redis with a password from a Secret.
*/}}
{{- define "dhcp-hive-mind.redisHasPassword" -}}
{{- if or .Values.redis.password .Values.redis.existingSecret .Values.redis.internal.enabled }}true{{ end }}
{{- end }}

{{/*
"true" when the chart makes the Redis Secret itself.
*/}}
{{- define "dhcp-hive-mind.redisMakesSecret" -}}
{{- if and (not .Values.redis.existingSecret) (or .Values.redis.password .Values.redis.internal.enabled) }}true{{ end }}
{{- end }}

{{/*
The Redis URL the nodes get in HIVE_REDIS_URL. $(HIVE_REDIS_PASSWORD) is expanded by the
kubelet from the variable defined before it, so the password never lands in a ConfigMap.
*/}}
{{- define "dhcp-hive-mind.redisUrl" -}}
{{- $auth := "" }}
{{- if include "dhcp-hive-mind.redisHasPassword" . }}
{{- $auth = printf "%s:$(HIVE_REDIS_PASSWORD)@" .Values.redis.username }}
{{- else if .Values.redis.username }}
{{- $auth = printf "%s@" .Values.redis.username }}
{{- end }}
{{- if .Values.redis.internal.enabled }}
{{- printf "redis://%s%s-redis:6379" $auth (include "dhcp-hive-mind.fullname" .) }}
{{- else if .Values.redis.cluster.enabled }}
{{- $nodes := .Values.redis.cluster.nodes }}
{{- $rest := list }}
{{- range (rest $nodes) }}
{{- $rest = append $rest (printf "node=%s" .) }}
{{- end }}
{{- printf "redis-cluster://%s%s" $auth (first $nodes) }}{{ if $rest }}?{{ join "&" $rest }}{{ end }}
{{- else }}
{{- $parts := splitn "://" 2 .Values.redis.url }}
{{- printf "%s://%s%s" $parts._0 $auth $parts._1 }}
{{- end }}
{{- end }}

{{/*
At least this many nodes run at once.
*/}}
{{- define "dhcp-hive-mind.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
Checks across values that the schema cannot express; a failure stops the install with a message
naming the value.
*/}}
{{- define "dhcp-hive-mind.validate" -}}
{{- if not .Values.config.subnets }}
{{- fail "config.subnets: give at least one subnet to serve (subnet, dynStart, dynEnd, leaseTime)" }}
{{- end }}
{{- if and (not .Values.serverId) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "serverId: required with more than one node: an IPv4 address that routes to the hive (e.g. the UDP Service's load-balancer IP); every node presents it as option 54" }}
{{- end }}
{{- if and .Values.redis.internal.enabled .Values.redis.cluster.enabled }}
{{- fail "redis.internal.enabled and redis.cluster.enabled: choose one" }}
{{- end }}
{{- if and .Values.redis.cluster.enabled (not .Values.redis.cluster.nodes) }}
{{- fail "redis.cluster.nodes: give at least one seed node (host:port) with redis.cluster.enabled" }}
{{- end }}
{{- if contains "@" .Values.redis.url }}
{{- fail "redis.url: no credentials in the URL; use redis.username with redis.password, redis.existingSecret or redis.existingSecretUrlKey" }}
{{- end }}
{{- if and .Values.redis.existingSecretUrlKey (not .Values.redis.existingSecret) }}
{{- fail "redis.existingSecretUrlKey: also set redis.existingSecret, the Secret that holds the key" }}
{{- end }}
{{- end }}

{{/*
The node's config.json.
*/}}
{{- define "dhcp-hive-mind.config" -}}
{{- $c := deepCopy .Values.config }}
{{- $_ := set $c "interface" (.Values.config.interface | default "eth0") }}
{{- $_ = set $c "httpListen" (printf "0.0.0.0:%d" (int .Values.http.port)) }}
{{- toPrettyJson $c }}
{{- end }}
