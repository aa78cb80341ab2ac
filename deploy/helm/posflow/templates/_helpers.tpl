{{/* Names and labels. */}}
{{- define "posflow.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "posflow.fullname" -}}
{{- $name := include "posflow.name" . -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "posflow.chartLabels" -}}
app.kubernetes.io/name: {{ include "posflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The user's labels from a list of maps, later ones winning, never one of the chart's own keys
(selectors depend on those); a leading newline when there are any. */}}
{{- define "posflow.userLabels" -}}
{{- $all := dict -}}
{{- range . }}{{ $all = mergeOverwrite $all (deepCopy (. | default dict)) }}{{ end -}}
{{- with omit $all "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "helm.sh/chart" "app.kubernetes.io/component" }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Every resource's labels: the chart's and commonLabels. */}}
{{- define "posflow.labels" -}}
{{ include "posflow.chartLabels" . }}
{{- include "posflow.userLabels" (list .Values.commonLabels) }}
{{- end -}}

{{/* A pod's labels: (dict "root" $ "component" "bridge" "own" $s.podLabels): the chart's,
commonLabels, podLabels, the stage's own podLabels, its component. */}}
{{- define "posflow.podLabels" -}}
{{ include "posflow.chartLabels" .root }}
{{- include "posflow.userLabels" (list .root.Values.commonLabels .root.Values.podLabels .own) }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* metadata.annotations, or nothing: commonAnnotations and a resource's own, its own winning
(dict "root" $ "own" (dict …)). Callers: `with include … | nindent`, so no blank line is left. */}}
{{- define "posflow.annotations" -}}
{{- with mergeOverwrite (dict) (deepCopy .root.Values.commonAnnotations) (.own | default dict) -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* Selector labels of one stage: (dict "root" $ "stage" "bridge") */}}
{{- define "posflow.selector" -}}
app.kubernetes.io/name: {{ include "posflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .stage }}
{{- end -}}

{{/* An image reference with global.imageRegistry in place of its registry (the first path part
when it has a dot or a port, or is localhost, as Docker reads it): (dict "root" $ "ref" "busybox:1.36") */}}
{{- define "posflow.mirrored" -}}
{{- $ref := .ref -}}
{{- with .root.Values.global.imageRegistry -}}
{{- $parts := splitList "/" $ref -}}
{{- $head := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $head) (contains ":" $head) (eq $head "localhost")) -}}
{{- $ref = join "/" (rest $parts) -}}
{{- end -}}
{{- $ref = printf "%s/%s" (trimSuffix "/" .) $ref -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "posflow.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- with .Values.image.digest -}}
{{- $ref = printf "%s@%s" $.Values.image.repository . -}}
{{- end -}}
{{- include "posflow.mirrored" (dict "root" . "ref" $ref) -}}
{{- end -}}

{{- define "posflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "posflow.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{/*
What each stage is: its binary (in the image: deploy/docker/Dockerfile), and for the Kafka
consumers the consumer group and main input topic that KEDA watches for lag.
*/}}
{{- define "posflow.stageInfo" -}}
bridge: {binary: posflow-bridge, group: "", topic: "", kafkaConsumer: false}
validator: {binary: posflow-validator, group: posflow-validator, topic: pos.transactions.raw, kafkaConsumer: true}
storage: {binary: posflow-storage, group: posflow-storage, topic: pos.transactions.validated, kafkaConsumer: true}
fraud: {binary: posflow-fraud, group: posflow-fraud, topic: pos.transactions.validated, kafkaConsumer: true}
notifier: {binary: posflow-notifier, group: posflow-notifier, topic: pos.transactions.validated, kafkaConsumer: true}
api: {binary: posflow-api, group: "", topic: "", kafkaConsumer: false}
lake: {binary: posflow-lake, group: posflow-lake, topic: pos.transactions.validated, kafkaConsumer: true}
{{- end -}}

{{/* "true" when a stage scales with KEDA and Kafka needs credentials or a CA to be read: the
chart then renders a TriggerAuthentication for the ScaledObjects. */}}
{{- define "posflow.kedaAuth" -}}
{{- $info := fromYaml (include "posflow.stageInfo" .) -}}
{{- $keda := false -}}
{{- range $stage, $s := .Values.stages }}{{ if and $s.enabled $s.keda.enabled (get $info $stage).kafkaConsumer }}{{ $keda = true }}{{ end }}{{ end -}}
{{- if and $keda (or (hasPrefix "sasl" .Values.kafka.securityProtocol) .Values.kafka.tls.existingSecret) -}}
true
{{- end -}}
{{- end -}}

{{/* The KEDA Kafka scaler's names for the SASL mechanisms. */}}
{{- define "posflow.kedaSasl" -}}
{{- get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512") .Values.kafka.sasl.mechanism -}}
{{- end -}}

{{/* Kafka and registry settings, for every stage and the provisioning job. */}}
{{- define "posflow.kafkaEnv" -}}
- name: POSFLOW_KAFKA_BROKERS
  value: {{ required "kafka.brokers is required" .Values.kafka.brokers | quote }}
- name: POSFLOW_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
- name: POSFLOW_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: POSFLOW_SCHEMA_REGISTRY_URL
  value: {{ required "schemaRegistry.url is required" .Values.schemaRegistry.url | quote }}
{{- if hasPrefix "sasl" .Values.kafka.securityProtocol }}
- name: POSFLOW_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: POSFLOW_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required with a sasl_* protocol" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: POSFLOW_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: POSFLOW_KAFKA_SSL_CA
  value: /etc/posflow/kafka-tls/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- with .Values.schemaRegistry.tls }}{{ if .existingSecret }}
- name: POSFLOW_SCHEMA_REGISTRY_CA
  value: /etc/posflow/registry-tls/{{ .caKey }}
{{- end }}{{ end }}
{{- with .Values.schemaRegistry.auth }}{{ if .existingSecret }}
{{- if .tokenKey }}
- name: POSFLOW_SCHEMA_REGISTRY_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret }}, key: {{ .tokenKey }}}
{{- else }}
- name: POSFLOW_SCHEMA_REGISTRY_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret }}, key: {{ .usernameKey }}}
- name: POSFLOW_SCHEMA_REGISTRY_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret }}, key: {{ .passwordKey }}}
{{- end }}
{{- end }}{{ end }}
{{- end -}}

