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
{{- /* a label map as a selector string: k=v,k2=v2 (sorted, as Helm ranges over maps) */ -}}
{{- define "lmops.selectorString" -}}
{{- $pairs := list }}{{- range $k, $v := . }}{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}{{- end }}
{{- join "," $pairs }}
{{- end -}}
{{- /* the uninstall hook's labels: lmops' own, but not the operator's name, so the hook never counts as one */ -}}
{{- define "lmops.hookLabels" -}}
app.kubernetes.io/name: lmops-release-finalizers
app.kubernetes.io/part-of: lmops
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- /* the image setting: tag (default appVersion) and the variant suffix, as lmops' ImageConfig.ref("cpu") */ -}}
{{- define "lmops.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- define "lmops.cpuImage" -}}
{{ .Values.image.repository }}:{{ include "lmops.tag" . }}-cpu
{{- end -}}
{{- /* the pod security every lmops pod runs with: the image's non-root UID/GID 1000 (lmops.security.context) */ -}}
{{- define "lmops.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- define "lmops.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}
