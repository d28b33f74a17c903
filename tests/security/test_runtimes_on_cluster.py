"""Tenants who cannot reach past their runtime (issue "Platform-owned runtimes"), on the real
control plane, with the operator running as the chart's ServiceAccount under the chart's RBAC.

Tenant A (the test's namespace) plays on a ClusterSparringRuntime; tenant B's namespace holds
a Secret and a SparringRuntime of its own. Each attempt of A to reach past the runtime (B's
Secret, B's runtime, an image the runtime does not list, an endpoint it does not allow, the
runtime's Secret for a store A chose, a store outside A's) ends Stalled with a condition naming
the refused field, and no Job. The API
server's audit log shows which Secrets and runtimes the operator asked for; a listener on
another loopback port shows that no connection arrived; the store's request log shows that a
game without a Secret never makes the operator open the store with its own credentials.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultops import attempts, condition
from harness.chartops import render
from harness.fixtures import running_operator
from harness.gameops import GAME_TIMEOUT, ROOT, create, create_secret, get, wait_phase
from harness.rawclient import wait_for
from kubernetes import client as k8s
from sparring_operator.api import AdversarialGame
from sparring_operator.jobs import OperatorSettings
from sparring_operator.report import cluster_record
from sparring_operator.runtimes import RuntimeUnavailable
from sparring_operator.tenancy import RUNTIME_TTL_SECONDS, Tenancy
from sparring_trainer.document import StorageSpec

T = 60.0
GROUP, VERSION = "sparring.dev", "v1alpha1"
IMAGE = "registry.example.com/ml/sparring-trainer:1.0.0"
TINY = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())


def _stalled(api: Any, name: str) -> dict[str, Any] | None:
    cond = condition(get(api, name), "Stalled")
    return cond if cond.get("status") == "True" else None


@pytest.fixture
def cluster_runtimes(kube_env: Any) -> Iterator[Callable[[str, dict[str, Any]], None]]:
    """Create ClusterSparringRuntimes (cluster-scoped: deleted when the test ends)."""
    custom = k8s.CustomObjectsApi(kube_env.client)
    made: list[str] = []

    def make(name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterSparringRuntime",
                "metadata": {"name": name}, "spec": spec}  # fmt: skip
        custom.create_cluster_custom_object(GROUP, VERSION, "clustersparringruntimes", body)
        made.append(name)

    yield make
    for name in made:
        custom.delete_cluster_custom_object(GROUP, VERSION, "clustersparringruntimes", name)


def _game(name: str, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TINY)
    doc["metadata"]["name"] = name
    doc["spec"]["rounds"] = 1
    doc["spec"].update(spec)
    return dict(doc)


def test_a_tenant_cannot_reach_past_its_runtime(
    kube_env: Any,
    tmp_path: Path,
    s3_storage: StorageSpec,
    s3_requests: Callable[[], list[str]],
    cluster_runtimes: Callable[[str, dict[str, Any]], None],
) -> None:
    ns = kube_env.namespace
    seen = len(s3_requests())  # the fixture's own (it made the bucket)
    bucket = s3_storage.uri.removeprefix("s3://").split("/")[0]
    own_store = f"s3://{bucket}/team-a"
    core = k8s.CoreV1Api(kube_env.client)
    team_b = f"{ns}-b"
    core.create_namespace({"metadata": {"name": team_b}})
    create_secret(kube_env, "b-keys", "testing", "testing", namespace=team_b)
    k8s.CustomObjectsApi(kube_env.client).create_namespaced_custom_object(
        GROUP, VERSION, team_b, "sparringruntimes",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SparringRuntime",
         "metadata": {"name": "b-runtime"}, "spec": {"images": ["anything:1", "*"]}},
    )  # fmt: skip
    create_secret(kube_env, "store-keys", "testing", "testing")  # the runtime's
    create_secret(kube_env, "a-keys", "testing", "testing")  # A's own, for a store it chooses
    runtime = f"tenants-{ns}"
    cluster_runtimes(runtime, {
        "images": [IMAGE],
        "storage": {"uri": s3_storage.uri, "endpoint": s3_storage.endpoint, "pathStyle": True,
                    "secretRef": {"name": "store-keys"}, "allowedUris": [own_store],
                    "allowedEndpoints": [s3_storage.endpoint]},
        "overridable": ["storage"],
    })  # fmt: skip
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    elsewhere = f"http://127.0.0.1:{listener.getsockname()[1]}"
    own = {"uri": own_store, "endpoint": s3_storage.endpoint, "pathStyle": True}
    attempts_of_a = {
        # name: (spec, stall reason, what the condition's message starts with)
        "borrow-secret": (
            {"storage": {**own, "secretRef": {"name": "b-keys"}}},
            "SecretUnavailable",
            f"spec.storage.secretRef: Secret 'b-keys' not found in namespace '{ns}'",
        ),
        "borrow-runtime": (
            {"runtimeRef": {"kind": "SparringRuntime", "name": "b-runtime"}},
            "RuntimeUnavailable",
            f"spec.runtimeRef: SparringRuntime 'b-runtime' not found in namespace '{ns}'",
        ),
        "miner": (
            {"phases": {"default": {"image": "docker.io/someone/miner:latest"}}},
            "RuntimeRefused",
            "spec.phases.default.image: 'docker.io/someone/miner:latest' is not an image ",
        ),
        "reach": (
            {"storage": {**own, "endpoint": elsewhere, "secretRef": {"name": "a-keys"}}},
            "RuntimeRefused",
            f"spec.storage.endpoint: {elsewhere} is not an allowed endpoint",
        ),
        "lend-keys": (
            {"storage": {**own, "secretRef": {"name": "store-keys"}}},
            "RuntimeRefused",
            "spec.storage.secretRef: 'store-keys' is ",
        ),
        "escape": (
            {"storage": {**own, "uri": f"s3://{bucket}/team-b",
                         "secretRef": {"name": "a-keys"}}},
            "RuntimeRefused",
            f"spec.storage.uri: 's3://{bucket}/team-b' is not a store ",
        ),
    }  # fmt: skip
    env = {"SPARRING_DEFAULT_RUNTIME": runtime}
    with running_operator(kube_env, tmp_path, env=env) as operator:
        for name, (spec, _, _) in attempts_of_a.items():
            create(kube_env, _game(name, **spec))
        for name, (_, reason, start) in attempts_of_a.items():
            stalled = wait_for(lambda n=name: _stalled(kube_env, n), T, message=operator.tail)
            assert stalled["reason"] == reason, (name, stalled)
            assert stalled["message"].startswith(start), (name, stalled["message"])
        for name in attempts_of_a:  # every pass refused it again, before any Job
            assert attempts(kube_env, name) == {}, name
        audit = kube_env.audit(operator.user)
    try:
        listener.accept()
        arrived = True
    except BlockingIOError:  # a connection would wait in the backlog, accepted or not
        arrived = False
    listener.close()
    assert not arrived, "the operator connected to an endpoint the runtime does not allow"
    # Every attempt was refused before the store was opened: not one request reached it.
    assert not [r for r in s3_requests()[seen:] if bucket in r]
    # What the operator asked the API server for: Secrets of A only, runtimes by name only.
    assert {r.namespace for r in audit if r.resource == "secrets"} == {ns}
    runtime_reads = {(r.namespace, r.name) for r in audit if "sparringruntimes" in r.resource}
    assert runtime_reads <= {("", runtime), (ns, "b-runtime")}, runtime_reads
    assert ("", runtime) in runtime_reads
    core.delete_namespace(team_b)


def test_a_runtime_read_is_shared_by_games_for_its_ttl_then_read_again(
    kube_env: Any, cluster_runtimes: Callable[[str, dict[str, Any]], None]
) -> None:
    """One GET of a runtime serves every game on it for RUNTIME_TTL_SECONDS (a 100-game burst
    ran 1.45-1.61x longer with a GET per pass); a change is seen once that has passed, and a
    deleted runtime at once after it."""
    cluster_runtimes("ttl-runtime", {"images": [IMAGE]})
    now = [100.0]
    tenancy = Tenancy(kube_env.client, OperatorSettings(), "ttl-runtime", clock=lambda: now[0])
    games = []
    for namespace in (kube_env.namespace, "another-team"):
        body = copy.deepcopy(TINY)
        body["metadata"]["namespace"] = namespace
        games.append(AdversarialGame.model_validate(body))
    assert tenancy.runtime_of(games[0])[1].images == [IMAGE]
    custom = k8s.CustomObjectsApi(kube_env.client)
    newer = "registry.example.com/ml/sparring-trainer:2.0.0"
    custom.patch_cluster_custom_object(
        GROUP, VERSION, "clustersparringruntimes", "ttl-runtime", {"spec": {"images": [newer]}}
    )
    now[0] += RUNTIME_TTL_SECONDS - 0.5  # another game, inside the TTL: the same read
    assert tenancy.runtime_of(games[1])[1].images == [IMAGE]
    now[0] += 0.5
    assert tenancy.runtime_of(games[1])[1].images == [newer]
    custom.delete_cluster_custom_object(GROUP, VERSION, "clustersparringruntimes", "ttl-runtime")
    now[0] += RUNTIME_TTL_SECONDS
    with pytest.raises(RuntimeUnavailable, match="'ttl-runtime' not found"):
        tenancy.runtime_of(games[0])
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterSparringRuntime",
            "metadata": {"name": "ttl-runtime"}, "spec": {"images": [IMAGE]}}  # fmt: skip
    custom.create_cluster_custom_object(GROUP, VERSION, "clustersparringruntimes", body)
    # Not found is never kept: the runtime is found again on the very next pass.
    assert tenancy.runtime_of(games[0])[1].images == [IMAGE]


@pytest.mark.slow
def test_the_charts_default_runtime_plays_the_unchanged_example_with_no_identity_of_its_own(
    kube_env: Any,
    tmp_path: Path,
    s3_storage: StorageSpec,
    s3_requests: Callable[[], list[str]],
) -> None:
    """examples/apo-tiny.yaml, applied as it is, on the chart's default runtime: first with no
    Secret anywhere (Stalled, and not one request reached the store, though the operator's
    environment holds AWS keys), then with the runtime's Secret (Succeeded, from the change on)."""
    ns, name = kube_env.namespace, f"default-{kube_env.namespace}"
    storage = {"uri": s3_storage.uri, "endpoint": s3_storage.endpoint, "pathStyle": True}
    values = {"defaultRuntime": {"name": name, "storage": storage}, "crds": {"enabled": False}}
    rendered = render(values, f"rt-{ns}", ns)
    body = next(o for o in rendered if o["kind"] == "ClusterSparringRuntime")
    custom = k8s.CustomObjectsApi(kube_env.client)
    custom.create_cluster_custom_object(GROUP, VERSION, "clustersparringruntimes", body)
    bucket = s3_storage.uri.removeprefix("s3://").split("/")[0]
    seen = len(s3_requests())  # the fixture's own (it made the bucket)
    try:
        with running_operator(kube_env, tmp_path, env={"SPARRING_DEFAULT_RUNTIME": name}) as op:
            create(kube_env, copy.deepcopy(TINY))
            stalled = wait_for(lambda: _stalled(kube_env, "apo-tiny"), T, message=op.tail)
            assert stalled["reason"] == "NoStoreCredentials", stalled
            assert stalled["message"].startswith("spec.storage.secretRef: no Secret for "), stalled
            assert attempts(kube_env, "apo-tiny") == {}
            assert not [r for r in s3_requests()[seen:] if bucket in r]
            create_secret(kube_env, "store-keys", "testing", "testing")
            patch = {"spec": {"storage": {"secretRef": {"name": "store-keys"}}}}
            custom.patch_cluster_custom_object(
                GROUP, VERSION, "clustersparringruntimes", name, patch
            )
            done = wait_phase(kube_env, "apo-tiny", "Succeeded", op, GAME_TIMEOUT)
        assert done["status"]["completedRounds"] == 2
        # The status says where it played; `sparring report --kube` reads the game there (with
        # this machine's credentials), not in the file:// folder its spec names.
        assert done["status"]["storage"]["uri"] == s3_storage.uri
        record = cluster_record(done)
        assert record.note == "" and {1, 2} <= set(record.rounds), record.note
        store_keys = {r.split(" ", 1)[1] for r in s3_requests() if bucket in r}
        assert any(f"/{ns}/apo-tiny/round-0002/evaluate/_SUCCESS" in k for k in store_keys)
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "clustersparringruntimes", name)
