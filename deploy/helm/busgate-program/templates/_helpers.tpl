{{- define "program.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Values.program.name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "program.selectorLabels" -}}
app.kubernetes.io/name: {{ .Values.program.name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "program.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "program.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: busgate
{{- end -}}

{{- define "program.secretName" -}}
{{- .Values.gateway.existingSecret | default (printf "%s-gateway" (include "program.fullname" .)) -}}
{{- end -}}

{{/* command object name: <fullname>-<command>, DNS-1123 */}}
{{/* Names longer than 52 (CronJob names) are cut and given a hash of the whole, so two long
commands never share an object name. */}}
{{- define "program.commandName" -}}
{{- $full := printf "%s-%s" (include "program.fullname" .root) .name | lower | replace "_" "-" -}}
{{- if le (len $full) 52 -}}
{{- $full -}}
{{- else -}}
{{- printf "%s-%s" ($full | trunc 45 | trimSuffix "-") ($full | sha256sum | trunc 6) -}}
{{- end -}}
{{- end -}}

{{- define "program.validate" -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (.Values.program.name | toString)) -}}
{{- fail (printf "busgate-program: program.name %q must be a DNS label (lowercase letters, digits, '-')" .Values.program.name) -}}
{{- end -}}
{{- if not .Values.program.module -}}
{{- fail "busgate-program: program.module is required (python -m <module>)" -}}
{{- end -}}
{{- if and .Values.gateway.existingSecret .Values.gateway.token -}}
{{- fail "busgate-program: gateway.token would be ignored with gateway.existingSecret: set one of them" -}}
{{- end -}}
{{- if and (not .Values.gateway.existingSecret) (not .Values.gateway.token) (gt (len .Values.commands) 0) -}}
{{- fail "busgate-program: set gateway.existingSecret (a Secret with the tenant token) or gateway.token" -}}
{{- end -}}
{{- range $name, $c := .Values.commands -}}
{{- if not (has $c.kind (list "consumer" "service" "triggered" "scheduled")) -}}
{{- fail (printf "busgate-program: commands.%s.kind must be consumer, service, triggered or scheduled, not %q" $name ($c.kind | toString)) -}}
{{- end -}}
{{- if and (eq $c.kind "scheduled") (not $c.schedule) -}}
{{- fail (printf "busgate-program: commands.%s: a scheduled command needs schedule (cron syntax)" $name) -}}
{{- end -}}
{{- $a := $c.autoscaling | default dict -}}
{{- if $a.enabled -}}
{{- if ne $c.kind "consumer" -}}
{{- fail (printf "busgate-program: commands.%s.autoscaling: only consumer commands scale on a backlog" $name) -}}
{{- end -}}
{{- range $k := list "tenant" "stream" "consumer" -}}
{{- if not (get $a $k) -}}
{{- fail (printf "busgate-program: commands.%s.autoscaling.%s is required (the durable consumer to scale on)" $name $k) -}}
{{- end -}}
{{- end -}}
{{- if not (has ($a.trigger | default "prometheus") (list "prometheus" "nats-jetstream")) -}}
{{- fail (printf "busgate-program: commands.%s.autoscaling.trigger must be prometheus or nats-jetstream" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The container of a command: .root, .name (command key), .c (its settings), .listen */}}
{{- define "program.container" -}}
{{- $v := .root.Values -}}
- name: {{ .name | lower | replace "_" "-" | trunc 63 | trimSuffix "-" }}
  image: "{{ $v.image.repository }}:{{ $v.image.tag | default .root.Chart.AppVersion }}"
  imagePullPolicy: {{ $v.image.pullPolicy }}
  command: [{{ $v.program.python | default "python" | quote }}]
  args:
    - "-m"
    - {{ $v.program.module | quote }}
    - {{ .c.command | default .name | quote }}
    {{- if .listen }}
    - "--listen"
    {{- end }}
    - "--drain-timeout"
    - {{ $v.drainTimeoutSeconds | quote }}
    {{- range .c.args }}
    - {{ . | quote }}
    {{- end }}
  env:
    - {name: BUSGATE_URL, value: {{ $v.gateway.url | quote }}}
    - name: BUSGATE_TOKEN
      valueFrom: {secretKeyRef: {name: {{ include "program.secretName" .root }}, key: {{ $v.gateway.tokenKey }}}}
    - {name: BUSGATE_PROGRAM_HTTP, value: "0.0.0.0:{{ $v.metricsPort }}"}
    - {name: BUSGATE_LOG_LEVEL, value: {{ $v.logLevel | quote }}}
    - {name: PYTHONUNBUFFERED, value: "1"}
    {{- with $v.env }}{{ toYaml . | nindent 4 }}{{ end }}
    {{- with .c.env }}{{ toYaml . | nindent 4 }}{{ end }}
  ports:
    - {name: metrics, containerPort: {{ $v.metricsPort }}, protocol: TCP}
  securityContext: {{- toYaml $v.securityContext | nindent 4 }}
  resources: {{- toYaml (.c.resources | default $v.resources) | nindent 4 }}
  volumeMounts:
    - {name: tmp, mountPath: /tmp}
    {{- with $v.extraVolumeMounts }}{{ toYaml . | nindent 4 }}{{ end }}
    {{- with .c.volumeMounts }}{{ toYaml . | nindent 4 }}{{ end }}
{{- end -}}

{{/* The pod's volumes: .root, .c */}}
{{- define "program.volumes" -}}
- name: tmp
  emptyDir: {sizeLimit: 256Mi}
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- with .c.volumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
