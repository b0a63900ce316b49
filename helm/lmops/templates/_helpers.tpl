{{- define "lmops.labels" -}}
app.kubernetes.io/name: lmops-operator
app.kubernetes.io/part-of: lmops
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "lmops.selector" -}}
app.kubernetes.io/name: lmops-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
