{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "codelab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name when it already contains the chart name. */}}
{{- define "codelab.fullname" -}}
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

{{- define "codelab.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "root" $ "component" "gateway"). */}}
{{- define "codelab.labels" -}}
helm.sh/chart: {{ include "codelab.chart" .root }}
{{ include "codelab.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: codelab
{{- end }}

{{- define "codelab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codelab.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The CodeLab services: values key, component (= `codelab serve` name), env prefix. */}}
{{- define "codelab.components" -}}
gateway: {component: gateway, prefix: GATEWAY}
auth: {component: auth, prefix: AUTH_SERVICE}
agentRuntime: {component: agent-runtime, prefix: AGENT_RUNTIME}
llmProxy: {component: llm-proxy, prefix: LLM_PROXY}
website: {component: website, prefix: WEBSITE}
{{- end }}

{{- define "codelab.serviceName" -}}
{{- printf "%s-%s" (include "codelab.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "codelab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "codelab.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "codelab.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Replicas of a service: pass (dict "root" $ "svc" $svcValues). */}}
{{- define "codelab.replicas" -}}
{{- if kindIs "invalid" .svc.replicas }}{{ .root.Values.replicaCount }}{{ else }}{{ .svc.replicas }}{{ end }}
{{- end }}

{{/* Secrets -------------------------------------------------------------------------------- */}}

{{- define "codelab.secretName" -}}
{{- default (printf "%s-secrets" (include "codelab.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "codelab.providersSecretName" -}}
{{- default (printf "%s-providers" (include "codelab.fullname" .)) .Values.secrets.providersExistingSecret }}
{{- end }}

{{- define "codelab.hasProviders" -}}
{{- if or .Values.secrets.providersExistingSecret .Values.secrets.providers }}true{{ end }}
{{- end }}

{{/* Database ------------------------------------------------------------------------------- */}}

{{- define "codelab.postgres.internal" -}}
{{- if and (eq .Values.database.type "postgresql") .Values.postgresql.enabled }}true{{ end }}
{{- end }}

{{- define "codelab.postgres.host" -}}
{{- if include "codelab.postgres.internal" . }}
{{- printf "%s-postgresql" (include "codelab.fullname" .) }}
{{- else }}
{{- required "externalDatabase.host is required when database.type is postgresql without postgresql.enabled" .Values.externalDatabase.host }}
{{- end }}
{{- end }}

{{/* The Secret holding the services' PostgreSQL passwords. */}}
{{- define "codelab.postgres.passwordSecret" -}}
{{- if include "codelab.postgres.internal" . }}
{{- default (printf "%s-postgresql" (include "codelab.fullname" .)) .Values.postgresql.existingSecret }}
{{- else }}
{{- required "externalDatabase.existingSecret is required with an external PostgreSQL (the password is never a value)" .Values.externalDatabase.existingSecret }}
{{- end }}
{{- end }}

{{/* Each service's database role; pass (dict "root" $ "service" "auth"|"agentRuntime").
     In-chart: the role files/init-databases.sh created for that database only. External: the
     service's own user when set, else externalDatabase.username. */}}
{{- define "codelab.postgres.user" -}}
{{- $v := .root.Values }}
{{- if include "codelab.postgres.internal" .root }}
{{- ternary "codelab_auth" "codelab_agent_runtime" (eq .service "auth") }}
{{- else }}
{{- default $v.externalDatabase.username (index $v.externalDatabase (printf "%sUsername" .service)) }}
{{- end }}
{{- end }}

{{- define "codelab.postgres.passwordKey" -}}
{{- $v := .root.Values }}
{{- if include "codelab.postgres.internal" .root }}
{{- ternary "auth-password" "agent-runtime-password" (eq .service "auth") }}
{{- else }}
{{- default $v.externalDatabase.existingSecretPasswordKey (index $v.externalDatabase (printf "%sPasswordKey" .service)) }}
{{- end }}
{{- end }}

{{/* The env variable holding a service's database password (only a helper for $(...)). */}}
{{- define "codelab.postgres.passwordVar" -}}
{{- ternary "CODELAB_AUTH_DB_PASSWORD" "CODELAB_AGENT_RUNTIME_DB_PASSWORD" (eq .service "auth") }}
{{- end }}

{{/* A database URL; pass (dict "root" $ "service" "auth" "db" "auth_db" "sqlite" "auth.db").
     The password is expanded by Kubernetes from the variable of codelab.dbPasswordEnv,
     declared before it. */}}
{{- define "codelab.dbUrl" -}}
{{- $v := .root.Values }}
{{- if eq $v.database.type "sqlite" }}
{{- printf "sqlite:///data/%s" .sqlite }}
{{- else if eq $v.database.type "postgresql" }}
{{- $user := include "codelab.postgres.user" . }}
{{- $port := ternary 5432 $v.externalDatabase.port (not (empty (include "codelab.postgres.internal" .root))) }}
{{- $ssl := ternary "disable" $v.externalDatabase.sslmode (not (empty (include "codelab.postgres.internal" .root))) }}
{{- printf "postgres://%s:$(%s)@%s:%v/%s?sslmode=%s" $user (include "codelab.postgres.passwordVar" .) (include "codelab.postgres.host" .root) $port .db $ssl }}
{{- else }}
{{- fail (printf "database.type must be sqlite or postgresql, not %q" $v.database.type) }}
{{- end }}
{{- end }}

{{- define "codelab.authDatabase" -}}
{{- if include "codelab.postgres.internal" . }}auth_db{{ else }}{{ .Values.externalDatabase.authDatabase }}{{ end }}
{{- end }}

{{- define "codelab.agentRuntimeDatabase" -}}
{{- if include "codelab.postgres.internal" . }}agent_runtime{{ else }}{{ .Values.externalDatabase.agentRuntimeDatabase }}{{ end }}
{{- end }}

{{/* A service's database password variable (PostgreSQL only); pass (dict "root" $ "service" S). */}}
{{- define "codelab.dbPasswordEnv" -}}
{{- if eq .root.Values.database.type "postgresql" }}
- name: {{ include "codelab.postgres.passwordVar" . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.postgres.passwordSecret" .root }}
      key: {{ include "codelab.postgres.passwordKey" . }}
{{- end }}
{{- end }}

{{/* Redis URL base (without database number), or empty. The in-chart Redis's password is
     expanded by Kubernetes from CODELAB_REDIS_PASSWORD (codelab.redisPasswordEnv). */}}
{{- define "codelab.redisBase" -}}
{{- if .Values.redis.url }}
{{- .Values.redis.url | trimSuffix "/" }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://:$(CODELAB_REDIS_PASSWORD)@%s-redis:6379" (include "codelab.fullname" .) }}
{{- end }}
{{- end }}

{{/* CODELAB_REDIS_PASSWORD for the in-chart Redis (only a helper for $(...) expansion). */}}
{{- define "codelab.redisPasswordEnv" -}}
{{- if and .Values.redis.enabled (not .Values.redis.url) }}
- name: CODELAB_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" . }}
      key: redis-password
{{- end }}
{{- end }}

{{- define "codelab.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- .Values.publicUrl | trimSuffix "/" }}
{{- else }}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls) .Values.ingress.host }}
{{- end }}
{{- end }}

{{/* Environment of each service ------------------------------------------------------------ */}}

{{- define "codelab.env.common" -}}
- name: ENVIRONMENT
  value: {{ .root.Values.environment | quote }}
- name: PORT
  value: {{ .svc.port | quote }}
{{- range $name, $value := .root.Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- range $name, $value := .svc.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{- define "codelab.env.gateway" -}}
{{- $fn := include "codelab.fullname" .root }}
- name: GATEWAY__AGENT_URL
  value: {{ printf "http://%s-agent-runtime:%v" $fn .root.Values.services.agentRuntime.port | quote }}
- name: GATEWAY__AUTH_SERVICE_URL
  value: {{ printf "http://%s-auth:%v" $fn .root.Values.services.auth.port | quote }}
- name: GATEWAY__JWT_ISSUER
  value: {{ .root.Values.jwt.issuer | quote }}
- name: GATEWAY__JWT_AUDIENCE
  value: {{ .root.Values.jwt.audience | quote }}
- name: GATEWAY__INTERNAL_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" .root }}
      key: runtime-internal-key
{{- with include "codelab.redisBase" .root }}
{{- include "codelab.redisPasswordEnv" $.root }}
- name: GATEWAY__REDIS_URL
  value: {{ printf "%s/2" . | quote }}
{{- end }}
{{- end }}

{{- define "codelab.env.auth" -}}
{{- include "codelab.dbPasswordEnv" (dict "root" .root "service" "auth") }}
- name: AUTH_SERVICE__DB_URL
  value: {{ include "codelab.dbUrl" (dict "root" .root "service" "auth" "db" (include "codelab.authDatabase" .root) "sqlite" "auth.db") | quote }}
- name: AUTH_SERVICE__DB_MAX_CONNECTIONS
  value: {{ .root.Values.database.maxConnections | quote }}
- name: AUTH_SERVICE__PUBLIC_URL
  value: {{ include "codelab.publicUrl" .root | quote }}
- name: AUTH_SERVICE__JWT_ISSUER
  value: {{ .root.Values.jwt.issuer | quote }}
- name: AUTH_SERVICE__JWT_AUDIENCE
  value: {{ .root.Values.jwt.audience | quote }}
- name: AUTH_SERVICE__TRUSTED_PROXIES
  value: {{ join "," .svc.trustedProxies | quote }}
- name: AUTH_SERVICE__WEB_REDIRECT_URIS
  value: {{ printf "%s/console/callback" (include "codelab.publicUrl" .root) | quote }}
- name: AUTH_SERVICE__MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" .root }}
      key: admin-password
- name: AUTH_SERVICE__KEY_ENCRYPTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" .root }}
      key: key-encryption-key
- name: AUTH_SERVICE__INTERNAL_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" .root }}
      key: internal-client-secret
{{- with include "codelab.redisBase" .root }}
{{- include "codelab.redisPasswordEnv" $.root }}
- name: AUTH_SERVICE__REDIS_URL
  value: {{ printf "%s/1" . | quote }}
{{- end }}
{{- end }}

{{- define "codelab.env.agentRuntime" -}}
{{- include "codelab.dbPasswordEnv" (dict "root" .root "service" "agentRuntime") }}
- name: AGENT_RUNTIME__DB_URL
  value: {{ include "codelab.dbUrl" (dict "root" .root "service" "agentRuntime" "db" (include "codelab.agentRuntimeDatabase" .root) "sqlite" "agent_runtime.db") | quote }}
- name: AGENT_RUNTIME__DB_MAX_CONNECTIONS
  value: {{ .root.Values.database.maxConnections | quote }}
- name: AGENT_RUNTIME__LLM_PROXY_URL
  value: {{ printf "http://%s-llm-proxy:%v" (include "codelab.fullname" .root) .root.Values.services.llmProxy.port | quote }}
- name: AGENT_RUNTIME__INTERNAL_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" .root }}
      key: runtime-internal-key
- name: AGENT_RUNTIME__LLM_PROXY_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" .root }}
      key: proxy-internal-key
{{- end }}

{{- define "codelab.env.llmProxy" -}}
- name: LLM_PROXY__INTERNAL_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" .root }}
      key: proxy-internal-key
{{- end }}

{{- define "codelab.env.website" -}}
{{- $fn := include "codelab.fullname" .root }}
- name: WEBSITE__PUBLIC_URL
  value: {{ include "codelab.publicUrl" .root | quote }}
- name: WEBSITE__AUTH_URL
  value: {{ printf "http://%s-auth:%v" $fn .root.Values.services.auth.port | quote }}
- name: WEBSITE__GATEWAY_URL
  value: {{ printf "http://%s-gateway:%v" $fn .root.Values.services.gateway.port | quote }}
- name: WEBSITE__SESSION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "codelab.secretName" .root }}
      key: website-session-key
{{- with include "codelab.redisBase" .root }}
{{- include "codelab.redisPasswordEnv" $.root }}
- name: WEBSITE__REDIS_URL
  value: {{ printf "%s/3" . | quote }}
{{- end }}
{{- end }}

{{/* Whether a service keeps files under /app/data (SQLite). */}}
{{- define "codelab.usesDataVolume" -}}
{{- if and (eq .root.Values.database.type "sqlite") (has .key (list "auth" "agentRuntime")) }}true{{ end }}
{{- end }}
