{{/* Names: <release>-ward unless the release name already says ward. */}}
{{- define "ward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ward.fullname" -}}
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

{{- define "ward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ward.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end -}}

{{- define "ward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ward.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ward.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ward.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "ward.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{- define "ward.policyConfigMapName" -}}
{{- default (printf "%s-policy" (include "ward.fullname" .)) .Values.policy.existingConfigMap -}}
{{- end -}}

{{- define "ward.paymentsKeysSecretName" -}}
{{- default (printf "%s-payments-keys" (include "ward.fullname" .)) .Values.payments.keys.secretName -}}
{{- end -}}

{{- define "ward.paymentsDbSecretName" -}}
{{- default (printf "%s-payments-db" (include "ward.fullname" .)) .Values.payments.database.secretName -}}
{{- end -}}

{{/* The payments service's port inside the pod; the built-in payments policy points at it. */}}
{{- define "ward.paymentsPort" -}}8081{{- end -}}

{{/* The restricted Pod Security profile, per container. */}}
{{- define "ward.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Checks that fail the render with a message naming the value to set. */}}
{{- define "ward.validate" -}}
{{- if and (eq .Values.mode "edge") (not .Values.policy.existingConfigMap) (not .Values.policy.files) -}}
{{- fail "mode edge: set policy.files (or policy.existingConfigMap); the policy names the upstream" -}}
{{- end -}}
{{- if and (eq .Values.mode "sidecar") (not .Values.sidecar.app.image) -}}
{{- fail "mode sidecar: set sidecar.app.image, the container ward protects" -}}
{{- end -}}
{{- if and (eq .Values.mode "payments") (eq .Values.payments.database.type "sqlite") (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "payments.database.type sqlite keeps one file per pod: use replicaCount 1 without autoscaling, or postgres" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled: set tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.dnsNames) -}}
{{- fail "tls.certManager.enabled: set tls.certManager.dnsNames" -}}
{{- end -}}
{{- end -}}
