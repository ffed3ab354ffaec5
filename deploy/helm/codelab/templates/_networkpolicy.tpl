{{/* Pieces of networkpolicies.yaml. */}}

{{- define "codelab.np.from" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .root.Release.Name }}
      app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- define "codelab.np.controller" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.ingressController.namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .Values.networkPolicy.ingressController.podSelector | nindent 4 }}
{{- end }}
{{- define "codelab.np.dns" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}
{{- define "codelab.np.database" -}}
{{- if eq .Values.database.type "postgresql" }}
{{- if include "codelab.postgres.internal" . }}
- to:
    {{- include "codelab.np.from" (dict "root" . "component" "postgresql") | nindent 4 }}
  ports:
    - {port: 5432, protocol: TCP}
{{- else }}
- to:
    - ipBlock:
        cidr: {{ .Values.networkPolicy.externalDatabaseCIDR }}
  ports:
    - {port: {{ .Values.externalDatabase.port }}, protocol: TCP}
{{- end }}
{{- end }}
{{- end }}
{{- define "codelab.np.redis" -}}
{{- if .Values.redis.url }}
- to:
    - ipBlock:
        cidr: {{ .Values.networkPolicy.externalRedisCIDR }}
  ports:
    - {port: 6379, protocol: TCP}
{{- else if .Values.redis.enabled }}
- to:
    {{- include "codelab.np.from" (dict "root" . "component" "redis") | nindent 4 }}
  ports:
    - {port: 6379, protocol: TCP}
{{- end }}
{{- end }}
{{- define "codelab.np.prometheus" -}}
{{- if .root.Values.monitoring.enabled }}
- from:
    - namespaceSelector:
        {{- toYaml .root.Values.networkPolicy.monitoring.namespaceSelector | nindent 8 }}
  ports:
    - {port: {{ .port }}, protocol: TCP}
{{- end }}
{{- end }}
{{- define "codelab.np.to" -}}
- to:
    {{- include "codelab.np.from" (dict "root" .root "component" .component) | nindent 4 }}
  ports:
    - {port: {{ .port }}, protocol: TCP}
{{- end }}
