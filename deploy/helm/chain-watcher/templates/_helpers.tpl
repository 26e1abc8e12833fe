{{/* Names and labels shared by every object of the chart. */}}
{{- define "chain-watcher.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chain-watcher.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chain-watcher.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "chain-watcher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "chain-watcher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chain-watcher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chain-watcher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chain-watcher.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The watcher's configuration for one chain: the shared config plus that chain only.
     Called with (dict "root" $ "id" <chain id> "chain" <chain values>). */}}
{{- define "chain-watcher.chainConfig" -}}
{{- $cfg := deepCopy .root.Values.config -}}
{{- $_ := set $cfg "chains" (dict .id .chain.config) -}}
{{- if .root.Values.drain.setConfigKey -}}
{{- $_ := set $cfg "shutdown_grace_s" (int .root.Values.drain.graceSeconds) -}}
{{- end -}}
{{- /* JSON (a YAML subset) so every string stays quoted: toYaml would leave a token contract
       such as 0xA0b8... bare, which YAML readers take for a hexadecimal integer. */ -}}
{{- toPrettyJson $cfg -}}
{{- end -}}

{{- define "chain-watcher.replicas" -}}
{{- if hasKey . "replicas" -}}{{ int .replicas }}{{- else -}}1{{- end -}}
{{- end -}}
