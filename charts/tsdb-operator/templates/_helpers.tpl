{{- define "tsdb-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tsdb-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tsdb-operator.labels" -}}
{{ include "tsdb-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tsdb-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tsdb-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tsdb-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tsdb-operator.metricsPort" -}}
{{- splitList ":" .Values.metrics.bindAddress | last -}}
{{- end -}}

{{/* Values that cannot work together fail the install with the value and the fix. */}}
{{- define "tsdb-operator.refuse" -}}
{{- if and .Values.features.audit (not .Values.audit.dsnSecretRef) (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "features.audit with SQLite (no audit.dsnSecretRef) keeps the trail on one replica's volume, but replicaCount is %d: set audit.dsnSecretRef to a PostgreSQL database, or replicaCount to 1" (int .Values.replicaCount)) -}}
{{- end -}}
{{- end -}}
