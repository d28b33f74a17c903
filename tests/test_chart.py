"""The Helm chart, rendered and linted by the real Helm library (helm-python-sdk), no cluster.

Rendered for the default values and for each `charts/sparring/ci/*.yaml`. Every object of a
built-in kind is checked against the Kubernetes 1.32 schemas (kubernetes-validate, strict:
unknown fields fail). The Prometheus operator's kinds (ServiceMonitor, PrometheusRule) are not in
those schemas, so they are checked against the minimal hand-written JSON Schemas below: the
fields this chart sets, with their types, and no unknown fields. Plus drift tests: the CRD
template against `crdgen.build_crd()`, the README against values.yaml.
"""

from __future__ import annotations

import copy
import importlib.util
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
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


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
            if schema is not None:
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


def test_default_values_render_the_core_pieces_only(chart: Any) -> None:
    kinds = sorted(o["kind"] for o in render(chart))
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
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
    # Cluster-wide, only kopf's read-only observation of cluster-scoped kinds.
    for cluster_role in by_kind(objects, "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert set(rule["verbs"]) <= {"list", "watch"}
            assert set(rule["resources"]) <= {"customresourcedefinitions", "namespaces"}
    without = render(chart, {**values, "rbac": {"scope": "namespace"}})
    assert not by_kind(without, "ClusterRole") and not by_kind(without, "ClusterRoleBinding")


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
    # Secrets and Jobs only through Roles in the listed namespaces; nothing cluster-wide.
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
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

    policy = one(objects, "NetworkPolicy")
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


def test_crd_template_matches_the_generated_crd(chart: Any) -> None:
    from sparring_operator.crdgen import build_crd

    fix = f"the chart's CRD differs from `sparring crd`; run: {sync_crd.COMMAND}"
    crd = one(render(chart), "CustomResourceDefinition")
    metadata = crd["metadata"]
    assert metadata.pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert metadata.pop("labels")["app.kubernetes.io/component"] == "crd"
    assert crd == build_crd(), fix
    template = sync_crd.TEMPLATE.read_text(encoding="utf-8")
    assert template == sync_crd.render_template(sync_crd.generated_crd()), fix


def test_crd_is_gated_and_kept_on_uninstall_only_when_asked(chart: Any) -> None:
    assert not by_kind(render(chart, {"crds": {"enabled": False}}), "CustomResourceDefinition")
    loose = one(render(chart, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in loose["metadata"]
    argo = {"argocd.argoproj.io/sync-options": "Delete=false,Prune=false"}
    kept = one(render(chart, {"crds": {"annotations": argo}}), "CustomResourceDefinition")
    assert kept["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep", **argo}


# ---- the README ----------------------------------------------------------------------------


def test_every_values_key_has_a_helm_docs_comment() -> None:
    missing = gen_readme.undocumented((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert not missing, f"values.yaml keys without a `# --` comment: {missing}"


def test_readme_is_generated_from_values() -> None:
    current = (CHART / "README.md").read_text(encoding="utf-8")
    assert current == gen_readme.render(), (
        f"charts/sparring/README.md is out of date; run: {gen_readme.COMMAND}"
    )
