"""The chart's RBAC rules against the API calls a running operator really makes.

The operator runs as a process against the real API server (tests/harness), authenticated as
the chart's ServiceAccount under the chart's own namespaced RBAC, plays the first phases of a
one-round game stored in moto S3, reads a finished Job's pod, is made to suspend the game
(deleting its running Job) and sees the game deleted. The API server's audit log records every
request of that ServiceAccount with the RBAC verb it checked; a call the chart does not allow
is refused (403) there, and still recorded. Its requests are those of kopf (`kopf/...`) and of
the official client in reconcile (`OpenAPI-Generator/...`).

Then, both ways: every call is allowed by the chart's rules, and every rule is used by some
call (or is listed in NOT_EXERCISED with the reason).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.gameops import Operator, apo_tiny, create_secret
from harness.rawclient import wait_for
from kubernetes import client as k8s
from sparring_trainer.document import StorageSpec

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the `dev` extra) is needed")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "sparring"
GROUP, VERSION, PLURAL = "sparring.dev", "v1alpha1", "adversarialgames"
GAME = "apo-tiny"
LABEL = "sparring.dev/game"
TIMEOUT = 120.0
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")  # kopf itself; the kubernetes client

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Rules the chart grants that this short run does not reach, each with the reason it is needed.
NOT_EXERCISED: dict[Permission, str] = {
    ("sparring.dev", "adversarialgames/finalizers", "update"): (
        "never called: OwnerReferencesPermissionEnforcement checks it when a Job or ConfigMap is "
        "created with blockOwnerDeletion; without it those creates are refused (403)"
    ),
    ("batch", "jobs", "get"): (
        "a create answered 409: the Job holding the name is read to tell this game's from an "
        "earlier incarnation's (tests/e2e/test_incarnations.py)"
    ),
    ("batch", "jobs", "patch"): (
        "ends an attempt whose pod never started; called under these rules by "
        "tests/e2e/test_pending.py"
    ),
    ("", "configmaps", "patch"): (
        "the game's ConfigMap exists already (409) after an operator restart, a grown spec or a "
        "re-created game, and is rewritten; tests/e2e/test_incarnations.py does that (as admin)"
    ),
    ("sparring.dev", "sparringruntimes", "get"): (
        "a game naming a SparringRuntime; called under these rules by "
        "tests/security/test_runtimes_on_cluster.py"
    ),
    ("sparring.dev", "clustersparringruntimes", "get"): (
        "the default runtime, or a game naming a ClusterSparringRuntime; called under these rules "
        "by tests/security/test_runtimes_on_cluster.py (this run's operator has no default)"
    ),
    ("", "services", "create"): (
        "a multi-node phase's rendezvous Service; called under these rules by "
        "tests/e2e/test_multinode_game.py"
    ),
    ("", "events", "list"): (
        "a Job without pods: its FailedCreate events say why; called under these rules by "
        "tests/e2e/test_pending.py"
    ),
}


@pytest.fixture
def game(s3_storage: StorageSpec, kube_env: Any) -> dict[str, Any]:
    """examples/apo-tiny.yaml with one round, stored in moto, credentials from a Secret."""
    create_secret(kube_env, "s3-credentials", "testing", "testing")
    return apo_tiny(s3_storage, rounds=1)


def _custom(api: Any) -> Any:
    return k8s.CustomObjectsApi(api.client)


def _jobs(api: Any) -> list[str]:
    return [j["metadata"]["name"] for j in api.list("batch/v1/jobs", None, f"{LABEL}={GAME}")]


def _reasons(api: Any) -> set[str]:
    return {e.get("reason") for e in api.list("v1/events")}


def _status(api: Any) -> dict[str, Any]:
    obj = _custom(api).get_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, GAME)
    return dict(obj.get("status") or {})


def play_and_record(api: Any, op: Operator, game: dict[str, Any]) -> set[Permission]:
    log = op.tail
    _custom(api).create_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, game)
    # Round 0 commits, round 1's first phase Job is created, and PhaseSucceeded is posted.
    wait_for(lambda: f"{GAME}-r0001-sample-a1" in _jobs(api), TIMEOUT, message=log)
    wait_for(lambda: "PhaseSucceeded" in _reasons(api), TIMEOUT, message=log)
    # The finished prepare Job's pod is read for its termination message.
    wait_for(lambda: ("", "pods", "list") in api.rbac_usage(op.user), TIMEOUT, message=log)
    # Suspend: the running Job is deleted (the finished prepare Job stays, as a record).
    _custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, api.namespace, PLURAL, GAME, {"spec": {"suspend": True}}
    )
    wait_for(lambda: _status(api).get("phase") == "Suspended", TIMEOUT, message=log)
    wait_for(lambda: f"{GAME}-r0001-sample-a1" not in _jobs(api), TIMEOUT, message=log)
    # Delete the game: its Jobs are garbage-collected, and their events make the operator ask
    # for a game that is gone (404).
    seen = len(api.audit(op.user))
    _custom(api).delete_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, GAME)

    def saw_it_gone() -> bool:
        return any(r.code == 404 and r.name == GAME for r in api.audit(op.user)[seen:])

    wait_for(saw_it_gone, TIMEOUT, message=log)
    op.kill()
    records = api.audit(op.user)
    agents = {r.user_agent.split("/")[0] + "/" for r in records}
    assert set(OPERATOR_AGENTS) <= agents, f"expected requests of both clients, got {agents}"
    refused = sorted({r.permission for r in records if r.code == 403})
    assert not refused, f"the chart's RBAC refused these calls of the operator: {refused}"
    return api.rbac_usage(op.user)


# ---- the chart's rules ---------------------------------------------------------------------


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=copy.deepcopy(values), name="sparring", namespace="ops")
    return [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def granted(rules: list[dict[str, Any]]) -> set[Permission]:
    """The (group, resource, verb) triples a list of PolicyRules allows; no wildcards allowed."""
    out = set()
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        out |= {
            (g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
        }
    return out


def rules_of(objects: list[dict[str, Any]], kind: str) -> dict[str, set[Permission]]:
    return {
        f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": granted(o["rules"])
        for o in objects
        if o["kind"] == kind
    }


CLUSTER_SCOPED_RESOURCES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
    ("sparring.dev", "clustersparringruntimes"),
}


def test_chart_rbac_allows_exactly_what_the_operator_calls(
    kube_env: Any, kubelet: Any, operator: Operator, game: dict[str, Any]
) -> None:
    calls = play_and_record(kube_env, operator, game)

    # The run watched one namespace: render the chart the same way.
    (cluster,) = rules_of(rendered({"watchNamespaces": ["default"]}), "ClusterRole").values()
    missing = calls - cluster
    assert not missing, f"the operator called these without a rule in the chart: {sorted(missing)}"
    unused = cluster - calls
    assert unused == set(NOT_EXERCISED), (
        f"rules no call used (remove them, or list them in NOT_EXERCISED with the reason): "
        f"{sorted(unused - set(NOT_EXERCISED))}; listed but used or gone: "
        f"{sorted(set(NOT_EXERCISED) - unused)}"
    )

    # --all-namespaces (the default): kopf does not watch namespaces; nothing else changes.
    (everywhere,) = rules_of(rendered({}), "ClusterRole").values()
    assert everywhere == cluster - {("", "namespaces", "list"), ("", "namespaces", "watch")}

    # rbac.scope=namespace: the Role holds every namespaced call; the cluster-scoped ones are
    # kopf's observation of CRDs and namespaces, in the optional read-only ClusterRole.
    objects = rendered(
        {
            "watchNamespaces": ["default"],
            "rbac": {"scope": "namespace", "observeClusterScope": True},
        }
    )
    (role,) = rules_of(objects, "Role").values()
    # Two ClusterRoles: kopf's read-only observation, and get on the cluster-scoped runtimes.
    cluster_roles = rules_of(objects, "ClusterRole")
    (runtimes,) = [v for k, v in cluster_roles.items() if k.endswith("-runtimes")]
    (observer,) = [v for k, v in cluster_roles.items() if not k.endswith("-runtimes")]
    assert runtimes == {("sparring.dev", "clustersparringruntimes", "get")}
    namespaced_calls = {c for c in calls if c[:2] not in CLUSTER_SCOPED_RESOURCES}
    assert namespaced_calls <= role and role <= cluster
    assert calls - namespaced_calls <= observer | runtimes
    assert all(p[:2] in CLUSTER_SCOPED_RESOURCES and p[2] in ("list", "watch") for p in observer)
