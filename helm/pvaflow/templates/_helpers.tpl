{{/* Names and labels. */}}
{{- define "pvaflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pvaflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .stage }}
pvaflow.io/stage: {{ .stage | quote }}
{{- end }}
{{- end -}}

{{- define "pvaflow.labels" -}}
{{ include "pvaflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "pvaflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
One option value as text, the way `pvaflow run` writes it: mappings as JSON, whole numbers
without an exponent (YAML numbers reach templates as float64).
*/}}
{{- define "pvaflow.argText" -}}
{{- if kindIs "map" . -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq (. | int64 | float64) .) -}}
{{- . | int64 -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
Command-line arguments from an options map (ops/pipeline.py's to_args): key -> --key,
true -> bare flag, null/false -> omitted, list -> repeated option. Input: dict with "options"
and "skip" (keys not passed as options). Output: a YAML list.
*/}}
{{- define "pvaflow.args" -}}
{{- $skip := .skip | default list -}}
{{- range $key, $value := .options }}
{{- if not (has $key $skip) }}
{{- $flag := printf "--%s" ($key | replace "_" "-") }}
{{- if kindIs "bool" $value }}
{{- if $value }}
- {{ $flag | quote }}
{{- end }}
{{- else if kindIs "slice" $value }}
{{- range $value }}
- {{ $flag | quote }}
- {{ include "pvaflow.argText" . | quote }}
{{- end }}
{{- else if not (kindIs "invalid" $value) }}
- {{ $flag | quote }}
- {{ include "pvaflow.argText" $value | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A component's options: its own map, plus the pipeline-wide keys (bootstrap_servers,
control_topic, status_topic) it does not set itself, as `pvaflow run` does.
Input: dict root, options, shared (list of shared keys this command accepts).
*/}}
{{- define "pvaflow.options" -}}
{{- $opts := deepCopy (.options | default dict) -}}
{{- range $key := .shared }}
{{- $v := index $.root.Values $key }}
{{- if and (not (hasKey $opts $key)) (not (kindIs "invalid" $v)) }}
{{- $_ := set $opts $key $v }}
{{- end }}
{{- end }}
{{- toYaml $opts -}}
{{- end -}}

{{/* Per-component Kubernetes settings: deploy.defaults overridden by deploy.<role>. */}}
{{- define "pvaflow.deploySettings" -}}
{{- $d := .root.Values.deploy -}}
{{- toYaml (mergeOverwrite (deepCopy $d.defaults) (deepCopy (.settings | default dict))) -}}
{{- end -}}

{{/* The Kafka environment: PVAFLOW_KAFKA_* settings and Secret files (pvaflow/kafka/settings.py). */}}
{{- define "pvaflow.kafkaEnv" -}}
{{- $k := .Values.kafka -}}
{{- $protocol := "" -}}
{{- if and $k.sasl.enabled $k.tls.enabled }}{{ $protocol = "SASL_SSL" }}
{{- else if $k.sasl.enabled }}{{ $protocol = "SASL_PLAINTEXT" }}
{{- else if $k.tls.enabled }}{{ $protocol = "SSL" }}{{ end -}}
{{- if $protocol }}
- name: PVAFLOW_KAFKA_SECURITY_PROTOCOL
  value: {{ $protocol | quote }}
{{- end }}
{{- if $k.sasl.enabled }}
- name: PVAFLOW_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: PVAFLOW_KAFKA_SASL_USERNAME_FILE
  value: {{ printf "/etc/pvaflow/kafka-sasl/%s" $k.sasl.usernameKey | quote }}
- name: PVAFLOW_KAFKA_SASL_PASSWORD_FILE
  value: {{ printf "/etc/pvaflow/kafka-sasl/%s" $k.sasl.passwordKey | quote }}
{{- end }}
{{- if $k.tls.enabled }}
- name: PVAFLOW_KAFKA_SSL_CA_LOCATION
  value: {{ printf "/etc/pvaflow/kafka-tls/%s" $k.tls.caKey | quote }}
{{- if and $k.tls.certKey $k.tls.keyKey }}
- name: PVAFLOW_KAFKA_SSL_CERTIFICATE_LOCATION
  value: {{ printf "/etc/pvaflow/kafka-tls/%s" $k.tls.certKey | quote }}
- name: PVAFLOW_KAFKA_SSL_KEY_LOCATION
  value: {{ printf "/etc/pvaflow/kafka-tls/%s" $k.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- range $key, $value := $k.config }}
- name: {{ printf "PVAFLOW_KAFKA_%s" ($key | upper | replace "." "_") }}
  value: {{ include "pvaflow.argText" $value | quote }}
{{- end }}
{{- end -}}

{{- define "pvaflow.kafkaVolumeMounts" -}}
{{- if .Values.kafka.sasl.enabled }}
- name: kafka-sasl
  mountPath: /etc/pvaflow/kafka-sasl
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  mountPath: /etc/pvaflow/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "pvaflow.kafkaVolumes" -}}
{{- if .Values.kafka.sasl.enabled }}
- name: kafka-sasl
  secret:
    secretName: {{ required "kafka.sasl.existingSecret is required when kafka.sasl.enabled" .Values.kafka.sasl.existingSecret }}
    items:
      - {key: {{ .Values.kafka.sasl.usernameKey }}, path: {{ .Values.kafka.sasl.usernameKey }}}
      - {key: {{ .Values.kafka.sasl.passwordKey }}, path: {{ .Values.kafka.sasl.passwordKey }}}
{{- end }}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  secret:
    secretName: {{ required "kafka.tls.existingSecret is required when kafka.tls.enabled" .Values.kafka.tls.existingSecret }}
{{- end }}
{{- end -}}

