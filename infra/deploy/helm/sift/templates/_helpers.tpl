{{- define "sift.env" -}}
envFrom:
  - secretRef:
      name: {{ .Values.existingSecret }}
env:
{{- range $k, $v := .Values.settings }}
  - name: {{ $k }}
    value: {{ $v | quote }}
{{- end }}
{{- end -}}