{{/* The schema owner's URL: migrations only. */}}
{{- define "posflow.databaseEnv" -}}
{{ include "posflow.databaseUrl" (dict "root" . "key" .Values.database.urlKey) }}
{{- end -}}
{{/* A stage's own least-privilege login (docs/storage.md). */}}
{{- define "posflow.databaseUrl" -}}
- name: POSFLOW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required" .root.Values.database.existingSecret }}
      key: {{ .key }}
{{- end -}}

{{/* The pod security settings every posflow pod runs with. */}}
{{- define "posflow.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* One stage: (dict "root" $ "stage" "validator" "s" $.Values.stages.validator) */}}
{{- define "posflow.statefulset" -}}
{{- $root := .root -}}
{{- $s := .s -}}
{{- $info := get (fromYaml (include "posflow.stageInfo" $root)) .stage -}}
{{- $name := printf "%s-%s" (include "posflow.fullname" $root) .stage -}}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  labels:
    {{- include "posflow.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .stage }}
  {{- with include "posflow.annotations" (dict "root" $root) }}{{ . | nindent 2 }}{{ end }}
spec:
  serviceName: {{ $name }}
  podManagementPolicy: Parallel
  {{- if not (or $s.autoscaling.enabled (and $s.keda.enabled $info.kafkaConsumer)) }}
  replicas: {{ $s.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "posflow.selector" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "posflow.podLabels" (dict "root" $root "component" .stage "own" $s.podLabels) | nindent 8 }}
      annotations:
        checksum/rules: {{ $root.Values.rules | toYaml | sha256sum }}
        {{- with $s.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "posflow.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $s.priorityClassName | default $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- include "posflow.podSecurity" $root | nindent 6 }}
      # Longer than the drain: in-flight work finishes before the kubelet's SIGKILL.
      terminationGracePeriodSeconds: {{ add $s.drainTimeoutSeconds 15 }}
      containers:
        - name: {{ .stage }}
          image: {{ include "posflow.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ $info.binary | quote }}]
          {{- with $s.extraArgs }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          env:
            - name: POSFLOW_HTTP_ADDR
              value: "0.0.0.0:9464"
            - name: POSFLOW_DRAIN_TIMEOUT
              value: {{ $s.drainTimeoutSeconds | quote }}
            - name: POSFLOW_INSTANCE_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- with $root.Values.tracing.otlpEndpoint }}
            - name: POSFLOW_OTLP_ENDPOINT
              value: {{ . | quote }}
            - name: POSFLOW_TRACE_SAMPLE_RATIO
              value: {{ $root.Values.tracing.sampleRatio | quote }}
            {{- end }}
            {{- include "posflow.kafkaEnv" $root | nindent 12 }}
            {{- include (printf "posflow.env.%s" .stage) $root | nindent 12 }}
            {{- range $k, $v := $s.env }}
            - name: {{ $k }}
              value: {{ $v | quote }}
            {{- end }}
            {{- with $s.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if eq .stage "api" }}
          # Behind a Service (and the cluster's ingress): HTTPS, or plain when api.tls is unset and
          # the ingress terminates TLS.
          {{- end }}
          {{- $signing := and (eq .stage "notifier") $root.Values.webhooks.signingSecrets }}
          {{- if or $signing $s.extraEnvFrom }}
          envFrom:
            {{- if $signing }}
            - secretRef:
                name: {{ $root.Values.webhooks.signingSecrets }}
            {{- end }}
            {{- with $s.extraEnvFrom }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          ports:
            - name: http-metrics
              containerPort: 9464
            {{- if eq .stage "api" }}
            - name: api
              containerPort: 8443
            {{- end }}
          {{- $probes := mustMergeOverwrite (deepCopy $root.Values.probes) (deepCopy $s.probes) }}
          startupProbe:
            httpGet: {path: /healthz, port: http-metrics}
            {{- toYaml $probes.startup | nindent 12 }}
          livenessProbe:
            httpGet: {path: /healthz, port: http-metrics}
            {{- toYaml $probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet: {path: /readyz, port: http-metrics}
            {{- toYaml $probes.readiness | nindent 12 }}
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            {{- if $root.Values.kafka.tls.existingSecret }}
            - {name: kafka-tls, mountPath: /etc/posflow/kafka-tls, readOnly: true}
            {{- end }}
            {{- if $root.Values.schemaRegistry.tls.existingSecret }}
            - {name: registry-tls, mountPath: /etc/posflow/registry-tls, readOnly: true}
            {{- end }}
            {{- if and (eq .stage "bridge") $root.Values.mqtt.tls.enabled }}
            - {name: mqtt-tls, mountPath: /etc/posflow/mqtt-tls, readOnly: true}
            {{- end }}
            {{- if or (eq .stage "validator") (eq .stage "fraud") }}
            - {name: rules, mountPath: /etc/posflow/rules, readOnly: true}
            {{- end }}
            {{- if and (has .stage (list "storage" "notifier" "api")) $root.Values.database.tls.existingSecret }}
            - {name: database-tls, mountPath: /etc/posflow/database-tls, readOnly: true}
            {{- end }}
            {{- if and (eq .stage "api") $root.Values.api.tls.existingSecret }}
            - {name: api-tls, mountPath: /etc/posflow/api-tls, readOnly: true}
            {{- end }}
            {{- if eq .stage "lake" }}
            - {name: lake, mountPath: /lake}
            {{- end }}
            {{- if and (eq .stage "fraud") $root.Values.fraudStateStore.enabled }}
            - {name: fraud-state, mountPath: /var/lib/posflow/fraud-state}
            {{- end }}
            {{- with $s.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
        {{- with $s.extraContainers }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: 64Mi}
        {{- if $root.Values.kafka.tls.existingSecret }}
        - name: kafka-tls
          secret: {secretName: {{ $root.Values.kafka.tls.existingSecret }}}
        {{- end }}
        {{- if $root.Values.schemaRegistry.tls.existingSecret }}
        - name: registry-tls
          secret: {secretName: {{ $root.Values.schemaRegistry.tls.existingSecret }}}
        {{- end }}
        {{- if and (eq .stage "bridge") $root.Values.mqtt.tls.enabled }}
        - name: mqtt-tls
          secret: {secretName: {{ required "mqtt.tls.existingSecret is required with mqtt.tls.enabled" $root.Values.mqtt.tls.existingSecret }}}
        {{- end }}
        {{- if or (eq .stage "validator") (eq .stage "fraud") }}
        - name: rules
          configMap: {name: {{ include "posflow.fullname" $root }}-rules}
        {{- end }}
        {{- if and (has .stage (list "storage" "notifier" "api")) $root.Values.database.tls.existingSecret }}
        - name: database-tls
          secret: {secretName: {{ $root.Values.database.tls.existingSecret }}}
        {{- end }}
        {{- if and (eq .stage "api") $root.Values.api.tls.existingSecret }}
        - name: api-tls
          secret: {secretName: {{ $root.Values.api.tls.existingSecret }}}
        {{- end }}
        {{- if eq .stage "lake" }}
        - name: lake
          persistentVolumeClaim: {claimName: {{ $root.Values.lake.existingClaim | default (printf "%s-lake" (include "posflow.fullname" $root)) }}}
        {{- end }}
        {{- if and (eq .stage "fraud") $root.Values.fraudStateStore.enabled (not $root.Values.fraudStateStore.persistent) }}
        - name: fraud-state
          emptyDir: {sizeLimit: {{ $root.Values.fraudStateStore.sizeLimit }}}
        {{- end }}
        {{- with $s.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $s.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $root.Values.spreadPods }}
      # Soft spread (never blocks scheduling): replicas of a stage on different nodes and zones,
      # so one node or zone lost takes at most its share of each stage.
      topologySpreadConstraints:
        {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
        - maxSkew: 1
          topologyKey: {{ . }}
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "posflow.selector" $ | nindent 14 }}
        {{- end }}
      {{- end }}
      {{- with $s.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  {{- if and (eq .stage "fraud") $root.Values.fraudStateStore.enabled $root.Values.fraudStateStore.persistent }}
  volumeClaimTemplates:
    - metadata:
        name: fraud-state
      spec:
        accessModes: [ReadWriteOnce]
        resources:
          requests:
            storage: {{ $root.Values.fraudStateStore.size }}
        {{- with $root.Values.fraudStateStore.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
  {{- end }}
{{- end -}}

{{/* Per-stage environment. */}}
{{- define "posflow.env.lake" -}}
- name: POSFLOW_LAKE_ROOT
  value: /lake
- name: POSFLOW_LAKE_ROLL_ROWS
  value: {{ .Values.lake.rollRows | quote }}
- name: POSFLOW_LAKE_ROLL_SECONDS
  value: {{ .Values.lake.rollSeconds | quote }}
- name: POSFLOW_LAKE_ZSTD_LEVEL
  value: {{ .Values.lake.zstdLevel | quote }}
{{- end -}}

{{- define "posflow.env.bridge" -}}
- name: POSFLOW_BRIDGE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POSFLOW_CARD_TOKEN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "cardToken.existingSecret is required" .Values.cardToken.existingSecret }}
      key: {{ .Values.cardToken.key }}
- name: POSFLOW_CARD_TOKEN_KEY_ID
  value: {{ .Values.cardToken.keyId | quote }}
- name: POSFLOW_CARD_TOKEN_PREVIOUS_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.cardToken.existingSecret }}
      key: {{ .Values.cardToken.previousKeysKey }}
      optional: true
- name: POSFLOW_MQTT_HOST
  value: {{ required "mqtt.host is required" .Values.mqtt.host | quote }}
- name: POSFLOW_MQTT_PORT
  value: {{ .Values.mqtt.port | quote }}
- name: POSFLOW_MQTT_SHARE_GROUP
  value: {{ .Values.mqtt.shareGroup | quote }}
- name: POSFLOW_MQTT_SESSION_EXPIRY
  value: {{ .Values.mqtt.sessionExpirySecs | quote }}
{{- if .Values.mqtt.tls.enabled }}
- name: POSFLOW_MQTT_TLS_CA
  value: /etc/posflow/mqtt-tls/ca.crt
{{- if not .Values.mqtt.passwordSecret }}
- name: POSFLOW_MQTT_TLS_CERT
  value: /etc/posflow/mqtt-tls/tls.crt
- name: POSFLOW_MQTT_TLS_KEY
  value: /etc/posflow/mqtt-tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.mqtt.passwordSecret }}
- name: POSFLOW_MQTT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mqtt.passwordSecret }}
      key: password
{{- end }}
{{- end -}}

{{- define "posflow.env.validator" -}}
{{- if .Values.rules.validator }}
- name: POSFLOW_VALIDATOR_RULES
  value: /etc/posflow/rules/validator-rules.toml
{{- end }}
{{- end -}}

{{- define "posflow.env.fraud" -}}
{{- if .Values.fraudStateStore.enabled }}
- name: POSFLOW_FRAUD_STATE_DIR
  value: /var/lib/posflow/fraud-state
{{- end }}
{{- if .Values.rules.fraud }}
- name: POSFLOW_FRAUD_RULES
  value: /etc/posflow/rules/fraud-rules.toml
{{- end }}
{{- end -}}

{{- define "posflow.env.storage" -}}
{{ include "posflow.databaseUrl" (dict "root" . "key" .Values.database.storageUrlKey) }}
{{- end -}}

{{- define "posflow.env.notifier" -}}
{{ include "posflow.databaseUrl" (dict "root" . "key" .Values.database.notifierUrlKey) }}
{{ include "posflow.webhookEgress" . }}
- name: POSFLOW_SECRETS_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ required "webhooks.secretsKeys.existingSecret is required" .Values.webhooks.secretsKeys.existingSecret }}
      key: {{ .Values.webhooks.secretsKeys.key }}
{{ include "posflow.smtp" . }}
{{- end -}}

{{/* The mail server: the notifier's email, and the portal's invitations (docs/portal.md). */}}
{{- define "posflow.smtp" -}}
- name: POSFLOW_SMTP_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "smtp.existingSecret is required" .Values.smtp.existingSecret }}
      key: {{ .Values.smtp.urlKey }}
- name: POSFLOW_SMTP_FROM
  value: {{ .Values.smtp.from | quote }}
{{- end -}}

{{/* Internal networks webhooks may reach: the same list on the notifier and the API (docs/api.md). */}}
{{- define "posflow.webhookEgress" -}}
- name: POSFLOW_WEBHOOK_ALLOW_NETWORKS
  value: {{ .Values.webhooks.allowNetworks | quote }}
{{- end -}}

{{- define "posflow.env.api" -}}
{{ include "posflow.databaseUrl" (dict "root" . "key" .Values.database.apiUrlKey) }}
{{ include "posflow.webhookEgress" . }}
- name: POSFLOW_API_LISTEN
  value: "0.0.0.0:8443"
- name: POSFLOW_API_RATE_PER_KEY
  value: {{ .Values.api.ratePerKey | quote }}
- name: POSFLOW_API_CURSOR_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "api.cursorKey.existingSecret is required" .Values.api.cursorKey.existingSecret }}
      key: {{ .Values.api.cursorKey.key }}
- name: POSFLOW_SECRETS_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ required "webhooks.secretsKeys.existingSecret is required" .Values.webhooks.secretsKeys.existingSecret }}
      key: {{ .Values.webhooks.secretsKeys.key }}
{{- if .Values.api.portalUrl }}
- name: POSFLOW_PORTAL_URL
  value: {{ .Values.api.portalUrl | quote }}
{{ include "posflow.smtp" . }}
{{- end }}
{{- if .Values.api.tls.existingSecret }}
- name: POSFLOW_API_TLS_CERT
  value: /etc/posflow/api-tls/tls.crt
- name: POSFLOW_API_TLS_KEY
  value: /etc/posflow/api-tls/tls.key
{{- end }}
{{- end -}}