{{/*
A component's Deployment. Input dict:
  root, component (bridge|stage|collector|monitor|mirror), name (resource suffix), stage,
  command (list), args (list), deploy (settings map), replicas (int or nil when autoscaled),
  ports (list of {name, containerPort}), probe ({port, path} or nil), env (extra env list)
*/}}
{{- define "pvaflow.deployment" -}}
{{- $root := .root -}}
{{- $d := .deploy -}}
{{- $ctx := dict "root" $root "component" .component "stage" .stage -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ printf "%s-%s" (include "pvaflow.fullname" $root) .name | trunc 63 | trimSuffix "-" }}
  labels:
    {{- include "pvaflow.labels" $ctx | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  {{- if has .component (list "bridge" "collector" "monitor" "mirror") }}
  strategy:
    type: Recreate
  {{- end }}
  selector:
    matchLabels:
      {{- include "pvaflow.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "pvaflow.selectorLabels" $ctx | nindent 8 }}
        {{- with $d.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $d.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $d.hostNetwork }}
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      {{- end }}
      terminationGracePeriodSeconds: {{ $d.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $root.Values.deploy.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "pvaflow.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          {{- with .command }}
          command:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          args:
            {{- toYaml .args | nindent 12 }}
          workingDir: /tmp
          env:
            - name: HOME
              value: /tmp
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- with (include "pvaflow.kafkaEnv" $root | trim) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $d.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with .ports }}
          ports:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .probe }}
          {{- /* HTTP on the metrics (monitor: web) port only: a bare TCP connect wedges a pvapy
          PVA server. /healthz: the work loop comes round (--stall-after); /readyz: connected
          (PVA channel, partitions, Kafka). */}}
          startupProbe:
            httpGet: {path: /healthz, port: {{ .port }}}
            periodSeconds: 5
            failureThreshold: 60
          livenessProbe:
            httpGet: {path: /healthz, port: {{ .port }}}
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: /readyz, port: {{ .port }}}
            periodSeconds: 10
            timeoutSeconds: 5
          {{- end }}
          {{- with $d.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.deploy.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with (include "pvaflow.kafkaVolumeMounts" $root | trim) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $d.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.deploy.tmpSizeLimit }}
        {{- with (include "pvaflow.kafkaVolumes" $root | trim) }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $d.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $d.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $d.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $d.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* A metrics Service for a component. Input: root, component, stage, name, ports. */}}
{{- define "pvaflow.service" -}}
{{- $ctx := dict "root" .root "component" .component "stage" .stage -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s-%s" (include "pvaflow.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
  labels:
    {{- include "pvaflow.labels" $ctx | nindent 4 }}
    pvaflow.io/metrics: "true"
spec:
  type: ClusterIP
  selector:
    {{- include "pvaflow.selectorLabels" $ctx | nindent 4 }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .containerPort }}
      targetPort: {{ .name }}
      protocol: TCP
    {{- end }}
{{- end -}}
