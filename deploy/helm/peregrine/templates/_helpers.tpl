{{- define "peregrine.labels" -}}
app.kubernetes.io/part-of: peregrine
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
