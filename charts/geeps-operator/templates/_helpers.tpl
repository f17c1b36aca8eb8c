{{/*
Names and labels of every object, in one place.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "geeps-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<chart>", or just the release when it already holds the chart name, or
fullnameOverride; truncated to 63 characters (a DNS-1123 label).
*/}}
{{- define "geeps-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "geeps-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "geeps-operator.labels" -}}
helm.sh/chart: {{ include "geeps-operator.chart" . }}
{{ include "geeps-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: geeps
{{- end }}

{{/* Labels that select the operator pod; immutable in a Deployment, so kept minimal. */}}
{{- define "geeps-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "geeps-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "geeps-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "geeps-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "geeps-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The runtime image of jobs that name none: repository@digest, else repository:tag. */}}
{{- define "geeps-operator.runtimeImage" -}}
{{- if .Values.runtimeImage.digest }}
{{- printf "%s@%s" .Values.runtimeImage.repository .Values.runtimeImage.digest }}
{{- else }}
{{- printf "%s:%s" .Values.runtimeImage.repository (.Values.runtimeImage.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The watched namespaces, comma-separated: watchNamespace, then watchNamespaces. */}}
{{- define "geeps-operator.watchNamespaces" -}}
{{- $ns := list }}
{{- with .Values.operator.watchNamespace }}{{ $ns = append $ns . }}{{ end }}
{{- range .Values.operator.watchNamespaces }}{{ $ns = append $ns . }}{{ end }}
{{- uniq $ns | join "," }}
{{- end }}

{{/* True (non-empty) when the operator watches every namespace. */}}
{{- define "geeps-operator.clusterWide" -}}
{{- if not (include "geeps-operator.watchNamespaces" .) }}true{{ end }}
{{- end }}

{{/*
Name of the cluster-scoped objects: the release's full name and its namespace, so two
releases of the same name in different namespaces do not overwrite each other's.
*/}}
{{- define "geeps-operator.clusterName" -}}
{{- printf "%s-%s" (include "geeps-operator.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Namespace of the dashboard ConfigMap. */}}
{{- define "geeps-operator.dashboardNamespace" -}}
{{- default .Release.Namespace .Values.dashboard.namespace }}
{{- end }}

{{/*
The rights the operator uses, and nothing more: geeps_operator.rbac.JOB_RBAC_RULES (namespaced,
granted in each watched namespace), CLUSTER_RULES (cluster-scoped, always) and
NAMESPACE_RULES (cluster-scoped, only when watching one namespace). A test compares the
rendered rules with those lists, which the operator's end-to-end test checks against the
requests it really makes.
*/}}
{{- define "geeps-operator.rules" -}}
# kopf lists and watches jobs; older versions' finalizer is patched off; the TTL deletes them.
- apiGroups: [geeps.dev]
  resources: [geepsjobs]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [geeps.dev]
  resources: [geepsjobs/status]
  verbs: [patch]
# Server and worker pods: listed by label each reconcile, watched, created, deleted.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
# The headless Service that gives server pods stable names.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create]
# The job's CurveZMQ keys, created once; the operator never reads or lists a Secret.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
# The job's NetworkPolicy: the parameter-server port only from the job's own pods.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create]
# The job's PodDisruptionBudget: a drain takes one shard-serving pod at a time.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# A PodMonitor per job where the Prometheus Operator is installed.
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [create]
{{- end }}

{{- define "geeps-operator.clusterRules" -}}
# kopf watches CRDs to learn when GeePSJob is served: cluster-scoped, so never in a Role.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{- define "geeps-operator.namespaceRules" -}}
# Watching named namespaces, kopf lists and watches namespaces to find the ones it serves.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{- define "geeps-operator.leaseRules" -}}
# The replicas' leader election: one Lease, read, created once, renewed by patches.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, patch]
{{- end }}
