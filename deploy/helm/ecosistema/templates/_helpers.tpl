{{/* The release-scoped name of the chart's objects. */}}
{{- define "ecosistema.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ecosistema.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ecosistema.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ecosistema.secretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-secrets" (include "ecosistema.fullname" .)) }}
{{- end -}}

{{/* Environment shared by every container: settings from the ConfigMap, keys from the Secret. */}}
{{- define "ecosistema.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "ecosistema.fullname" . }}-config
env:
  - name: ECOSISTEMA_MASTER_KEY
    valueFrom: {secretKeyRef: {name: {{ include "ecosistema.secretName" . }}, key: master-key}}
  - name: ECOSISTEMA_BLIND_INDEX_KEY
    valueFrom: {secretKeyRef: {name: {{ include "ecosistema.secretName" . }}, key: blind-index-key}}
  - name: ECOSISTEMA_GATEWAY_SECRET
    valueFrom: {secretKeyRef: {name: {{ include "ecosistema.secretName" . }}, key: gateway-secret}}
  - name: ECOSISTEMA_CATALOG_API_KEY
    valueFrom: {secretKeyRef: {name: {{ include "ecosistema.secretName" . }}, key: catalog-api-key, optional: true}}
  - name: ECOSISTEMA_IDENTITY_API_KEY
    valueFrom: {secretKeyRef: {name: {{ include "ecosistema.secretName" . }}, key: identity-api-key, optional: true}}
  - name: ECOSISTEMA_ORDERS_API_KEY
    valueFrom: {secretKeyRef: {name: {{ include "ecosistema.secretName" . }}, key: orders-api-key, optional: true}}
  - name: ECOSISTEMA_DATABASE_URL
    valueFrom: {secretKeyRef: {name: {{ include "ecosistema.secretName" . }}, key: database-url}}
{{- end -}}
