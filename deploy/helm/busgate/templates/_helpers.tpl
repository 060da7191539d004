{{- define "busgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "busgate.fullname" -}}
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

{{- define "busgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "busgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "busgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "busgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "busgate.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "busgate.fullname" .)) -}}
{{- end -}}

{{- define "busgate.httpServiceName" -}}
{{- printf "%s-http" (include "busgate.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}

{{/* The values the chart refuses, with the reason. */}}
{{- define "busgate.validate" -}}
{{- $nats := gt (len .Values.nats.servers) 0 -}}
{{- if and (not $nats) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "busgate: more than one replica needs NATS (nats.servers): on the memory bus each replica is an island that cannot reach the others' clients" -}}
{{- end -}}
{{- if and (hasKey .Values.config "node_id") (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "busgate: config.node_id must be unique per node; leave it out (the default is the pod name) when running more than one replica" -}}
{{- end -}}
{{- range $k := list "listen" "bus" "admin" "tenants" "tls" -}}
{{- if hasKey $.Values.config $k -}}
{{- fail (printf "busgate: config.%s is written by the chart; use the chart's values (nats, tenants, secrets, tls, service)" $k) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.tenants -}}
{{- fail "busgate: tenants must list at least one tenant (docs/configuration.md)" -}}
{{- end -}}
{{- if not (has .Values.nats.auth (list "none" "userPassword" "token" "creds")) -}}
{{- fail (printf "busgate: nats.auth must be none, userPassword, token or creds, not %q" .Values.nats.auth) -}}
{{- end -}}
{{- range $i, $t := .Values.tenants -}}
{{- if not $t.name -}}
{{- fail (printf "busgate: tenants[%d].name is required" $i) -}}
{{- end -}}
{{- range $j, $tok := $t.tokens -}}
{{- if not (kindIs "string" $tok) -}}
{{- fail (printf "busgate: tenants[%d].tokens[%d] must be a plain token string: the chart stores it in the Secret (for a token from elsewhere use secrets.existingSecret)" $i $j) -}}
{{- end -}}
{{- end -}}
{{- if and $t.tokens $.Values.secrets.existingSecret -}}
{{- fail (printf "busgate: tenants[%d].tokens would be ignored with secrets.existingSecret: put them in that Secret under tenant-%s-tokens" $i $t.name) -}}
{{- end -}}
{{- end -}}
{{- $t := .Values.config.timeouts | default dict -}}
{{- if gt (int ($t.goaway_delay_ms | default 5000)) (int ($t.drain_ms | default 10000)) -}}
{{- fail "busgate: config.timeouts.goaway_delay_ms must not be above config.timeouts.drain_ms (the gateway refuses it)" -}}
{{- end -}}
{{- if and .Values.nats.servers (not .Values.secrets.existingSecret) -}}
{{- $need := dict "userPassword" "password" "token" "token" "creds" "creds" -}}
{{- $key := get $need .Values.nats.auth -}}
{{- if and $key (not (get .Values.nats $key)) -}}
{{- fail (printf "busgate: nats.auth %s needs nats.%s (or secrets.existingSecret with key nats-%s)" .Values.nats.auth $key $key) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.secrets.existingSecret (or .Values.nats.password .Values.nats.token .Values.nats.creds .Values.secrets.adminToken) -}}
{{- fail "busgate: nats.password/token/creds and secrets.adminToken would be ignored with secrets.existingSecret: put them in that Secret" -}}
{{- end -}}
{{- end -}}

{{/* drain_ms as configured (the gateway's default is 10000). */}}
{{- define "busgate.drainMs" -}}
{{- $t := .Values.config.timeouts | default dict -}}
{{- $t.drain_ms | default 10000 | int -}}
{{- end -}}

{{/* The gateway configuration file: no secret in it, only {file: ...} references to the Secret. */}}
{{- define "busgate.config" -}}
{{- $mp := .Values.secrets.mountPath -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $listen := dict "tcp" "0.0.0.0:7422" "http" "0.0.0.0:7480" -}}
{{- if .Values.tls.secretName -}}
{{- $_ := set $listen "tls" (printf "0.0.0.0:%d" (int .Values.tls.tcpPort)) -}}
{{- $_ := set $listen "https" (printf "0.0.0.0:%d" (int .Values.tls.httpsPort)) -}}
{{- $tls := dict "cert_file" "/etc/busgate/tls/tls.crt" "key_file" "/etc/busgate/tls/tls.key" -}}
{{- if .Values.tls.clientCaKey -}}
{{- $_ := set $tls "client_ca_file" (printf "/etc/busgate/tls/%s" .Values.tls.clientCaKey) -}}
{{- end -}}
{{- $_ := set $cfg "tls" $tls -}}
{{- end -}}
{{- $_ := set $cfg "listen" $listen -}}
{{- $_ := set $cfg "admin" (dict "token" (dict "file" (printf "%s/admin-token" $mp))) -}}
{{- if .Values.nats.servers -}}
{{- $bus := dict "kind" "nats" "servers" .Values.nats.servers -}}
{{- if .Values.nats.connectionName -}}{{- $_ := set $bus "name" .Values.nats.connectionName -}}{{- end -}}
{{- if eq .Values.nats.auth "userPassword" -}}
{{- $_ := set $bus "user" .Values.nats.user -}}
{{- $_ := set $bus "password" (dict "file" (printf "%s/nats-password" $mp)) -}}
{{- else if eq .Values.nats.auth "token" -}}
{{- $_ := set $bus "token" (dict "file" (printf "%s/nats-token" $mp)) -}}
{{- else if eq .Values.nats.auth "creds" -}}
{{- $_ := set $bus "creds_file" (printf "%s/nats-creds" $mp) -}}
{{- end -}}
{{- $_ := set $cfg "bus" $bus -}}
{{- else -}}
{{- $_ := set $cfg "bus" (dict "kind" "memory") -}}
{{- end -}}
{{- $tenants := list -}}
{{- range .Values.tenants -}}
{{- $t := omit . "tokens" -}}
{{- if or .tokens (not .tokens_sha256) -}}
{{- $_ := set $t "tokens" (list (dict "file" (printf "%s/tenant-%s-tokens" $mp .name))) -}}
{{- end -}}
{{- $tenants = append $tenants $t -}}
{{- end -}}
{{- $_ := set $cfg "tenants" $tenants -}}
{{- toYaml $cfg -}}
{{- end -}}
