{{/*
Names and labels. Every helper starts with the chart name (kueue's charts/kueue/templates/_helpers.tpl).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "eat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release-qualified name: fullnameOverride, else <release>-<name> (just <release> when the
release name already contains the chart name). Component objects append "-<component>", so
this is cut to 45 characters to leave room for the longest suffix ("-node-agent-metrics").
*/}}
{{- define "eat.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "eat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "eat.labels" -}}
helm.sh/chart: {{ include "eat.chart" . }}
{{ include "eat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eat
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable for the life of a release (Deployment selectors are immutable). */}}
{{- define "eat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per-component labels and selector labels: the common ones plus app.kubernetes.io/component. */}}
{{- define "eat.operator.labels" -}}
{{ include "eat.labels" . }}
app.kubernetes.io/component: operator
{{- end }}
{{- define "eat.operator.selectorLabels" -}}
{{ include "eat.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "eat.policy.labels" -}}
{{ include "eat.labels" . }}
app.kubernetes.io/component: policy
{{- end }}
{{- define "eat.policy.selectorLabels" -}}
{{ include "eat.selectorLabels" . }}
app.kubernetes.io/component: policy
{{- end }}

{{- define "eat.extender.labels" -}}
{{ include "eat.labels" . }}
app.kubernetes.io/component: extender
{{- end }}
{{- define "eat.extender.selectorLabels" -}}
{{ include "eat.selectorLabels" . }}
app.kubernetes.io/component: extender
{{- end }}

{{- define "eat.scheduler.labels" -}}
{{ include "eat.labels" . }}
app.kubernetes.io/component: scheduler
{{- end }}
{{- define "eat.scheduler.selectorLabels" -}}
{{ include "eat.selectorLabels" . }}
app.kubernetes.io/component: scheduler
{{- end }}

{{- define "eat.nodeAgent.labels" -}}
{{ include "eat.labels" . }}
app.kubernetes.io/component: node-agent
{{- end }}
{{- define "eat.nodeAgent.selectorLabels" -}}
{{ include "eat.selectorLabels" . }}
app.kubernetes.io/component: node-agent
{{- end }}

{{- define "eat.monitoring.labels" -}}
{{ include "eat.labels" . }}
app.kubernetes.io/component: monitoring
{{- end }}

{{/* Object names, one per component (Services are what other components dial). */}}
{{- define "eat.operator.fullname" -}}{{ include "eat.fullname" . }}-operator{{- end }}
{{- define "eat.policy.fullname" -}}{{ include "eat.fullname" . }}-policy{{- end }}
{{- define "eat.extender.fullname" -}}{{ include "eat.fullname" . }}-extender{{- end }}
{{- define "eat.scheduler.fullname" -}}{{ include "eat.fullname" . }}-scheduler{{- end }}
{{- define "eat.nodeAgent.fullname" -}}{{ include "eat.fullname" . }}-node-agent{{- end }}

{{/*
The ServiceAccount of a component: serviceAccount.name, else <fullname>-<component> when the
chart creates it, else "default". Call with (dict "ctx" $ "component" "operator" "values" .Values.operator).
*/}}
{{- define "eat.serviceAccountName" -}}
{{- $sa := .values.serviceAccount }}
{{- if $sa.create }}
{{- default (printf "%s-%s" (include "eat.fullname" .ctx) .component) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/*
An image reference: <registry>/<repository>:<tag>, or <repository>:<tag> when no registry is
set (the component's own registry, else global.imageRegistry). The tag defaults to `tag`
(the chart's appVersion for EAT images). A digest, when set, replaces the tag.
Call with (dict "ctx" $ "image" .Values.operator.image "tag" "default-tag").
*/}}
{{- define "eat.image" -}}
{{- $registry := default .ctx.Values.global.imageRegistry .image.registry }}
{{- $ref := .image.repository }}
{{- if $registry }}
{{- $ref = printf "%s/%s" (trimSuffix "/" $registry) $ref }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $ref .image.digest }}
{{- else }}
{{- printf "%s:%s" $ref (default .tag .image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
kube-scheduler's default tag: the cluster's version as vMAJOR.MINOR.PATCH (provider suffixes
such as "-eks-..." or "+k3s1" dropped: they are not image tags).
*/}}
{{- define "eat.scheduler.defaultTag" -}}
{{- $v := semver .Capabilities.KubeVersion.Version }}
{{- printf "v%d.%d.%d" $v.Major $v.Minor $v.Patch }}
{{- end }}

{{/* imagePullPolicy of an image: its own, else global.imagePullPolicy. */}}
{{- define "eat.imagePullPolicy" -}}
{{- default .ctx.Values.global.imagePullPolicy .image.pullPolicy }}
{{- end }}

{{/* imagePullSecrets of every pod of the chart. */}}
{{- define "eat.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Environment variables from a settings block, one to one: key fooBarS becomes <prefix>FOO_BAR_S.
Strings are passed as they are, every other value as JSON (numbers, booleans, lists and maps:
pydantic-settings parses them). Empty strings and nulls are left out, so the component's own
default applies. Call with (dict "prefix" "EAT_POLICY_" "config" .Values.policy.config).
*/}}
{{- define "eat.env" -}}
{{- $env := list }}
{{- range $key, $value := .config }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value ""))) }}
{{- $env = append $env (dict "name" (printf "%s%s" $.prefix ($key | snakecase | upper)) "value" (ternary $value (toJson $value) (kindIs "string" $value))) }}
{{- end }}
{{- end }}
{{- with $env }}{{ toYaml . }}{{ end }}
{{- end }}

{{/*
Security contexts: the chart-wide defaults (podSecurityContext, containerSecurityContext) with
the component's own values merged over them. Call with (dict "ctx" $ "values" .Values.operator).
*/}}
{{- define "eat.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.podSecurityContext) (.values.podSecurityContext | default dict)) }}
{{- end }}
{{- define "eat.containerSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.containerSecurityContext) (.values.containerSecurityContext | default dict)) }}
{{- end }}

{{/* The policy service's URL as the operator dials it: policy.url, else the chart's Service. */}}
{{- define "eat.policy.url" -}}
{{- if .Values.operator.policyUrl }}
{{- .Values.operator.policyUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "eat.policy.fullname" .) .Release.Namespace .Values.policy.service.port }}
{{- end }}
{{- end }}

{{/* The extender's URL as the eat-scheduler dials it. */}}
{{- define "eat.extender.url" -}}
{{- if .Values.scheduler.extenderUrl }}
{{- .Values.scheduler.extenderUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "eat.extender.fullname" .) .Release.Namespace .Values.extender.service.port }}
{{- end }}
{{- end }}

{{/* True when the Prometheus operator's API (ServiceMonitor, PrometheusRule) is served. */}}
{{- define "eat.monitoring.available" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/* Variables of every EAT container: the root filesystem is read-only, so libraries that
cache under $HOME (torch, matplotlib, httpx's certifi) write to the /tmp emptyDir instead. */}}
{{- define "eat.commonEnv" -}}
- name: HOME
  value: /tmp
{{- end }}

{{/* A writable /tmp for read-only root filesystems (Python, torch and uvicorn write there). */}}
{{- define "eat.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}
{{- define "eat.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
