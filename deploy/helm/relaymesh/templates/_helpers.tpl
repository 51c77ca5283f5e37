{{/*
Names. Kubernetes names are at most 63 characters; every name here is the
release's full name, cut so the component suffix always fits, plus the suffix.
*/}}
{{- define "relaymesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "relaymesh.fullname" -}}
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

{{/* "<fullname>-<component>", at most `max` (default 63) characters, the suffix kept whole. */}}
{{- define "relaymesh.componentName" -}}
{{- $max := default 63 .max -}}
{{- $keep := sub (sub $max (len .component)) 1 | int -}}
{{- printf "%s-%s" (include "relaymesh.fullname" .root | trunc $keep | trimSuffix "-") .component -}}
{{- end -}}

{{/* The media relay's workload name: a StatefulSet's pod names add "-N" and
its revision label a hash, so it stays within 52 characters. */}}
{{- define "relaymesh.relayName" -}}
{{- include "relaymesh.componentName" (dict "root" . "component" "media-relay" "max" 52) -}}
{{- end -}}

{{- define "relaymesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "relaymesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relaymesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "relaymesh.labels" -}}
{{ include "relaymesh.selectorLabels" . }}
app.kubernetes.io/part-of: relaymesh
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "relaymesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "relaymesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret every pod reads; fails the render when there is none. */}}
{{- define "relaymesh.secretName" -}}
{{- if .Values.secrets.create -}}
{{- include "relaymesh.componentName" (dict "root" . "component" "secrets") -}}
{{- else -}}
{{- required "relaymesh needs a Secret: set secrets.existingSecret to the name of a Secret holding REDIS_URL (or REDIS_CLUSTER_URLS), JWT_SECRET, NODE_SHARED_SECRET, NODE_AGENT_SHARED_SECRET and DATABASE_URL, or set secrets.create=true with secrets.values (see the chart README)" .Values.secrets.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The Secret keys each role reads: role -> list of [key, optional]. */}}
{{- define "relaymesh.secretKeys" -}}
{{- $redis := ternary "REDIS_CLUSTER_URLS" "REDIS_URL" (eq .Values.redis.mode "cluster") -}}
common: [[{{ $redis }}, false]]
auth: [[JWT_SECRET, false], [NODE_SHARED_SECRET, false], [NODE_AGENT_SHARED_SECRET, false]]
scheduler: [[DATABASE_URL, false], [AWS_ACCESS_KEY_ID, true], [AWS_SECRET_ACCESS_KEY, true]]
{{- end -}}

{{/* env entries for a role's secret keys, each its own secretKeyRef, and
the gRPC TLS files. */}}
{{- define "relaymesh.secretEnv" -}}
{{- include "relaymesh.tlsEnv" .root }}
{{- $keys := include "relaymesh.secretKeys" .root | fromYaml -}}
{{- $name := include "relaymesh.secretName" .root -}}
{{- range $entry := concat (get $keys "common") (default list (get $keys .role)) }}
- name: {{ index $entry 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ index $entry 0 }}
      {{- if index $entry 1 }}
      optional: true
      {{- end }}
{{- end }}
{{- end -}}

