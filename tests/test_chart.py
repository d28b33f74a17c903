"""The Helm chart, rendered and linted by the real Helm library (helm-python-sdk), no cluster.

Rendered for the default values and for each `charts/sparring/ci/*.yaml`. Every object of a
built-in kind is checked against the Kubernetes 1.32 schemas (kubernetes-validate, strict:
unknown fields fail). The Prometheus operator's kinds (ServiceMonitor, PrometheusRule) are not in
those schemas, so they are checked against the minimal hand-written JSON Schemas below: the
fields this chart sets, with their types, and no unknown fields; the default
ClusterSparringRuntime against `RuntimeSpec` and its CRD's schema. Plus drift tests: the CRD
templates against `crdgen.build_crd()` / `build_runtime_crd()`, the README against values.yaml.
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import itertools
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the `dev` extra) is needed")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "sparring"
RELEASE, NAMESPACE = "sparring", "sparring-system"
KUBE_VERSION = "1.32"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
VALUE_SETS = {"default": {}} | {
    f"ci/{p.name}": yaml.safe_load(p.read_text(encoding="utf-8")) for p in CI_FILES
}


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"chart_{name}", CHART / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_readme = _load_script("gen_readme")
sync_crd = _load_script("sync_crd")


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None, **opts: Any) -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt left out), in template order."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True} | opts
    manifests = chart.render(values=copy.deepcopy(values or {}), **opts)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


# ---- the Prometheus operator's kinds: minimal schemas --------------------------------------

_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
_RELABEL_ACTIONS = [
    *("Replace", "Keep", "Drop", "HashMod", "LabelMap", "LabelDrop", "LabelKeep"),
    *("Lowercase", "Uppercase", "KeepEqual", "DropEqual"),
]
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"enum": [*_RELABEL_ACTIONS, *(a.lower() for a in _RELABEL_ACTIONS)]},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
    },
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _STRING_MAP},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "limit": {"type": "integer"},
                            "rules": {"type": "array", "items": _RULE},
                        },
                    },
                },
            },
        },
    },
}
CUSTOM_KIND_SCHEMAS = {
    "ServiceMonitor": SERVICE_MONITOR_SCHEMA,
    "PrometheusRule": PROMETHEUS_RULE_SCHEMA,
}
CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterSparringRuntime"
}  # fmt: skip


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of obj that a structural CRD schema does not declare: what the API server's
    strict field validation (`kubectl apply`) refuses and pydantic's by-name aliases hide."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    children: list[tuple[str, Any, dict[str, Any]]] = []
    if isinstance(obj, dict) and "properties" in schema:
        props = schema["properties"]
        if unknown := [f"{path}.{k}" for k in obj if k not in props]:
            return unknown
        children = [(f"{path}.{k}", v, props[k]) for k, v in obj.items()]
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        children = [(f"{path}.{k}", v, schema["additionalProperties"]) for k, v in obj.items()]
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        children = [(f"{path}[{i}]", v, schema["items"]) for i, v in enumerate(obj)]
    return [problem for where, v, sub in children for problem in unknown_fields(v, sub, where)]


def check_runtime(obj: dict[str, Any]) -> None:
    """A (Cluster)SparringRuntime: what the operator parses, and what its CRD accepts."""
    from openapi_schema_validator import OAS30Validator
    from sparring_operator.crdgen import build_runtime_crd
    from sparring_operator.runtimeapi import RuntimeSpec

    RuntimeSpec.model_validate(obj["spec"])
    crd = build_runtime_crd(cluster=obj["kind"] == "ClusterSparringRuntime")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert obj["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    errors = [e.message for e in OAS30Validator(schema).iter_errors(obj)]
    assert errors == [] and unknown_fields(obj, schema) == [], (errors, unknown_fields(obj, schema))


# ---- render, lint, validate ---------------------------------------------------------------


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_lint_strict_passes(values_name: str) -> None:
    report = helm.lint(
        CHART,
        copy.deepcopy(VALUE_SETS[values_name]),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}.0",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, f"helm lint --strict ({values_name}): {problems}"


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_every_object_passes_its_schema(chart: Any, values_name: str) -> None:
    objects = render(chart, VALUE_SETS[values_name])
    assert objects
    for obj in objects:
        where = f"{values_name}: {obj['kind']} {obj['metadata']['name']}"
        schema = CUSTOM_KIND_SCHEMAS.get(obj["kind"])
        try:
            if obj["kind"] == "ClusterSparringRuntime":
                check_runtime(obj)
            elif schema is not None:
                jsonschema.validate(obj, schema)
            else:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            pytest.fail(f"{where}: {exc.message}")
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace"), f"{where}: no explicit namespace"


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_deployment_is_one_recreated_restricted_replica(chart: Any, values_name: str) -> None:
    values = VALUE_SETS[values_name]
    objects = render(chart, values)
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # kopf has no leader election
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in volumes[tmp[0]["name"]]
    assert container["resources"]["requests"] and container["resources"]["limits"]

    args = container["args"]
    watched = values.get("watchNamespaces", [])
    assert args[0] == "operator"
    if watched:
        assert [a for a in args if a.startswith("--namespace=")] == [
            f"--namespace={ns}" for ns in watched
        ]
        assert "--all-namespaces" not in args
    else:
        assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert "--metrics-port=8000" in args
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert ports["metrics"] == 8000

    env = {e["name"]: e.get("value") for e in container["env"]}
    trainer = values.get("trainerImage", {})
    expected_image = (
        f"{trainer.get('repository', 'ghcr.io/sparring-dev/sparring-trainer')}:"
        f"{trainer.get('tag') or '0.1.0'}"
    )
    assert env["SPARRING_TRAINER_IMAGE"] == expected_image
    phase_accounts = [
        sa for sa in by_kind(objects, "ServiceAccount") if sa["metadata"]["name"].endswith("-phase")
    ]
    if phase_accounts:
        assert {sa["metadata"]["name"] for sa in phase_accounts} == {
            env["SPARRING_PHASE_SERVICE_ACCOUNT"]
        }
        assert all(sa["automountServiceAccountToken"] is False for sa in phase_accounts)
        wanted = values.get("phaseServiceAccount", {}).get("namespaces") or watched
        assert sorted(sa["metadata"]["namespace"] for sa in phase_accounts) == sorted(wanted)
    else:  # no game namespace known: the pods use their namespace's default account
        assert "SPARRING_PHASE_SERVICE_ACCOUNT" not in env
    assert env["SPARRING_DEFAULT_RUNTIME"] == values.get("defaultRuntime", {}).get(
        "name", "default"
    )


def test_default_values_render_the_core_pieces_only(chart: Any) -> None:
    kinds = sorted(o["kind"] for o in render(chart))
    assert kinds == sorted(
        [
            *["CustomResourceDefinition"] * 3,  # games, runtimes, cluster runtimes
            "ClusterSparringRuntime",  # the default runtime
            "Deployment",
            "ServiceAccount",
            "Service",
            "ClusterRole",
            "ClusterRoleBinding",
        ]
    )


def test_ci_values_turn_on_every_optional_piece(chart: Any) -> None:
    rendered = {
        name: {o["kind"] for o in render(chart, values)} for name, values in VALUE_SETS.items()
    }
    everything = set().union(*rendered.values())
    optional = {
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
    }
    assert optional <= everything, optional - everything
    assert optional - {"Role", "RoleBinding"} <= rendered["ci/ci-values.yaml"]
    assert {"Role", "RoleBinding"} <= rendered["ci/namespaced-values.yaml"]


def test_namespace_scope_grants_roles_in_each_watched_namespace_only(chart: Any) -> None:
    values = VALUE_SETS["ci/namespaced-values.yaml"]
    objects = render(chart, values)
    roles = by_kind(objects, "Role")
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(values["watchNamespaces"])
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(values["watchNamespaces"])
    account = one(by_kind(objects, "Deployment"), "Deployment")["spec"]["template"]["spec"][
        "serviceAccountName"
    ]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
        ]
        assert binding["roleRef"]["kind"] == "Role"
    # Cluster-wide, only kopf's read-only observation of cluster-scoped kinds, and reading
    # the cluster-scoped runtimes.
    for cluster_role in by_kind(objects, "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert rule in (RUNTIME_READ, *OBSERVE), rule
    without = render(chart, {**values, "rbac": {"scope": "namespace"}})
    assert [r["rules"] for r in by_kind(without, "ClusterRole")] == [[RUNTIME_READ]]
    (binding,) = by_kind(without, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]


RUNTIME_READ = {
    "apiGroups": ["sparring.dev"], "resources": ["clustersparringruntimes"], "verbs": ["get"]
}  # fmt: skip
OBSERVE = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]  # fmt: skip


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_the_operator_may_get_both_runtime_kinds(chart: Any, scope: str) -> None:
    """Games name a SparringRuntime (in their namespace) or a ClusterSparringRuntime; the
    operator reads the one named with a GET, in either RBAC scope."""
    objects = render(chart, {"rbac": {"scope": scope}, "watchNamespaces": ["team-a"]})
    roles = by_kind(objects, "ClusterRole" if scope == "cluster" else "Role")
    cluster_rules = [rule for role in by_kind(objects, "ClusterRole") for rule in role["rules"]]
    for role in roles:
        namespaced = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
                      for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
        assert ("sparring.dev", "sparringruntimes", "get") in namespaced
    assert RUNTIME_READ in cluster_rules
    bound = {b["roleRef"]["name"] for b in by_kind(objects, "ClusterRoleBinding")}
    assert {r["metadata"]["name"] for r in by_kind(objects, "ClusterRole")} == bound


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rbac": {"scope": "namespace"}}, "needs watchNamespaces"),
        ({"rbac": {"scope": "everywhere"}}, "rbac.scope must be"),
        ({"watchNamespaces": "team-a"}, "watchNamespaces must be a list of namespace names"),
        ({"watchNamespaces": ["team-a", "team-a"]}, "watchNamespaces lists a namespace twice"),
    ],
)
def test_values_that_cannot_work_fail_with_the_fix(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(chart, values)


NOT_A_NAMESPACE = ["team-*", "!kube-system", "team-?", "Team-A", "team_a", "-team", "a" * 64, 7]


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
@pytest.mark.parametrize("name", NOT_A_NAMESPACE, ids=str)
@pytest.mark.parametrize(
    "key",
    ["watchNamespaces", "phaseServiceAccount.namespaces", "monitoring.dashboard.namespace"],
)
def test_a_value_that_is_no_namespace_name_fails_naming_it(
    chart: Any, key: str, name: Any, scope: str
) -> None:
    """Each of these is rendered into metadata.namespace, which the API server only accepts
    as a DNS-1123 label (tests/e2e/test_chart_on_apiserver.py): kopf's globs cannot be."""
    values: dict[str, Any] = {"rbac": {"scope": scope}, "watchNamespaces": ["team-a"]}
    if key == "watchNamespaces":
        values["watchNamespaces"] = ["team-a", name]
        index = "[1]"
    elif key == "phaseServiceAccount.namespaces":
        values["phaseServiceAccount"] = {"namespaces": [name]}
        index = "[0]"
    else:
        values["monitoring"] = {"dashboard": {"enabled": True, "namespace": name}}
        index = ""
    expected = f"{key}{index} = {json.dumps(name)} is not a namespace name"
    with pytest.raises(helm.HelmError, match=re.escape(expected)) as failed:
        render(chart, values)
    assert "Globs and patterns are not supported" in str(failed.value)


