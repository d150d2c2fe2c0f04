{{/* Names, labels and shared snippets of the signal-cluster chart. */}}

{{- define "signal-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" unless the release name already holds the chart name. Short enough
that "<fullname>-node-<ordinal>" stays a valid DNS label (per-pod Services and hosts). */}}
{{- define "signal-cluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "signal-cluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "signal-cluster.labels" -}}
helm.sh/chart: {{ include "signal-cluster.chart" . }}
app.kubernetes.io/name: {{ include "signal-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: signal-cluster
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "central"). */}}
{{- define "signal-cluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "signal-cluster.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "signal-cluster.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "signal-cluster.central.fullname" -}}
{{- printf "%s-central" (include "signal-cluster.fullname" .) }}
{{- end }}

{{- define "signal-cluster.node.fullname" -}}
{{- printf "%s-node" (include "signal-cluster.fullname" .) }}
{{- end }}

{{- define "signal-cluster.node.headless" -}}
{{- printf "%s-node-headless" (include "signal-cluster.fullname" .) }}
{{- end }}

{{- define "signal-cluster.coturn.fullname" -}}
{{- printf "%s-coturn" (include "signal-cluster.fullname" .) }}
{{- end }}

{{- define "signal-cluster.redis.fullname" -}}
{{- printf "%s-redis" (include "signal-cluster.fullname" .) }}
{{- end }}

{{/* The Secret holding the cluster secret (and the JWT secret when given as a value). */}}
{{- define "signal-cluster.secretName" -}}
{{- printf "%s-secret" (include "signal-cluster.fullname" .) }}
{{- end }}

{{- define "signal-cluster.clusterSecretRef" -}}
name: {{ default (include "signal-cluster.secretName" .) .Values.clusterSecret.existingSecret }}
key: {{ .Values.clusterSecret.key }}
{{- end }}

{{- define "signal-cluster.jwtSecretRef" -}}
name: {{ default (include "signal-cluster.secretName" .) .Values.jwt.existingSecret }}
key: {{ .Values.jwt.key }}
{{- end }}

{{/* The TURN secret (coturn's static-auth-secret), shared by central and coturn. */}}
{{- define "signal-cluster.turnSecretRef" -}}
name: {{ default (include "signal-cluster.secretName" .) .Values.turn.existingSecret }}
key: {{ .Values.turn.key }}
{{- end }}

{{/* Environment entry for the Redis URL of a binary: (dict "ctx" $ "env" "CENTRAL_REDIS_URL"). */}}
{{- define "signal-cluster.redisEnv" -}}
{{- $v := .ctx.Values -}}
{{- $x := $v.redis.external -}}
{{- $p := trimSuffix "_REDIS_URL" .env -}}
- name: {{ .env }}
{{- if $v.redis.enabled }}
  value: {{ printf "redis://%s:6379" (include "signal-cluster.redis.fullname" .ctx) | quote }}
{{- else if $x.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $x.existingSecret }}
      key: {{ $x.key }}
{{- else }}
  value: {{ required "redis.external.url or redis.external.existingSecret is required when redis.enabled=false" $x.url | quote }}
{{- end }}
{{- if not $v.redis.enabled }}
- name: {{ $p }}_REDIS_MODE
  value: {{ $x.mode | default "standalone" | quote }}
{{- if eq ($x.mode | default "standalone") "sentinel" }}
- name: {{ $p }}_REDIS_SENTINEL_MASTER
  value: {{ required "redis.external.sentinelMaster is required with redis.external.mode=sentinel" $x.sentinelMaster | quote }}
{{- end }}
{{- if $x.tlsCaSecret }}
- name: {{ $p }}_REDIS_TLS_CA
  value: /etc/signal/redis-tls-ca/ca.pem
{{- end }}
{{- end }}
{{- end }}

{{/* The grace period of a node pod: preStop sleep + drain window (rounded up) + slack. */}}
{{- define "signal-cluster.node.terminationGrace" -}}
{{- $n := .Values.signalNode -}}
{{- add $n.preStopSleepSeconds (div (add $n.drainMs 999) 1000) (div (add $n.resumeWindowMs 999) 1000) $n.terminationGraceExtraSeconds }}
{{- end }}

{{/* Number of per-pod Services/hosts: every pod the StatefulSet may ever have. */}}
{{- define "signal-cluster.node.maxPods" -}}
{{- $n := .Values.signalNode -}}
{{- if $n.autoscaling.enabled }}{{ max $n.replicaCount $n.autoscaling.maxReplicas }}{{ else }}{{ $n.replicaCount }}{{ end }}
{{- end }}

{{/* The URL central hands to clients for this pod; Kubernetes expands $(VAR) from env. */}}
{{- define "signal-cluster.node.advertiseUrl" -}}
{{- $e := .Values.signalNode.exposure -}}
{{- if $e.advertiseUrlTemplate }}
{{- $e.advertiseUrlTemplate }}
{{- else if eq $e.mode "ingress" }}
{{- printf "%s://$(POD_NAME).%s/ws" (ternary "wss" "ws" (ne $e.ingress.tlsSecretName "")) $e.ingress.domain }}
{{- else }}
{{- printf "%s://$(HOST_IP):%d/ws" $e.hostPort.scheme (int $e.hostPort.port) }}
{{- end }}
{{- end }}

{{/* Scheme of the internal gRPC URLs: https with mutual TLS (grpcTls.enabled). */}}
{{- define "signal-cluster.grpcScheme" -}}
{{- if .Values.grpcTls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* Env entries of the mutual TLS files of a binary: (dict "ctx" $ "prefix" "CENTRAL"). */}}
{{- define "signal-cluster.grpcTlsEnv" -}}
{{- if .ctx.Values.grpcTls.enabled }}
- name: {{ .prefix }}_GRPC_TLS_CERT
  value: /etc/signal/grpc-tls/tls.crt
- name: {{ .prefix }}_GRPC_TLS_KEY
  value: /etc/signal/grpc-tls/tls.key
- name: {{ .prefix }}_GRPC_TLS_CA
  value: /etc/signal/grpc-tls/ca.crt
{{- end }}
{{- end }}

{{- define "signal-cluster.grpcTlsMount" -}}
{{- $tls := .Values.grpcTls.enabled -}}
{{- $ca := and (not .Values.redis.enabled) .Values.redis.external.tlsCaSecret -}}
{{- if or $tls $ca }}
volumeMounts:
{{- if $tls }}
  - name: grpc-tls
    mountPath: /etc/signal/grpc-tls
    readOnly: true
{{- end }}
{{- if $ca }}
  - name: redis-tls-ca
    mountPath: /etc/signal/redis-tls-ca
    readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes: the gRPC TLS secret and, for an external rediss:// Redis, its CA. */}}
{{- define "signal-cluster.grpcTlsVolume" -}}
{{- $tls := .Values.grpcTls.enabled -}}
{{- $ca := and (not .Values.redis.enabled) .Values.redis.external.tlsCaSecret -}}
{{- if or $tls $ca }}
volumes:
{{- if $tls }}
  - name: grpc-tls
    secret:
      secretName: {{ .Values.grpcTls.secretName }}
{{- end }}
{{- if $ca }}
  - name: redis-tls-ca
    secret:
      secretName: {{ $ca }}
      items:
        - key: {{ .Values.redis.external.tlsCaKey }}
          path: ca.pem
{{- end }}
{{- end }}
{{- end }}
