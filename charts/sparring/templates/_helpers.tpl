{{/*
The chart name, at most 63 characters (a DNS label).
*/}}
{{- define "sparring.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: release name + chart name (the release name alone when it contains the chart
name), at most 63 characters.
*/}}
{{- define "sparring.fullname" -}}
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

{{/*
The full name with a suffix ("metrics" -> "<fullname>-metrics"), still at most 63 characters.
Call as: include "sparring.fullnameWith" (list . "metrics")
*/}}
{{- define "sparring.fullnameWith" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $stem := include "sparring.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $stem $suffix }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "sparring.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource of the release.
*/}}
{{- define "sparring.labels" -}}
helm.sh/chart: {{ include "sparring.chart" . }}
{{ include "sparring.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sparring
{{- end }}

{{/*
Selector labels. Phase Jobs carry app.kubernetes.io/name=sparring too, but never the instance
label, so these never select them.
*/}}
{{- define "sparring.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sparring.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the operator pod.
*/}}
{{- define "sparring.operatorSelectorLabels" -}}
{{ include "sparring.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "sparring.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sparring.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Namespaces the chart creates the phase ServiceAccount in (a JSON list).
*/}}
{{- define "sparring.phaseNamespaces" -}}
{{- if not .Values.phaseServiceAccount.create }}
{{- list | toJson }}
{{- else }}
{{- default .Values.watchNamespaces .Values.phaseServiceAccount.namespaces | default list | uniq | toJson }}
{{- end }}
{{- end }}

{{/*
The phase pods' ServiceAccount, or "" when none is known to exist in the game namespaces
(the pods then run as their namespace's default ServiceAccount, with no token mounted).
*/}}
{{- define "sparring.phaseServiceAccountName" -}}
{{- if .Values.phaseServiceAccount.create }}
{{- if include "sparring.phaseNamespaces" . | fromJsonArray }}
{{- default (include "sparring.fullnameWith" (list . "phase")) .Values.phaseServiceAccount.name }}
{{- end }}
{{- else }}
{{- .Values.phaseServiceAccount.name }}
{{- end }}
{{- end }}

{{/*
Images; the tags default to the chart's appVersion.
*/}}
{{- define "sparring.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "sparring.trainerImage" -}}
{{- printf "%s:%s" .Values.trainerImage.repository (default .Chart.AppVersion .Values.trainerImage.tag) }}
{{- end }}

{{/*
Fail on values that cannot work, with the fix in the message.
*/}}
{{- define "sparring.validate" -}}
{{- include "sparring.validateNamespaces" (list "watchNamespaces" .Values.watchNamespaces) }}
{{- include "sparring.validateNamespaces" (list "phaseServiceAccount.namespaces" .Values.phaseServiceAccount.namespaces) }}
{{- with .Values.monitoring.dashboard.namespace }}
{{- include "sparring.validateNamespace" (list "monitoring.dashboard.namespace" .) }}
{{- end }}
{{- if not (has .Values.rbac.scope (list "cluster" "namespace")) }}
{{- fail (printf "rbac.scope must be \"cluster\" or \"namespace\", not %q" .Values.rbac.scope) }}
{{- end }}
{{- if and (eq .Values.rbac.scope "namespace") (not .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespace needs watchNamespaces: the namespaces to create a Role in" }}
{{- end }}
{{- end }}

{{/*
A list of namespace names, each rendered into metadata.namespace of some object: no globs, no
duplicates. Call as: include "sparring.validateNamespaces" (list "the.values.key" $list)
*/}}
{{- define "sparring.validateNamespaces" -}}
{{- $key := index . 0 }}
{{- $names := index . 1 | default list }}
{{- if not (kindIs "slice" $names) }}
{{- fail (printf "%s must be a list of namespace names, not %s (with --set: '%s={team-a,team-b}')" $key (toJson $names) $key) }}
{{- end }}
{{- range $i, $name := $names }}
{{- include "sparring.validateNamespace" (list (printf "%s[%d]" $key $i) $name) }}
{{- end }}
{{- if ne (len $names) (len (uniq $names)) }}
{{- fail (printf "%s lists a namespace twice: %s" $key (toJson $names)) }}
{{- end }}
{{- end }}

{{/*
One namespace name: a DNS-1123 label, as the API server requires. kopf would take a glob
("team-*") or a negation ("!kube-system") for --namespace, but the chart also renders Roles,
RoleBindings and the phase ServiceAccount into each listed namespace, and a glob is no
namespace: refuse it here rather than at install time with an API server error.
Call as: include "sparring.validateNamespace" (list "the.values.key" $name)
*/}}
{{- define "sparring.validateNamespace" -}}
{{- $key := index . 0 }}
{{- $name := index . 1 }}
{{- if not (and (kindIs "string" $name) (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name) (le (len $name) 63)) }}
{{- fail (printf "%s = %s is not a namespace name: it must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters). Globs and patterns are not supported: list each namespace, or leave watchNamespaces empty to watch every namespace (rbac.scope=cluster)" $key (toJson $name)) }}
{{- end }}
{{- end }}

{{/*
The operator's RBAC rules on namespaced resources: exactly the calls of
operator/sparring_operator/{handlers,reconcile}.py and of kopf (tests/test_rbac.py checks both
ways against a recorded run). Shared by the ClusterRole and the per-namespace Roles.
*/}}
{{- define "sparring.namespacedRules" -}}
# The games: kopf lists and watches them and patches its annotations onto them; the Job
# handler reads a Job's game; reconcile writes the status subresource.
- apiGroups: ["sparring.dev"]
  resources: ["adversarialgames"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["sparring.dev"]
  resources: ["adversarialgames/status"]
  verbs: ["patch"]
# The SparringRuntime a game names in spec.runtimeRef (in the game's own namespace): read when
# the game's phases are built.
- apiGroups: ["sparring.dev"]
  resources: ["sparringruntimes"]
  verbs: ["get"]
# Jobs and ConfigMaps point at their game with blockOwnerDeletion (kopf.adopt): with the
# OwnerReferencesPermissionEnforcement admission plugin that needs update on the owner's
# finalizers (no finalizer is ever written; the check is on the right to).
- apiGroups: ["sparring.dev"]
  resources: ["adversarialgames/finalizers"]
  verbs: ["update"]
# Phase Jobs: observed by label (list + kopf's watch), created per attempt (get: one holding
# the name is read to tell ours from an earlier game's), patched to end an attempt whose pod
# never started, deleted on suspend, deadline or a shrunk spec.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Phase pods: watched, so that the next phase starts as soon as one exits; a finished Job's
# pods: their termination message is the phase's summary or error; a waiting Job's pods: why
# they do not start (unschedulable, image not pullable, missing Secret).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# A multi-node attempt's headless Service: its pods find pod 0 (torchrun's rendezvous) by name.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
# The game ConfigMap mounted into phase pods, kept in step with the spec.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "patch"]
# The store credentials named by spec.storage.secretRef (read to observe the store's markers).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# PhaseStarted/PhaseSucceeded/... Events on the games (and kopf's warnings); list: a Job whose
# pods cannot be created says why only in the Job controller's FailedCreate events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end }}

{{/*
Cluster-scoped reads of kopf: CRDs (always: it notices CRD changes at run time) and namespaces
(only when it watches listed namespaces rather than the whole cluster).
*/}}
{{- define "sparring.clusterRules" -}}
# kopf: CRD list/watch, to notice a CRD being added, changed or removed at run time.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# kopf with --namespace: namespace list/watch, to match its patterns against live namespaces.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}


{{/*
The read of ClusterSparringRuntimes (cluster-scoped: no Role can grant it): the runtime a game
names in spec.runtimeRef, or the default one (SPARRING_DEFAULT_RUNTIME). Only get: the operator
reads the one runtime a game names, it never lists them.
*/}}
{{- define "sparring.runtimeRules" -}}
- apiGroups: ["sparring.dev"]
  resources: ["clustersparringruntimes"]
  verbs: ["get"]
{{- end }}

{{/*
NetworkPolicy peers: one ipBlock per CIDR; an empty list means any address (0.0.0.0/0 and ::/0).
Each block that contains the link-local range (169.254.0.0/16, fe80::/10: the cloud metadata
endpoint 169.254.169.254 and its kin) excepts it, so a phase pod never gets the node's cloud
credentials whatever CIDR is given. Call as:
include "sparring.ipBlocks" (list "the.values.key" $cidrs)
*/}}
{{- define "sparring.ipBlocks" -}}
{{- $key := index . 0 }}
{{- $cidrs := index . 1 | default (list "0.0.0.0/0" "::/0") }}
{{- range $i, $cidr := $cidrs }}
{{- $except := include "sparring.linkLocalExcept" (list (printf "%s[%d]" $key $i) (toString $cidr)) }}
- ipBlock:
    cidr: {{ $cidr | quote }}
    {{- with $except }}
    except:
      - {{ . | quote }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
The link-local range a CIDR must except: "169.254.0.0/16" or "fe80::/10" when the CIDR contains
it, "" when they do not overlap; fails when the CIDR lies inside it (an ipBlock's except must be
a strict subset of its cidr, and such a block could only reach the metadata endpoint).
Compares the first min(prefix, 16) bits (IPv4) or min(prefix, 10) bits (IPv6, first hextet).
Call as: include "sparring.linkLocalExcept" (list "the.values.key[0]" $cidr)
*/}}
{{- define "sparring.linkLocalExcept" -}}
{{- $key := index . 0 }}
{{- $cidr := index . 1 }}
{{- if not (regexMatch "^([0-9]{1,3}(\\.[0-9]{1,3}){3}|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*)/[0-9]{1,3}$" $cidr) }}
{{- fail (printf "%s = %q is not a CIDR (address/prefix length)" $key $cidr) }}
{{- end }}
{{- $addr := index (splitList "/" $cidr) 0 }}
{{- $prefix := index (splitList "/" $cidr) 1 | atoi }}
{{- $value := 0 }}{{- $bits := 0 }}{{- $range := "" }}{{- $rangeValue := 0 }}{{- $rangeBits := 0 }}
{{- if contains ":" $addr }}
{{- /* IPv6: fe80::/10 is decided by the first hextet ("" when the address starts with "::"). */}}
{{- $digits := dict "0" 0 "1" 1 "2" 2 "3" 3 "4" 4 "5" 5 "6" 6 "7" 7 "8" 8 "9" 9 "a" 10 "b" 11 "c" 12 "d" 13 "e" 14 "f" 15 }}
{{- range $c := splitList "" (first (splitList ":" (lower $addr))) }}
{{- $value = add (mul $value 16) (get $digits $c) }}
{{- end }}
{{- $bits = 16 }}{{- $range = "fe80::/10" }}{{- $rangeValue = 65152 }}{{- $rangeBits = 10 }}
{{- else }}
{{- range $octet := splitList "." $addr }}
{{- $value = add (mul $value 256) (atoi $octet) }}
{{- end }}
{{- $bits = 32 }}{{- $range = "169.254.0.0/16" }}{{- $rangeValue = 2851995648 }}{{- $rangeBits = 16 }}
{{- end }}
{{- $divisor := 1 }}
{{- range until (int (sub $bits (min $prefix $rangeBits))) }}
{{- $divisor = mul $divisor 2 }}
{{- end }}
{{- if eq (div $value $divisor) (div $rangeValue $divisor) }}
{{- if ge $prefix $rangeBits }}
{{- fail (printf "%s = %q lies inside %s (link-local: the cloud metadata endpoint), which phase pods must never reach" $key $cidr $range) }}
{{- end }}
{{- $range }}
{{- end }}
{{- end }}

{{/*
Labels the operator puts on every phase pod (operator/sparring_operator/jobs.py _base_labels).
*/}}
{{- define "sparring.phasePodLabels" -}}
app.kubernetes.io/component: phase
app.kubernetes.io/managed-by: sparring-operator
{{- end }}
