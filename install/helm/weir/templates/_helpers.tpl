{{/* The image every weir component runs. */}}
{{- define "weir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "weir.labels" -}}
app.kubernetes.io/part-of: weir
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The API server's address for host-network components, from the
values or the optional weir-kube-api ConfigMap. */}}
{{- define "weir.kubeApiEnv" -}}
{{- if .Values.k8sServiceHost }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.k8sServiceHost | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.k8sServicePort | quote }}
{{- end }}
{{- end -}}

{{- define "weir.kubeApiEnvFrom" -}}
{{- if not .Values.k8sServiceHost }}
envFrom:
  - configMapRef: {name: weir-kube-api, optional: true}
{{- end }}
{{- end -}}

{{/* The Secrets of the Observer API's certificates: the operator's own
names when it issues them (hubble.tls.auto; install/rbac.yaml grants it
those names only), else the values'. */}}
{{- define "weir.hubbleServerSecret" -}}
{{- if .Values.hubble.tls.auto }}weir-hubble-server-certs{{ else }}{{ required "hubble.tls.serverSecret" .Values.hubble.tls.serverSecret }}{{ end -}}
{{- end -}}
{{- define "weir.hubbleClientSecret" -}}
{{- if .Values.hubble.tls.auto }}weir-hubble-relay-client-certs{{ else }}{{ required "hubble.tls.clientSecret" .Values.hubble.tls.clientSecret }}{{ end -}}
{{- end -}}
{{- define "weir.relayServerSecret" -}}
{{- if .Values.hubble.tls.auto }}weir-relay-server-certs{{ else }}{{ required "relay.tls.secret" .Values.relay.tls.secret }}{{ end -}}
{{- end -}}
