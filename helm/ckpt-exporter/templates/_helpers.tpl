{{/*
Named templates of the ckpt-exporter chart.

The container templates ("ckpt-exporter.container", "ckpt-exporter.volumes",
"ckpt-exporter.podAnnotations", "ckpt-exporter.sidecarPodLabels") are a public interface: a chart
that depends on this one includes them with this chart's context, e.g.
  {{ include "ckpt-exporter.container" (index .Subcharts "ckpt-exporter") }}
so every template here reads only .Values, .Chart and .Release of the context it is given.
*/}}

{{/* Chart name. */}}
{{- define "ckpt-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<name>, or the release name when it already contains the name. */}}
{{- define "ckpt-exporter.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "ckpt-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Namespace of the namespaced resources. */}}
{{- define "ckpt-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "ckpt-exporter.labels" -}}
helm.sh/chart: {{ include "ckpt-exporter.chart" . }}
{{ include "ckpt-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: exporter
app.kubernetes.io/part-of: ckpt-exporter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels (Deployment/StatefulSet selector, Service selector, ServiceMonitor). */}}
{{- define "ckpt-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ckpt-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of the ServiceAccount to use. */}}
{{- define "ckpt-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ckpt-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: [registry/]repository(@digest|:tag), the tag defaulting to appVersion. */}}
{{- define "ckpt-exporter.image" -}}
{{- $repository := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .Values.image.registry) $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/* Where the config file and the API key file are, inside the container. */}}
{{- define "ckpt-exporter.configDir" -}}/etc/ckpt-exporter{{- end }}
{{- define "ckpt-exporter.configFile" -}}/etc/ckpt-exporter/config.yaml{{- end }}
{{- define "ckpt-exporter.apiKeyFile" -}}
{{- printf "%s/api-key" (trimSuffix "/" .Values.apiKey.mountPath) }}
{{- end }}

{{/* True (non-empty) when the chart mounts the API key Secret. */}}
{{- define "ckpt-exporter.mountsApiKey" -}}
{{- if and (not .Values.demo) .Values.apiKey.existingSecret }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the exporter signs in with Azure workload identity. */}}
{{- define "ckpt-exporter.workloadIdentity" -}}
{{- if and (not .Values.demo) .Values.azure.workloadIdentity.enabled }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the chart projects the workload-identity token itself (no webhook). */}}
{{- define "ckpt-exporter.projectsAzureToken" -}}
{{- if and (include "ckpt-exporter.workloadIdentity" .) (not .Values.azure.workloadIdentity.webhook) }}true{{ end }}
{{- end }}

{{/* Where the chart mounts the projected workload-identity token (the webhook's classic path). */}}
{{- define "ckpt-exporter.azureTokenDir" -}}/var/run/secrets/azure/tokens{{- end }}

{{/*
The annotations of the chart's ServiceAccount: serviceAccount.annotations, plus the client (and
tenant) id the workload-identity webhook reads.
*/}}
{{- define "ckpt-exporter.serviceAccountAnnotations" -}}
{{- $annotations := deepCopy (.Values.serviceAccount.annotations | default dict) }}
{{- if include "ckpt-exporter.workloadIdentity" . }}
{{- $wi := .Values.azure.workloadIdentity }}
{{- $_ := set $annotations "azure.workload.identity/client-id" $wi.clientId }}
{{- if $wi.tenantId }}
{{- $_ := set $annotations "azure.workload.identity/tenant-id" $wi.tenantId }}
{{- end }}
{{- end }}
{{- if $annotations }}
{{- toYaml $annotations }}
{{- end }}
{{- end }}

{{/* The pod label that asks the workload-identity webhook to inject the token and variables. */}}
{{- define "ckpt-exporter.workloadIdentityPodLabels" -}}
{{- if and (include "ckpt-exporter.workloadIdentity" .) .Values.azure.workloadIdentity.webhook -}}
azure.workload.identity/use: "true"
{{- end }}
{{- end }}

{{/*
Checks that fail the render with a message that says what to do. Included by the ConfigMap, which
every mode renders.
*/}}
{{- define "ckpt-exporter.validate" -}}
{{- $config := .Values.config | default dict }}
{{- if not (has .Values.mode (list "standalone" "sidecar")) }}
{{- fail (printf "ckpt-exporter: mode must be \"standalone\" or \"sidecar\", got %q" (toString .Values.mode)) }}
{{- end }}
{{- $wi := .Values.azure.workloadIdentity }}
{{- $keyless := or $wi.enabled (eq (toString $config.azure_auth) "entra") }}
{{- if and (not .Values.demo) (not .Values.apiKey.existingSecret) (not $config.api_key_file) (not $keyless) }}
{{- fail "ckpt-exporter: no OpenAI API key. Create a Secret holding the key (kubectl create secret generic openai-api-key --from-file=api-key=./key.txt) and set apiKey.existingSecret=openai-api-key (and apiKey.secretKey if its key is not \"api-key\"); or set demo=true to run the demo without a key; or mount a key file yourself (extraVolumes/extraVolumeMounts) and set config.api_key_file to its path; or, for Azure OpenAI / Foundry without a key, set azure.workloadIdentity.enabled=true (or config.azure_auth=entra)." }}
{{- end }}
{{- if and $wi.enabled (not .Values.demo) }}
{{- if not $wi.clientId }}
{{- fail "ckpt-exporter: azure.workloadIdentity.enabled needs azure.workloadIdentity.clientId, the client id of the managed identity (az identity show -g <group> -n <identity> --query clientId -o tsv)." }}
{{- end }}
{{- if and (hasKey $config "azure_auth") (ne (toString $config.azure_auth) "entra") }}
{{- fail (printf "ckpt-exporter: azure.workloadIdentity.enabled signs in with Entra ID tokens, but config.azure_auth is %q; remove it or set it to entra." (toString $config.azure_auth)) }}
{{- end }}
{{- if and (not $wi.webhook) (not $wi.tenantId) }}
{{- fail "ckpt-exporter: azure.workloadIdentity.webhook=false needs azure.workloadIdentity.tenantId (AZURE_TENANT_ID): without the webhook nobody else sets it." }}
{{- end }}
{{- end }}
{{- if hasKey $config "api_key" }}
{{- fail "ckpt-exporter: config.api_key would put the API key in a ConfigMap; use apiKey.existingSecret instead." }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") .Values.sharding.enabled }}
{{- fail "ckpt-exporter: sharding.enabled needs mode=standalone (sharding deploys a StatefulSet of its own)." }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") .Values.serviceMonitor.enabled }}
{{- fail "ckpt-exporter: a sidecar has no Service to monitor; in mode=sidecar use podMonitor.enabled=true instead of serviceMonitor.enabled." }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") .Values.networkPolicy.enabled }}
{{- fail "ckpt-exporter: networkPolicy.enabled is for mode=standalone; in mode=sidecar a policy would select the host pods, so write it with the host application." }}
{{- end }}
{{- end }}

{{/*
The exporter settings as YAML: .Values.config (already merged over the chart's defaults by Helm),
plus the settings the chart owns: api_key_file when the key Secret is mounted; azure_auth: entra
with workload identity; no shard or total_shards in sharded mode (those come from the environment
of each pod).
*/}}
{{- define "ckpt-exporter.configYaml" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if include "ckpt-exporter.mountsApiKey" . }}
{{- $_ := set $config "api_key_file" (include "ckpt-exporter.apiKeyFile" .) }}
{{- end }}
{{- if include "ckpt-exporter.workloadIdentity" . }}
{{- $_ := set $config "azure_auth" "entra" }}
{{- end }}
{{- if .Values.sharding.enabled }}
{{- $config = omit $config "shard" "total_shards" }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
sha256 of config.yaml exactly as the ConfigMap holds it (the block scalar adds the final newline):
the checksum/config pod annotation.
*/}}
{{- define "ckpt-exporter.configChecksum" -}}
{{- printf "%s\n" (include "ckpt-exporter.configYaml" .) | sha256sum }}
{{- end }}

{{/* The port the exporter listens on (config.listen_port, default 9842). */}}
{{- define "ckpt-exporter.port" -}}
{{- (.Values.config | default dict).listen_port | default 9842 | int }}
{{- end }}

{{/*
Pod annotations that belong to the exporter: checksum/config, so that pods roll when the settings
change. A host chart adds them to its pod template in sidecar mode.
*/}}
{{- define "ckpt-exporter.podAnnotations" -}}
checksum/config: {{ include "ckpt-exporter.configChecksum" . }}
{{- end }}

{{/*
The labels a host pod carries in sidecar mode: the one the PodMonitor selects, and with workload
identity the webhook's (the host's ServiceAccount then needs the client-id annotation itself).
*/}}
{{- define "ckpt-exporter.sidecarPodLabels" -}}
{{ .Values.sidecar.podLabelKey }}: {{ include "ckpt-exporter.fullname" . | quote }}
{{- with include "ckpt-exporter.workloadIdentityPodLabels" . }}
{{ . }}
{{- end }}
{{- end }}

{{/*
The exporter container (one item of a pod's containers list, without the leading "- ").
Usage in a host chart:
  containers:
    - {{ include "ckpt-exporter.container" (index .Subcharts "ckpt-exporter") | indent 6 | trim }}
*/}}
{{- define "ckpt-exporter.container" -}}
{{- $sidecar := eq .Values.mode "sidecar" -}}
name: {{ .Values.sidecar.containerName }}
image: {{ include "ckpt-exporter.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
{{- if .Values.demo }}
  - demo
{{- else }}
  - --config
  - {{ include "ckpt-exporter.configFile" . }}
{{- end }}
{{- range .Values.extraArgs }}
  - {{ . | quote }}
{{- end }}
env:
  # The settings file, also for subcommands without a --config flag (demo).
  - name: CKPT_EXPORTER_CONFIG_FILE
    value: {{ include "ckpt-exporter.configFile" . }}
{{- if .Values.sharding.enabled }}
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: CKPT_EXPORTER_SHARD_FROM_POD_NAME
    value: "true"
  - name: CKPT_EXPORTER_TOTAL_SHARDS
    value: {{ .Values.sharding.replicas | int | quote }}
{{- end }}
{{- if include "ckpt-exporter.projectsAzureToken" . }}
{{- $wi := .Values.azure.workloadIdentity }}
  # What the workload-identity webhook would set; azure-identity's WorkloadIdentityCredential reads them.
  - name: AZURE_CLIENT_ID
    value: {{ $wi.clientId | quote }}
  - name: AZURE_TENANT_ID
    value: {{ $wi.tenantId | quote }}
  - name: AZURE_FEDERATED_TOKEN_FILE
    value: {{ include "ckpt-exporter.azureTokenDir" . }}/azure-identity-token
  - name: AZURE_AUTHORITY_HOST
    value: {{ $wi.authorityHost | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . | nindent 2 }}
{{- end }}
ports:
  - name: http-metrics
    containerPort: {{ include "ckpt-exporter.port" . }}
    protocol: TCP
{{- if .Values.livenessProbe.enabled }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http-metrics
  {{- toYaml (omit .Values.livenessProbe "enabled") | nindent 2 }}
{{- end }}
{{- if and .Values.readinessProbe.enabled (or (not $sidecar) .Values.sidecar.readinessProbe) }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http-metrics
  {{- toYaml (omit .Values.readinessProbe "enabled") | nindent 2 }}
{{- end }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: ckpt-exporter-config
    mountPath: {{ include "ckpt-exporter.configDir" . }}
    readOnly: true
  - name: ckpt-exporter-tmp
    mountPath: /tmp
{{- if include "ckpt-exporter.mountsApiKey" . }}
  - name: ckpt-exporter-api-key
    mountPath: {{ .Values.apiKey.mountPath }}
    readOnly: true
{{- end }}
{{- if include "ckpt-exporter.projectsAzureToken" . }}
  - name: azure-identity-token
    mountPath: {{ include "ckpt-exporter.azureTokenDir" . }}
    readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- if and $sidecar .Values.sidecar.nativeSidecar }}
restartPolicy: Always
{{- end }}
{{- end }}

{{/*
The volumes the container mounts (items of a pod's volumes list).
Usage in a host chart:
  volumes:
    {{- include "ckpt-exporter.volumes" (index .Subcharts "ckpt-exporter") | nindent 4 }}
*/}}
{{- define "ckpt-exporter.volumes" -}}
- name: ckpt-exporter-config
  configMap:
    name: {{ include "ckpt-exporter.fullname" . }}
- name: ckpt-exporter-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if include "ckpt-exporter.mountsApiKey" . }}
- name: ckpt-exporter-api-key
  secret:
    secretName: {{ .Values.apiKey.existingSecret }}
    {{- if .Values.apiKey.defaultMode }}
    defaultMode: {{ .Values.apiKey.defaultMode | int }}
    {{- else if eq .Values.mode "sidecar" }}
    defaultMode: 292 {{- /* 0444: a host pod may set no fsGroup */}}
    {{- else }}
    defaultMode: 288 {{- /* 0440: group-readable through fsGroup 65532 */}}
    {{- end }}
    items:
      - key: {{ .Values.apiKey.secretKey }}
        path: api-key
{{- end }}
{{- if include "ckpt-exporter.projectsAzureToken" . }}
- name: azure-identity-token
  projected:
    sources:
      - serviceAccountToken:
          path: azure-identity-token
          audience: {{ .Values.azure.workloadIdentity.tokenAudience }}
          expirationSeconds: {{ .Values.azure.workloadIdentity.tokenExpirationSeconds | int }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pod template of the Deployment and the StatefulSet. */}}
{{- define "ckpt-exporter.podTemplate" -}}
metadata:
  labels:
    {{- include "ckpt-exporter.labels" . | nindent 4 }}
    {{- with include "ckpt-exporter.workloadIdentityPodLabels" . }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "ckpt-exporter.podAnnotations" . | nindent 4 }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ckpt-exporter.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  # No service-link variables: a Service named ckpt-exporter would inject CKPT_EXPORTER_PORT=...,
  # which shares the exporter's settings prefix.
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - {{ include "ckpt-exporter.container" . | indent 6 | trim }}
  volumes:
    {{- include "ckpt-exporter.volumes" . | nindent 4 }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The relabeling that sets the `job` label (files/alerts.yaml selects up{job="ckpt-exporter"}),
followed by the user's relabelings. Argument: the serviceMonitor or podMonitor values.
*/}}
{{- define "ckpt-exporter.monitorRelabelings" -}}
{{- $relabelings := list }}
{{- if .jobName }}
{{- $relabelings = append $relabelings (dict "action" "replace" "targetLabel" "job" "replacement" .jobName) }}
{{- end }}
{{- $relabelings = concat $relabelings (.relabelings | default list) }}
{{- if $relabelings }}
{{- toYaml $relabelings }}
{{- end }}
{{- end }}
