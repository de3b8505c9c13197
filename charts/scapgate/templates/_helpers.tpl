{{/* Names: fullname leaves room for the "-worker", "-redis" and "-tls" suffixes (DNS labels ≤ 63). */}}
{{- define "scapgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "scapgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "scapgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "scapgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scapgate
{{- end }}

{{/* Selector labels of one component: webhook, worker or redis. Call with (list . "webhook"). */}}
{{- define "scapgate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "scapgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "scapgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scapgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "scapgate.image" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default .appVersion }}
{{- end -}}
{{- end }}

{{- define "scapgate.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" -}}
{{ required "tls.secret.name is required when tls.mode is secret" .Values.tls.secret.name }}
{{- else -}}
{{ include "scapgate.fullname" . }}-tls
{{- end -}}
{{- end }}

{{- define "scapgate.policiesConfigMap" -}}
{{- .Values.policies.existingConfigMap | default (printf "%s-policies" (include "scapgate.fullname" .)) }}
{{- end }}

{{/* The Service's DNS name: what kube-apiserver verifies the serving certificate against. */}}
{{- define "scapgate.serviceHost" -}}
{{ include "scapgate.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end }}

{{- define "scapgate.redisSecretName" -}}
{{- if .Values.ha.redis.existingSecret -}}
{{ .Values.ha.redis.existingSecret }}
{{- else -}}
{{ include "scapgate.fullname" . }}-redis
{{- end -}}
{{- end }}

{{- define "scapgate.redisBundled" -}}
{{- if and .Values.ha.enabled (not .Values.ha.redis.url) (not .Values.ha.redis.existingSecret) -}}
true
{{- end -}}
{{- end }}

{{/* Environment shared by the webhook and the workers: SCAPGATE_* settings (webhook/config.py). */}}
{{- define "scapgate.env" -}}
{{- $c := .Values.config -}}
- name: SCAPGATE_POLICY
  value: /etc/scapgate/policies
- name: SCAPGATE_STATE_DIR
  value: /var/lib/scapgate
- name: SCAPGATE_SCRATCH_DIR
  value: /scratch
- name: SCAPGATE_PLATFORM
  value: {{ $c.platform | quote }}
- name: SCAPGATE_PLATFORMS
  value: {{ join "," ($c.platforms | default (list $c.platform)) | quote }}
- name: SCAPGATE_INSECURE_REGISTRIES
  value: {{ join "," $c.insecureRegistries | quote }}
- name: SCAPGATE_LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: SCAPGATE_WORKERS
  value: {{ $c.scanWorkers | quote }}
- name: SCAPGATE_QUEUE_LIMIT
  value: {{ $c.queueLimit | quote }}
- name: SCAPGATE_SCAN_TIMEOUT_S
  value: {{ $c.scanTimeoutSeconds | quote }}
- name: SCAPGATE_REGISTRY_TIMEOUT_S
  value: {{ $c.registryTimeoutSeconds | quote }}
- name: SCAPGATE_MAX_UNPACK_BYTES
  value: {{ $c.maxUnpackBytes | int64 | quote }}
- name: SCAPGATE_PARTIAL_UNPACK
  value: {{ $c.partialUnpack | quote }}
- name: SCAPGATE_OCI_CACHE_BYTES
  value: {{ $c.ociCacheBytes | int64 | quote }}
- name: SCAPGATE_REPORTS_BYTES
  value: {{ $c.reportsBytes | int64 | quote }}
- name: SCAPGATE_REPORT_URL
  value: {{ $c.reportUrl | quote }}
{{- $feeds := list }}
{{- range $product, $source := .Values.cves.feeds }}{{ $feeds = append $feeds (printf "%s=%s" $product $source) }}{{ end }}
- name: SCAPGATE_INVENTORY
  value: {{ .Values.inventory.enabled | quote }}
- name: SCAPGATE_CVE_FEEDS
  value: {{ ternary (join "," $feeds) "off" .Values.cves.enabled | quote }}
- name: SCAPGATE_CVE_REFRESH_S
  value: {{ .Values.cves.refreshSeconds | quote }}
- name: SCAPGATE_CVE_FEED_MAX_BYTES
  value: {{ .Values.cves.maxFeedBytes | int64 | quote }}
{{- if .Values.registries.authSecret }}
- name: SCAPGATE_AUTH_FILE
  value: /etc/scapgate/registry-auth/config.json
{{- end }}
{{- if .Values.registries.cas }}
- name: SCAPGATE_CERTS_DIR
  value: /etc/scapgate/certs.d
{{- end }}
{{- if .Values.ha.enabled }}
{{- if include "scapgate.redisBundled" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "scapgate.redisSecretName" . }}
      key: password
- name: SCAPGATE_STORE
  value: "redis://:$(REDIS_PASSWORD)@{{ include "scapgate.fullname" . }}-redis.{{ .Release.Namespace }}.svc:6379/0"
{{- else }}
- name: SCAPGATE_STORE
  valueFrom:
    secretKeyRef:
      name: {{ include "scapgate.redisSecretName" . }}
      key: {{ if .Values.ha.redis.existingSecret }}{{ .Values.ha.redis.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes every scapgate pod mounts (policies, state, scratch, tmp, registry settings). */}}
{{- define "scapgate.volumes" -}}
- name: policies
  configMap:
    name: {{ include "scapgate.policiesConfigMap" . }}
- name: state
  emptyDir:
    sizeLimit: {{ .Values.state.sizeLimit }}
- name: scratch
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.scratch.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- if and .Values.ha.enabled .Values.ha.reportsClaim }}
- name: reports
  persistentVolumeClaim:
    claimName: {{ .Values.ha.reportsClaim }}
{{- end }}
{{- if .Values.registries.authSecret }}
- name: registry-auth
  secret:
    secretName: {{ .Values.registries.authSecret }}
    items:
      - key: .dockerconfigjson
        path: config.json
{{- end }}
{{- if .Values.registries.cas }}
- name: registry-cas
  configMap:
    name: {{ include "scapgate.fullname" . }}-registries
    items:
{{- range $i, $host := keys .Values.registries.cas | sortAlpha }}
      - key: ca-{{ $i }}.crt
        path: {{ $host }}/ca.crt
{{- end }}
{{- end }}
{{- if .Values.console.enabled }}
- name: console-token
  secret:
    secretName: {{ required "console.tokenSecret.name: a Secret holding the console's bearer token" .Values.console.tokenSecret.name }}
    items:
      - key: {{ .Values.console.tokenSecret.key }}
        path: {{ .Values.console.tokenSecret.key }}
{{- end }}
{{- with .Values.cves.volume }}
- name: cve-feeds
{{ toYaml . | indent 2 }}
{{- end }}
{{- if .Values.registries.registriesConf }}
- name: registries-conf
  configMap:
    name: {{ include "scapgate.fullname" . }}-registries
    items:
      - key: registries.conf
        path: registries.conf
{{- end }}
{{- end }}

{{- define "scapgate.volumeMounts" -}}
- name: policies
  mountPath: /etc/scapgate/policies
  readOnly: true
- name: state
  mountPath: /var/lib/scapgate
- name: scratch
  mountPath: /scratch
- name: tmp
  mountPath: /tmp
{{- if and .Values.ha.enabled .Values.ha.reportsClaim }}
- name: reports
  mountPath: /var/lib/scapgate/reports
{{- end }}
{{- if .Values.registries.authSecret }}
- name: registry-auth
  mountPath: /etc/scapgate/registry-auth
  readOnly: true
{{- end }}
{{- if .Values.registries.cas }}
- name: registry-cas
  mountPath: /etc/scapgate/certs.d
  readOnly: true
{{- end }}
{{- if .Values.cves.volume }}
- name: cve-feeds
  mountPath: /etc/scapgate/feeds
  readOnly: true
{{- end }}
{{- if .Values.console.enabled }}
- name: console-token
  mountPath: /etc/scapgate/console
  readOnly: true
{{- end }}
{{- if .Values.registries.registriesConf }}
- name: registries-conf
  mountPath: /etc/containers/registries.conf
  subPath: registries.conf
  readOnly: true
{{- end }}
{{- end }}

{{/* Anti-affinity for one component. Call with (list . "webhook"). */}}
{{- define "scapgate.affinity" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.affinity -}}
{{ toYaml $root.Values.affinity }}
{{- else -}}
podAntiAffinity:
{{- if eq $root.Values.podAntiAffinity "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "scapgate.selectorLabels" . | nindent 10 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "scapgate.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}
{{- end }}


{{/* What the validating and the mutating webhook share: service, TLS, selectors, rules.
  Called with (dict "root" . "caBundle" CA "path" "/validate"). */}}
{{- define "scapgate.webhookCommon" -}}
{{- $root := .root -}}
{{- $caBundle := .caBundle -}}
{{- $path := .path -}}
{{- $operations := .operations | default $root.Values.webhook.operations -}}
admissionReviewVersions: [v1]
sideEffects: {{ .sideEffects | default "None" }}
matchPolicy: Equivalent
timeoutSeconds: {{ .timeoutSeconds | default $root.Values.webhook.timeoutSeconds }}
clientConfig:
  service:
    name: {{ include "scapgate.fullname" $root }}
    namespace: {{ $root.Release.Namespace }}
    path: {{ $path }}
    port: {{ $root.Values.service.port }}
  {{- if $caBundle }}
  caBundle: {{ $caBundle }}
  {{- end }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
        {{- toYaml (concat (list "kube-system" $root.Release.Namespace) $root.Values.webhook.excludeNamespaces | uniq) | nindent 8 }}
    {{- with $root.Values.webhook.namespaceSelectorExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- with $root.Values.webhook.objectSelector }}
objectSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
rules:
  - apiGroups: [""]
    apiVersions: [v1]
    resources: [pods, pods/ephemeralcontainers, replicationcontrollers]
    operations: {{ toJson $operations }}
    scope: Namespaced
  - apiGroups: [apps]
    apiVersions: [v1]
    resources: [deployments, replicasets, statefulsets, daemonsets]
    operations: {{ toJson $operations }}
    scope: Namespaced
  - apiGroups: [batch]
    apiVersions: [v1]
    resources: [jobs, cronjobs]
    operations: {{ toJson $operations }}
    scope: Namespaced
{{- with $root.Values.webhook.matchConditions }}
matchConditions:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