{{/* What every pod of a role shares: the ConfigMap, checksums that roll the
pods when it (or a chart-made Secret) changes. */}}
{{- define "relaymesh.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if .Values.secrets.create }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end -}}

{{- define "relaymesh.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "relaymesh.componentName" (dict "root" . "component" "config") }}
{{- end -}}

{{/* Pod-level settings every role shares. */}}
{{- define "relaymesh.podCommon" -}}
serviceAccountName: {{ include "relaymesh.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* nodeSelector, tolerations, affinity and topology spread of a role. */}}
{{- define "relaymesh.placement" -}}
{{- with .cfg.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .cfg.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .cfg.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .cfg.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .cfg.topologySpreadConstraints | nindent 2 }}
{{- else if .root.Values.defaultTopologySpread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "relaymesh.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "relaymesh.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Writable scratch space: the root filesystem is read-only. */}}
{{- define "relaymesh.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- include "relaymesh.tlsVolumeMount" . }}
{{- end -}}
{{- define "relaymesh.tmpVolume" -}}
- name: tmp
  emptyDir: { sizeLimit: 64Mi }
{{- include "relaymesh.tlsVolume" . }}
{{- end -}}

{{/* Extra env of a role, from its `env` map. */}}
{{- define "relaymesh.roleEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* gRPC URL scheme of the mesh. */}}
{{- define "relaymesh.grpcScheme" -}}
{{- ternary "https" "http" .Values.grpcTls.enabled -}}
{{- end -}}

{{/* gRPC URL of a service role as its callers reach it. */}}
{{- define "relaymesh.url" -}}
{{- $scheme := include "relaymesh.grpcScheme" .root -}}
{{- if eq .role "media-relay" -}}
{{ $scheme }}://{{ include "relaymesh.relayName" .root }}:{{ .root.Values.grpcPort }}
{{- else -}}
{{ $scheme }}://{{ include "relaymesh.componentName" (dict "root" .root "component" .role) }}:{{ .root.Values.grpcPort }}
{{- end -}}
{{- end -}}

{{/* TLS env, mount and volume of every role (grpcTls.enabled). */}}
{{- define "relaymesh.tlsEnv" -}}
{{- if .Values.grpcTls.enabled }}
- name: GRPC_TLS_CERT
  value: /etc/relaymesh/grpc-tls/tls.crt
- name: GRPC_TLS_KEY
  value: /etc/relaymesh/grpc-tls/tls.key
- name: GRPC_TLS_CA
  value: /etc/relaymesh/grpc-tls/ca.crt
- name: GRPC_TLS_SERVER_NAME
  value: {{ .Values.grpcTls.serverName | quote }}
{{- end }}
{{- end -}}
{{- define "relaymesh.tlsVolumeMount" -}}
{{- if .Values.grpcTls.enabled }}
- name: grpc-tls
  mountPath: /etc/relaymesh/grpc-tls
  readOnly: true
{{- end }}
{{- end -}}
{{- define "relaymesh.tlsVolume" -}}
{{- if .Values.grpcTls.enabled }}
- name: grpc-tls
  secret:
    secretName: {{ required "grpcTls.enabled needs grpcTls.secretName" .Values.grpcTls.secretName }}
{{- end }}
{{- end -}}

{{/* The probe of a gRPC role: gRPC health, or TCP when the server speaks
TLS (the kubelet's gRPC probe is plaintext). */}}
{{- define "relaymesh.grpcProbe" -}}
{{- if .Values.grpcTls.enabled -}}
tcpSocket: { port: grpc }
{{- else -}}
grpc: { port: {{ .Values.grpcPort }} }
{{- end -}}
{{- end -}}

{{/* HPA of a workload. */}}
{{- define "relaymesh.hpa" -}}
{{- if .cfg.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ .name }}
  labels:
    {{- include "relaymesh.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ default "Deployment" .kind }}
    name: {{ .name }}
  minReplicas: {{ .cfg.autoscaling.minReplicas }}
  maxReplicas: {{ .cfg.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .cfg.autoscaling.targetCPUUtilizationPercentage }}
  {{- with .cfg.autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* PDB of a workload. */}}
{{- define "relaymesh.pdb" -}}
{{- if .cfg.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  labels:
    {{- include "relaymesh.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .cfg.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "relaymesh.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* ServiceMonitor of a role's Service. */}}
{{- define "relaymesh.serviceMonitor" -}}
{{- if .root.Values.metrics.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ .name }}
  labels:
    {{- include "relaymesh.labels" . | nindent 4 }}
    {{- with .root.Values.metrics.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "relaymesh.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: {{ .port }}
      path: /metrics
      interval: {{ .root.Values.metrics.serviceMonitor.interval }}
{{- end }}
{{- end -}}

{{/* The typed settings each role reads (jwt, copilot, gateway heartbeat and
sessions), as env entries: auth gets the JWT ones, signaling the callback and
rate-limit ones, the gateway its own. Optional ones only when set. */}}
{{- define "relaymesh.settingsEnv" -}}
{{- $v := .root.Values -}}
{{- if eq .role "auth" }}
{{- with $v.jwt.issuer }}
- name: JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with $v.jwt.audience }}
- name: JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- with $v.jwt.jwks.url }}
- name: JWKS_URL
  value: {{ . | quote }}
{{- end }}
- name: JWKS_REFRESH_SECS
  value: {{ $v.jwt.jwks.refreshSecs | quote }}
- name: JWKS_REFETCH_COOLDOWN_MS
  value: {{ $v.jwt.jwks.refetchCooldownMs | quote }}
{{- if $v.jwt.jwks.configMap }}
- name: JWKS_FILE
  value: {{ printf "/etc/relaymesh/jwks/%s" $v.jwt.jwks.configMapKey | quote }}
{{- end }}
{{- if $v.jwt.jwks.caConfigMap }}
- name: JWKS_CA_FILE
  value: {{ printf "/etc/relaymesh/jwks-ca/%s" $v.jwt.jwks.caConfigMapKey | quote }}
{{- end }}
{{- else if eq .role "signaling" }}
- name: CALLBACK_TIMEOUT_MS
  value: {{ $v.copilot.callbackTimeoutMs | quote }}
- name: RATE_LIMIT_REQUESTS
  value: {{ $v.copilot.rateLimit.requests | quote }}
- name: RATE_LIMIT_WINDOW_MS
  value: {{ $v.copilot.rateLimit.windowMs | quote }}
- name: SHARE_RATE_LIMIT
  value: {{ $v.copilot.rateLimit.perUser | quote }}
{{- else if eq .role "gateway" }}
{{- $g := $v.gateway }}
- name: SINGLE_SESSION_PER_USER
  value: {{ $g.singleSessionPerUser | quote }}
- name: HEARTBEAT_INTERVAL_MS
  value: {{ $g.heartbeat.intervalMs | quote }}
- name: PONG_TIMEOUT_MS
  value: {{ $g.heartbeat.pongTimeoutMs | quote }}
- name: HEARTBEAT_MAX_MISSED
  value: {{ $g.heartbeat.maxMissed | quote }}
- name: QUERY_TIMEOUT_MS
  value: {{ $v.copilot.queryTimeoutMs | quote }}
{{- with $v.copilot.queryServiceUrl }}
- name: QUERY_SERVICE_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The JWKS ConfigMaps of the auth role (jwt.jwks.configMap, caConfigMap). */}}
{{- define "relaymesh.jwksVolumeMount" -}}
{{- if eq .role "auth" }}
{{- with .root.Values.jwt.jwks }}
{{- if .configMap }}
- name: jwks
  mountPath: /etc/relaymesh/jwks
  readOnly: true
{{- end }}
{{- if .caConfigMap }}
- name: jwks-ca
  mountPath: /etc/relaymesh/jwks-ca
  readOnly: true
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
{{- define "relaymesh.jwksVolume" -}}
{{- if eq .role "auth" }}
{{- with .root.Values.jwt.jwks }}
{{- if .configMap }}
- name: jwks
  configMap:
    name: {{ .configMap }}
    items: [{ key: {{ .configMapKey | quote }}, path: {{ .configMapKey | quote }} }]
{{- end }}
{{- if .caConfigMap }}
- name: jwks-ca
  configMap:
    name: {{ .caConfigMap }}
    items: [{ key: {{ .caConfigMapKey | quote }}, path: {{ .caConfigMapKey | quote }} }]
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