@pytest.mark.parametrize("name", ["team-a", "a", "0", "a" * 63, "kube-system"])
def test_every_dns_label_is_a_namespace_name(chart: Any, name: str) -> None:
    for scope in ("cluster", "namespace"):
        objects = render(chart, {"rbac": {"scope": scope}, "watchNamespaces": [name]})
        namespaces = {o["metadata"].get("namespace") for o in objects} - {None, NAMESPACE}
        assert namespaces == {name}


# ---- least privilege: the documented install, and what NOTES says -------------------------


def _first_helm_install(markdown: str) -> list[str]:
    """The words of the first `helm install` command of a markdown file's bash blocks."""
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        command = re.sub(r"\\\n\s*", " ", block)
        for line in command.splitlines():
            if line.startswith("helm install"):
                return shlex.split(line.split("#")[0])
    raise AssertionError("no `helm install` in a bash block")


def _set_values(words: list[str]) -> dict[str, Any]:
    """The values of `--set key=value` words (the forms the READMEs use: a scalar, `{a,b}`)."""
    values: dict[str, Any] = {}
    for flag, arg in itertools.pairwise(words):
        if flag != "--set":
            continue
        key, _, raw = arg.partition("=")
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = raw[1:-1].split(",") if raw.startswith("{") else raw
    return values


