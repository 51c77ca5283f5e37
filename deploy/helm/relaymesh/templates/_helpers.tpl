{{- define "relaymesh.fullname" -}}
{{- printf "%s" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "relaymesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "relaymesh.labels" -}}
app.kubernetes.io/name: relaymesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Environment every role shares: shared state, secrets, settings. */}}
{{- define "relaymesh.env" -}}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
- name: REDIS_KEY_PREFIX
  value: {{ .Values.redis.keyPrefix | quote }}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{- define "relaymesh.envFrom" -}}
{{- if .Values.existingSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.existingSecret }}
      optional: true
{{- end }}
{{- end -}}

{{/* gRPC URL of a service role, as the gateway reaches it. */}}
{{- define "relaymesh.url" -}}
http://{{ include "relaymesh.fullname" .root }}-{{ .role }}:{{ .root.Values.grpcPort }}
{{- end -}}
