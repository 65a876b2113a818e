{{- define "sift.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "sift.labels" -}}
app.kubernetes.io/name: sift
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sift.selector" -}}
app.kubernetes.io/name: sift
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sift.secretName" -}}
{{- if .Values.existingSecret -}}{{ .Values.existingSecret }}{{- else -}}{{ include "sift.fullname" . }}-secrets{{- end -}}
{{- end -}}

{{- define "sift.image" -}}
{{- if .Values.image.digest }}
image: "{{ .Values.image.repository }}@{{ .Values.image.digest }}"
{{- else }}
image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
{{- end }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- end -}}

{{/* each secret by name, not envFrom: a Secret without one of them stops the pod (CreateContainerConfigError)
     instead of Sift starting with its local development default */}}
{{- define "sift.env" -}}
env:
  - name: SIFT_ENV
    value: production
  - name: SIFT_DATA_DIR
    value: /data
  - name: SIFT_WORKER_HEALTH_PORT
    value: {{ .Values.workerHealthPort | quote }}
{{- range $k, $v := .Values.settings }}
  - name: {{ $k }}
    value: {{ $v | quote }}
{{- end }}
{{- range list "SIFT_ADMIN_KEY" "SIFT_S3_ACCESS_KEY" "SIFT_S3_SECRET_KEY" "SIFT_LABEL_STUDIO_TOKEN" "SIFT_WEBHOOK_SECRET" }}
  - name: {{ . }}
    valueFrom:
      secretKeyRef: {name: {{ include "sift.secretName" $ }}, key: {{ . }}, optional: false}
{{- end }}
{{- end -}}

{{- define "sift.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "sift.containerSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end -}}