@pytest.mark.parametrize("readme", ["README.md", "charts/sparring/README.md"])
def test_the_documented_install_is_the_least_privilege_one(chart: Any, readme: str) -> None:
    words = _first_helm_install((ROOT / readme).read_text(encoding="utf-8"))
    values = _set_values(words)
    assert values.get("watchNamespaces"), f"{readme}: the first install lists no namespaces"
    objects = render(chart, values)
    # Secrets and Jobs only through Roles in the listed namespaces; cluster-wide only the read
    # of the (cluster-scoped) runtimes.
    assert [r["rules"] for r in by_kind(objects, "ClusterRole")] == [[RUNTIME_READ]]
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(values["watchNamespaces"])
    for role in roles:
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert {"secrets", "jobs"} <= resources


def _notes(chart: Any, values: dict[str, Any]) -> str:
    manifests = chart.render(
        values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def test_notes_tell_a_cluster_wide_install_how_to_narrow_it(chart: Any) -> None:
    default = _notes(chart, {})
    assert "read Secrets and create\nJobs in every namespace" in default
    assert "--set rbac.scope=namespace --set 'watchNamespaces={team-a,team-b}'" in default
    listed = _notes(chart, {"watchNamespaces": ["team-a"]})
    assert "--set rbac.scope=namespace\n" in listed and "watchNamespaces={" not in listed
    narrow = _notes(chart, VALUE_SETS["ci/namespaced-values.yaml"])
    assert "Least privilege" not in narrow
    assert not default.startswith("\n")


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_names_stay_within_63_characters(chart: Any, values_name: str) -> None:
    long = "a-very-long-release-name-that-goes-on-and-on-and-on-xx"[:53]  # Helm's maximum
    values = {**VALUE_SETS[values_name], "nameOverride": "sparring-" + "x" * 60}
    for obj in render(chart, values, name=long):
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]


