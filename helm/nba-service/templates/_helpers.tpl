{{/* Names and labels, as `helm create` makes them. */}}
{{- define "nba.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nba.fullname" -}}
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

{{- define "nba.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nba.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nba.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nba.labels" -}}
helm.sh/chart: {{ include "nba.chart" . }}
{{ include "nba.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nba-service
{{- end }}

{{- define "nba.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nba.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nba.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "nba.tlsSecret" -}}
{{- default (printf "%s-tls" (include "nba.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "nba.dsnSecret" -}}
{{- default (printf "%s-postgres" (include "nba.fullname" .)) .Values.postgres.dsnSecret.name }}
{{- end }}

{{- define "nba.rulesetsConfigMap" -}}
{{- default (printf "%s-rulesets" (include "nba.fullname" .)) .Values.rulesets.existingConfigMap }}
{{- end }}

{{- define "nba.policyConfigMap" -}}
{{- default (printf "%s-access-policy" (include "nba.fullname" .)) .Values.accessPolicy.existingConfigMap }}
{{- end }}

{{- define "nba.jwksConfigMap" -}}
{{- default (printf "%s-jwks" (include "nba.fullname" .)) .Values.jwt.existingConfigMap }}
{{- end }}

{{- define "nba.tlsServerName" -}}
{{- default (printf "%s.%s.svc" (include "nba.fullname" .) .Release.Namespace) .Values.tls.serverName }}
{{- end }}

{{/* Combinations the service would refuse at start-up, refused at render time with the same reasoning. */}}
{{- define "nba.validate" -}}
{{- if and .Values.tls.enabled .Values.insecure }}
{{- fail "tls.enabled and insecure: give one of them (insecure is plain text behind a mesh, without TLS)" }}
{{- end }}
{{- if and (not .Values.tls.enabled) (not .Values.insecure) }}
{{- fail "tls.enabled=false needs insecure=true: the service refuses plain text off loopback unless asked for it explicitly" }}
{{- end }}
{{- if not (or (and .Values.tls.enabled .Values.tls.clientAuth) .Values.jwt.enabled) }}
{{- fail "callers must prove who they are for the access policy: use tls.enabled with tls.clientAuth (client certificates) or jwt.enabled (bearer tokens)" }}
{{- end }}
{{- if and .Values.jwt.enabled (or (not .Values.jwt.issuer) (not .Values.jwt.audience)) }}
{{- fail "jwt.enabled needs jwt.issuer and jwt.audience: every token is checked for both" }}
{{- end }}
{{- if and .Values.jwt.enabled (not .Values.jwt.jwks) (not .Values.jwt.existingConfigMap) }}
{{- fail "jwt.enabled needs jwt.jwks (the JWKS document) or jwt.existingConfigMap (holding jwks.json)" }}
{{- end }}
{{- if and (eq .Values.store "sqlite") (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "store=sqlite keeps an embedded database inside each pod: use it with replicaCount=1 and autoscaling.enabled=false only; use store=postgres to scale" }}
{{- end }}
{{- if and .Values.http.enabled (eq (int .Values.http.port) (int .Values.grpc.port)) }}
{{- fail "http.port and grpc.port must differ" }}
{{- end }}
{{- if and .Values.metrics.enabled (or (eq (int .Values.metrics.port) (int .Values.grpc.port)) (and .Values.http.enabled (eq (int .Values.metrics.port) (int .Values.http.port)))) }}
{{- fail "metrics.port must differ from grpc.port and http.port" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled needs metrics.enabled: without it there is no metrics port to scrape" }}
{{- end }}
{{- if and .Values.limits.rateBurst (not .Values.limits.rateLimit) }}
{{- fail "limits.rateBurst needs limits.rateLimit above 0" }}
{{- end }}
{{- if gt (int .Values.postgres.poolMin) (int .Values.postgres.poolMax) }}
{{- fail "postgres.poolMin must not exceed postgres.poolMax" }}
{{- end }}
{{- if and .Values.shutdown.terminationGracePeriodSeconds (le (int .Values.shutdown.terminationGracePeriodSeconds) (add .Values.shutdown.graceSeconds .Values.shutdown.drainSeconds .Values.shutdown.preStopSleepSeconds | int)) }}
{{- fail "shutdown.terminationGracePeriodSeconds must exceed graceSeconds + drainSeconds + preStopSleepSeconds, or the kubelet kills pods before their decision log is drained" }}
{{- end }}
{{- end }}

{{- define "nba.terminationGracePeriod" -}}
{{- if .Values.shutdown.terminationGracePeriodSeconds }}
{{- .Values.shutdown.terminationGracePeriodSeconds }}
{{- else }}
{{- add .Values.shutdown.graceSeconds .Values.shutdown.drainSeconds .Values.shutdown.preStopSleepSeconds 10 }}
{{- end }}
{{- end }}

{{/* The database connection, shared by the server and the migration Job. */}}
{{- define "nba.postgresEnv" -}}
- name: NBA_DSN
  valueFrom:
    secretKeyRef:
      name: {{ include "nba.dsnSecret" . }}
      key: {{ .Values.postgres.dsnSecret.key }}
{{- if .Values.postgres.passwordSecret.name }}
- name: NBA_DSN_PASSWORD_FILE
  value: /etc/nba/postgres/{{ .Values.postgres.passwordSecret.key }}
{{- end }}
{{- end }}

{{- define "nba.postgresVolume" -}}
{{- if .Values.postgres.passwordSecret.name }}
- name: postgres-password
  secret:
    secretName: {{ .Values.postgres.passwordSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ .Values.postgres.passwordSecret.key }}
        path: {{ .Values.postgres.passwordSecret.key }}
{{- end }}
{{- end }}

{{- define "nba.postgresMount" -}}
{{- if .Values.postgres.passwordSecret.name }}
- name: postgres-password
  mountPath: /etc/nba/postgres
  readOnly: true
{{- end }}
{{- end }}

{{/* A probe: the kubelet's gRPC probe in plain text, `nba health` in the container with TLS. */}}
{{- define "nba.probe" -}}
{{- $root := index . 0 }}
{{- $service := index . 1 }}
{{- $timing := index . 2 }}
{{- if $root.Values.tls.enabled }}
exec:
  command:
    - nba
    - health
    - --service
    - {{ $service | quote }}
    - --target
    - 127.0.0.1:{{ $root.Values.grpc.port }}
    - --cacert
    - /etc/nba/tls/ca.crt
    - --tls-server-name
    - {{ include "nba.tlsServerName" $root }}
{{- if $root.Values.tls.clientAuth }}
    - --cert
    - {{ ternary "/etc/nba/probe-client/tls.crt" "/etc/nba/tls/tls.crt" (not (empty $root.Values.tls.probeClientSecret)) }}
    - --key
    - {{ ternary "/etc/nba/probe-client/tls.key" "/etc/nba/tls/tls.key" (not (empty $root.Values.tls.probeClientSecret)) }}
{{- end }}
    - --timeout
    - {{ sub (int $timing.timeoutSeconds) 2 | max 1 | quote }}
{{- else }}
grpc:
  port: {{ $root.Values.grpc.port }}
  service: {{ $service | quote }}
{{- end }}
{{- range $key, $value := $timing }}
{{ $key }}: {{ $value }}
{{- end }}
{{- end }}
