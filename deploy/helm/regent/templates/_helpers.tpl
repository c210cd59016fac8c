{{/*
Helpers. The templates keep to a small part of Helm's language (values, include, if/with/range, quote, toYaml,
nindent, default, printf, trunc, trimSuffix): tests/deploy_manifests.rs renders them with a renderer of that
part and checks the result.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "regent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name prefix: fullnameOverride, else the release name (plus the chart name unless it contains it). */}}
{{- define "regent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "regent.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "regent.labels" -}}
app.kubernetes.io/name: {{ include "regent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of the nodes. */}}
{{- define "regent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{/* The service account's name. */}}
{{- define "regent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "regent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding cluster-cookie and db-password. */}}
{{- define "regent.secretName" -}}
{{- default (include "regent.fullname" .) .Values.cluster.existingSecret -}}
{{- end -}}

{{/* The image, repository:tag (the chart's appVersion when image.tag is empty). */}}
{{- define "regent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The write handler's host: writeSide.host, else the example handler's service. */}}
{{- define "regent.writeSideHost" -}}
{{- default (printf "%s-example-handler" (include "regent.fullname" .)) .Values.writeSide.host -}}
{{- end -}}