def test_fullname_override_is_truncated_to_63(chart: Any) -> None:
    full = render(chart, {"fullnameOverride": "f" * 80})
    assert one(full, "Deployment")["metadata"]["name"] == "f" * 63


def test_metrics_service_servicemonitor_and_networkpolicy_select_the_operator(chart: Any) -> None:
    objects = render(chart, VALUE_SETS["ci/ci-values.yaml"])
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}
    ]
    monitor = one(objects, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    # The alerts and the dashboard select job="sparring-operator", whatever the release name.
    assert {"action": "replace", "targetLabel": "job", "replacement": "sparring-operator"} in (
        endpoint["relabelings"]
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    (policy,) = [
        p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["namespace"] == NAMESPACE
    ]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    egress_ports = {
        (p["port"], p["protocol"])
        for rule in policy["spec"]["egress"]
        for p in rule.get("ports", [])
    }
    assert {(443, "TCP"), (6443, "TCP"), (53, "UDP"), (53, "TCP"), (9000, "TCP")} <= egress_ports


def test_prometheus_rule_is_the_rules_file_plus_extra_rules(chart: Any) -> None:
    values = VALUE_SETS["ci/ci-values.yaml"]
    rule = one(render(chart, values), "PrometheusRule")
    groups = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())["groups"]
    extra = {
        "name": "sparring.extra",
        "rules": values["monitoring"]["prometheusRule"]["extraRules"],
    }
    assert rule["spec"]["groups"] == [*(groups or []), extra]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    plain = one(
        render(chart, {"monitoring": {"prometheusRule": {"enabled": True}}}), "PrometheusRule"
    )
    assert plain["spec"]["groups"] == (groups or [])


def test_dashboard_configmap_holds_the_dashboard_for_the_grafana_sidecar(chart: Any) -> None:
    values = VALUE_SETS["ci/ci-values.yaml"]
    configmap = one(render(chart, values), "ConfigMap")
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert json.loads(configmap["data"]["sparring.json"]) == dashboard
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "ML"
    assert configmap["metadata"]["namespace"] == "monitoring"
    relabelled = render(
        chart,
        {
            "monitoring": {
                "dashboard": {
                    "enabled": True,
                    "label": "grafana.io/dashboard",
                    "labelValue": "sparring",
                }
            }
        },
    )
    configmap = one(relabelled, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana.io/dashboard"] == "sparring"
    assert "annotations" not in configmap["metadata"]


# ---- the CRD -------------------------------------------------------------------------------


def _generated(kind: str) -> dict[str, Any]:
    from sparring_operator.crdgen import build_crd, build_runtime_crd

    if kind == "AdversarialGame":
        return build_crd()
    return build_runtime_crd(cluster=kind == "ClusterSparringRuntime")


def _crd_of(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (crd,) = [
        o for o in by_kind(objects, "CustomResourceDefinition")
        if o["spec"]["names"]["kind"] == kind
    ]  # fmt: skip
    return crd


@pytest.mark.parametrize("kind", list(sync_crd.TEMPLATES))
def test_crd_template_matches_the_generated_crd(chart: Any, kind: str) -> None:
    fix = f"the chart's CRD differs from `sparring crd --kind {kind}`; run: {sync_crd.COMMAND}"
    crd = _crd_of(render(chart), kind)
    metadata = crd["metadata"]
    assert metadata.pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert metadata.pop("labels")["app.kubernetes.io/component"] == "crd"
    assert crd == _generated(kind), fix
    template = sync_crd.TEMPLATES[kind].read_text(encoding="utf-8")
    assert template == sync_crd.render_template(sync_crd.generated_crd(kind)), fix
    assert sync_crd.main(["--check"]) == 0


@pytest.mark.parametrize("kind", list(sync_crd.TEMPLATES))
def test_crd_is_gated_and_kept_on_uninstall_only_when_asked(chart: Any, kind: str) -> None:
    assert not by_kind(render(chart, {"crds": {"enabled": False}}), "CustomResourceDefinition")
    loose = _crd_of(render(chart, {"crds": {"keep": False}}), kind)
    assert "annotations" not in loose["metadata"]
    argo = {"argocd.argoproj.io/sync-options": "Delete=false,Prune=false"}
    kept = _crd_of(render(chart, {"crds": {"annotations": argo}}), kind)
    assert kept["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep", **argo}


# ---- the default runtime -------------------------------------------------------------------


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_default_runtime_is_a_valid_cluster_runtime_with_the_chart_defaults(
    chart: Any, values_name: str
) -> None:
    from sparring_operator.runtimeapi import RuntimeSpec

    values = VALUE_SETS[values_name]
    objects = render(chart, values)
    env = {
        e["name"]: e.get("value")
        for e in one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    wanted = values.get("defaultRuntime", {})
    if wanted.get("create", True) is False:  # a runtime the platform team manages
        assert not by_kind(objects, "ClusterSparringRuntime")
        assert env["SPARRING_DEFAULT_RUNTIME"] == wanted["name"]
        return
    runtime = one(objects, "ClusterSparringRuntime")
    assert runtime["metadata"]["name"] == env["SPARRING_DEFAULT_RUNTIME"]
    # A hook, created after its CRD: Helm cannot map a kind whose CRD the release creates.
    assert runtime["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    spec = RuntimeSpec.model_validate(runtime["spec"])
    check_runtime(runtime)
    if wanted.get("images"):
        assert spec.images == wanted["images"]
    else:
        assert spec.images == [env["SPARRING_TRAINER_IMAGE"]]
    assert spec.service_account_name == (
        wanted.get("serviceAccountName") or env.get("SPARRING_PHASE_SERVICE_ACCOUNT")
    )
    assert spec.overridable == wanted.get("overridable", ["resources", "scheduling"])
    assert spec.allowed_model_sources == wanted.get("allowedModelSources")


def test_default_runtime_writes_only_what_is_set(chart: Any) -> None:
    values = {"phaseServiceAccount": {"namespaces": ["team-a"]}}
    runtime = one(render(chart, values), "ClusterSparringRuntime")
    assert runtime["spec"] == {
        "images": ["ghcr.io/sparring-dev/sparring-trainer:0.1.0"],
        "imagePullPolicy": "Always",
        "serviceAccountName": "sparring-phase",
        "overridable": ["resources", "scheduling"],
    }
    values["defaultRuntime"] = {
        "storage": {"uri": "s3://games", "pathStyle": True}, "allowedModelSources": [],
        "overridable": [],
    }  # fmt: skip
    spec = one(render(chart, values), "ClusterSparringRuntime")["spec"]
    assert spec["storage"] == {"uri": "s3://games", "pathStyle": True}
    assert spec["allowedModelSources"] == [] and spec["overridable"] == []  # none, not unset


def test_no_default_runtime_when_its_name_is_empty(chart: Any) -> None:
    objects = render(chart, {"defaultRuntime": {"name": ""}})
    assert not by_kind(objects, "ClusterSparringRuntime")
    env = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "SPARRING_DEFAULT_RUNTIME" not in {e["name"] for e in env}
    # ... and then a game must name its runtime: never the operator's built-in, open one.
    assert {"name": "SPARRING_REQUIRE_RUNTIME", "value": "1"} in env


# ---- the phase pods' NetworkPolicy ---------------------------------------------------------

LINK_LOCAL = [ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10")]
PHASE_POD = {
    "app.kubernetes.io/component": "phase",
    "app.kubernetes.io/managed-by": "sparring-operator",
}


def _phase_policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p for p in by_kind(objects, "NetworkPolicy")
        if p["metadata"]["labels"]["app.kubernetes.io/component"] == "phase"
    ]  # fmt: skip


def _ip_blocks(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        peer["ipBlock"]
        for rule in policy["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_phase_network_policy_per_phase_namespace_never_reaches_cloud_metadata(
    chart: Any, values_name: str
) -> None:
    values = VALUE_SETS[values_name]
    objects = render(chart, values)
    policies = _phase_policies(objects)
    phase_accounts = [
        sa for sa in by_kind(objects, "ServiceAccount") if sa["metadata"]["name"].endswith("-phase")
    ]
    assert sorted(p["metadata"]["namespace"] for p in policies) == sorted(
        sa["metadata"]["namespace"] for sa in phase_accounts
    )
    if values.get("phaseNetworkPolicy", {}).get("enabled"):
        assert policies
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"] == {"matchLabels": PHASE_POD}
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        # In: only the other phase pods of the namespace (the ranks of a multi-node phase).
        assert spec["ingress"] == [{"from": [{"podSelector": {"matchLabels": PHASE_POD}}]}]
        assert {"to": [{"podSelector": {"matchLabels": PHASE_POD}}]} in spec["egress"]
        blocks = _ip_blocks(policy)
        assert blocks
        for block in blocks:
            cidr = ipaddress.ip_network(block["cidr"])
            [link_local] = [n for n in LINK_LOCAL if n.version == cidr.version]
            if cidr.overlaps(link_local):  # the except is valid only inside the cidr
                assert block["except"] == [str(link_local)], block
            else:
                assert "except" not in block, block


def test_phase_network_policy_defaults_to_any_address_but_link_local(chart: Any) -> None:
    values = {"watchNamespaces": ["team-a"], "phaseNetworkPolicy": {"enabled": True}}
    (policy,) = _phase_policies(render(chart, values))
    assert policy["metadata"]["namespace"] == "team-a"
    any_but_metadata = [
        {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]},
        {"cidr": "::/0", "except": ["fe80::/10"]},
    ]
    assert _ip_blocks(policy) == any_but_metadata * 2  # the store, the model sources
    ports = [r.get("ports") for r in policy["spec"]["egress"]]
    assert [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}] in ports
    assert ports.count([{"port": 443, "protocol": "TCP"}]) == 2
    assert not _phase_policies(render(chart, {"watchNamespaces": ["team-a"]}))


def test_a_phase_network_policy_with_no_namespace_to_go_to_fails_to_render(chart: Any) -> None:
    with pytest.raises(helm.HelmError, match=r"phaseNetworkPolicy\.enabled: no namespace"):
        render(chart, {"phaseNetworkPolicy": {"enabled": True}})  # every namespace: unknown
    # Without the chart's phase ServiceAccount it still goes where the games are.
    values = {
        "watchNamespaces": ["team-a", "team-b"],
        "phaseServiceAccount": {"create": False},
        "phaseNetworkPolicy": {"enabled": True},
    }
    policies = _phase_policies(render(chart, values))
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]


@pytest.mark.parametrize(
    "cidr", ["169.254.169.254/32", "169.254.0.0/16", "fe80::1/64", "febf::/16"]
)
def test_a_cidr_inside_link_local_fails_naming_it(chart: Any, cidr: str) -> None:
    values = {
        "watchNamespaces": ["team-a"],
        "phaseNetworkPolicy": {"enabled": True, "models": {"cidrs": ["10.0.0.0/8", cidr]}},
    }
    expected = f'phaseNetworkPolicy.models.cidrs[1] = "{cidr}" lies inside'
    with pytest.raises(helm.HelmError, match=re.escape(expected)):
        render(chart, values)


# ---- the README ----------------------------------------------------------------------------


def test_every_values_key_has_a_helm_docs_comment() -> None:
    missing = gen_readme.undocumented((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert not missing, f"values.yaml keys without a `# --` comment: {missing}"


def test_readme_is_generated_from_values() -> None:
    current = (CHART / "README.md").read_text(encoding="utf-8")
    assert current == gen_readme.render(), (
        f"charts/sparring/README.md is out of date; run: {gen_readme.COMMAND}"
    )
