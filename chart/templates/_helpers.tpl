{{/* Names, labels, images, the shared secret values and the dataplane's gateway config. */}}

{{- define "reflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "reflow.controller.fullname" -}}{{ include "reflow.fullname" . }}-controller{{- end -}}
{{- define "reflow.dataplane.fullname" -}}{{ include "reflow.fullname" . }}-dataplane{{- end -}}
{{- define "reflow.secrets.name" -}}
{{- default (printf "%s-secrets" (include "reflow.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}
{{- define "reflow.config.name" -}}{{ include "reflow.fullname" . }}-dataplane-config{{- end -}}
{{- define "reflow.database.name" -}}
{{- default (printf "%s-database" (include "reflow.fullname" .)) .Values.postgres.existingSecret -}}
{{- end -}}

{{- define "reflow.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reflow
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/*
The controller's NetworkPolicies for MCPInstance pods admit pods labelled
app.kubernetes.io/name=reflow-dataplane in the dataplane namespace, so that label is fixed.
*/}}
{{- define "reflow.controller.selectorLabels" -}}
app.kubernetes.io/name: reflow-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "reflow.dataplane.selectorLabels" -}}
app.kubernetes.io/name: reflow-dataplane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "reflow.controller.labels" -}}
{{ include "reflow.commonLabels" . }}
{{ include "reflow.controller.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}
{{- define "reflow.dataplane.labels" -}}
{{ include "reflow.commonLabels" . }}
{{ include "reflow.dataplane.selectorLabels" . }}
app.kubernetes.io/component: dataplane
{{- end -}}

{{- define "reflow.controller.image" -}}
{{- printf "%s:%s" .Values.controller.image.repository (default .Chart.AppVersion .Values.controller.image.tag) -}}
{{- end -}}
{{- define "reflow.dataplane.image" -}}
{{- printf "%s:%s" .Values.dataplane.image.repository (default .Chart.AppVersion .Values.dataplane.image.tag) -}}
{{- end -}}

{{/*
The shared secret values: given in values, else what the existing Secret holds (upgrades keep
them), else generated. Computed once per render and remembered, so the Secret and the checksum
annotations of both Deployments see the same values.
*/}}
{{- define "reflow.secretData" -}}
{{- if not (hasKey .Values "__reflowSecretData") -}}
{{- $existing := dict -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace (printf "%s-secrets" (include "reflow.fullname" .)) -}}
{{- if $found -}}{{- $existing = (get $found "data") | default dict -}}{{- end -}}
{{- $pick := dict
  "sealing-key" (list .Values.secrets.sealingKey 32)
  "controller-token" (list .Values.secrets.controllerToken 48)
  "token-issuer" (list .Values.secrets.tokenIssuerSecret 48)
  "identity-signing-key" (list .Values.secrets.identitySigningKey 0) -}}
{{- $data := dict -}}
{{- range $key, $spec := $pick -}}
{{- $given := index $spec 0 -}}
{{- if $given -}}
{{- $_ := set $data $key ($given | b64enc) -}}
{{- else if hasKey $existing $key -}}
{{- $_ := set $data $key (get $existing $key) -}}
{{- else if eq $key "sealing-key" -}}
{{- /* 32 random characters are 32 bytes: the key is their base64. */ -}}
{{- $_ := set $data $key (randAlphaNum 32 | b64enc | b64enc) -}}
{{- else if eq $key "identity-signing-key" -}}
{{- /* Shared by every replica so Targets can verify forwarded identities with one JWKS. */ -}}
{{- $_ := set $data $key (genPrivateKey "ed25519" | b64enc) -}}
{{- else -}}
{{- $_ := set $data $key (randAlphaNum (index $spec 1) | b64enc) -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "__reflowSecretData" $data -}}
{{- end -}}
{{- toYaml (get .Values "__reflowSecretData") -}}
{{- end -}}

{{- define "reflow.allowedHosts" -}}
{{- $hosts := list -}}
{{- if .Values.dataplane.gateway.allowedHosts -}}
{{- $hosts = .Values.dataplane.gateway.allowedHosts -}}
{{- else -}}
{{- $svc := include "reflow.dataplane.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts = list "localhost" "127.0.0.1" $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- if .Values.ingress.enabled -}}{{- range .Values.ingress.hosts -}}{{- $hosts = append $hosts .host -}}{{- end -}}{{- end -}}
{{- if .Values.httpRoute.enabled -}}{{- range .Values.httpRoute.hostnames -}}{{- $hosts = append $hosts . -}}{{- end -}}{{- end -}}
{{- end -}}
{{- toJson (uniq $hosts) -}}
{{- end -}}

{{/* The dataplane's --config file. Paths point at the mounts in dataplane-deployment.yaml. */}}
{{- define "reflow.gatewayConfig" -}}
{{- if and (not .Values.auth.builtinIssuer.enabled) (not .Values.auth.issuers) -}}
{{- fail "auth: enable auth.builtinIssuer or list at least one issuer in auth.issuers" -}}
{{- end -}}
{{- if and .Values.postgres.enabled (not .Values.postgres.url) (not .Values.postgres.existingSecret) -}}
{{- fail "postgres.enabled needs postgres.url or postgres.existingSecret" -}}
{{- end -}}
{{- $gateway := deepCopy .Values.dataplane.gateway -}}
{{- $_ := set $gateway "allowedHosts" (include "reflow.allowedHosts" . | fromJsonArray) -}}
{{- $identity := deepCopy (default dict $gateway.identityTokens) -}}
{{- if not $identity.signingKeyFile -}}
{{- $_ := set $identity "signingKeyFile" "/etc/reflow/secrets/identity-signing-key" -}}
{{- end -}}
{{- $_ := set $gateway "identityTokens" $identity -}}
{{- if .Values.console.enabled -}}
{{- $console := dict "enabled" true "admins" .Values.console.admins "secureCookies" .Values.console.secureCookies -}}
{{- if .Values.console.oidc -}}
{{- $_ := set $console "oidc" .Values.console.oidc -}}
{{- end -}}
{{- if .Values.console.sessionSeconds -}}
{{- $_ := set $console "sessionSeconds" .Values.console.sessionSeconds -}}
{{- end -}}
{{- $_ := set $gateway "console" $console -}}
{{- end -}}
{{- $config := dict "gateway" $gateway "sealingKeyFile" "/etc/reflow/secrets/sealing-key" -}}
{{- if .Values.auth.issuers -}}
{{- $auth := deepCopy .Values.auth.settings -}}
{{- $_ := set $auth "issuers" .Values.auth.issuers -}}
{{- $_ := set $config "auth" $auth -}}
{{- end -}}
{{- if .Values.auth.builtinIssuer.enabled -}}
{{- $_ := set $config "dev" (dict "issuer" .Values.auth.builtinIssuer.issuer "audience" .Values.auth.builtinIssuer.audience "hs256SecretFile" "/etc/reflow/secrets/token-issuer") -}}
{{- end -}}
{{- if .Values.postgres.enabled -}}
{{- $_ := set $config "database" (dict "urlFile" "/etc/reflow/database/url" "maxConnections" .Values.postgres.maxConnections) -}}
{{- $_ := set $config "audit" (dict "sink" "postgres" "spillDir" "/var/lib/reflow/spill" "failurePolicy" .Values.postgres.auditFailurePolicy "retentionDays" .Values.postgres.auditRetentionDays) -}}
{{- else if .Values.dataplane.audit -}}
{{- $_ := set $config "audit" .Values.dataplane.audit -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{- define "reflow.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "reflow.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "reflow.otelEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
{{- if .root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.otel.endpoint | quote }}
{{- end }}
{{- range $k, $v := .root.Values.otel.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}
