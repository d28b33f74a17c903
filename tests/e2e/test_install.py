"""The install path end to end, on the real control plane: the chart installed by the real Helm
library, the operator running as the chart's Deployment (its pod run by the process kubelet)
under the chart's ServiceAccount and RBAC, a game played to Succeeded in a namespace that
enforces the Pod Security "restricted" profile, then `helm uninstall` and the games and
namespaces deleted: nothing may be left with a deletionTimestamp.

Both variants of the chart: cluster-wide (a ClusterRole, `--all-namespaces`) and namespaced
(a Role in each watched namespace). The CRD comes from `crds/` (installed once per session);
the chart's own copy is kept identical by tests/test_chart.py, so it is disabled here.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from harness.chartops import CHART
from harness.controlplane import ControlPlane, free_port
from harness.fixtures import RESTRICTED
from harness.gameops import GROUP, PLURAL, VERSION, apo_tiny, create_secret
from harness.rawclient import wait_for
from kubernetes.client.rest import ApiException
from sparring_trainer.document import StorageSpec

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the `dev` extra) is needed")

GAME_TIMEOUT = 420.0
DELETION_GRACE = 60.0


class Ns:
    """The minimal `api` the game helpers need: a client and a namespace."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str) -> None:
        self.client, self.namespace = client, namespace


def _values(variant: str, game_ns: str, storage: StorageSpec) -> dict[str, Any]:
    values: dict[str, Any] = {
        # The chart's default runtime stores in the test's bucket with the game namespace's
        # Secret (cluster-scoped: one name per test).
        "defaultRuntime": {
            "name": f"default-{game_ns}",
            "storage": {
                "uri": storage.uri,
                "endpoint": storage.endpoint,
                "pathStyle": True,
                "secretRef": {"name": "s3-credentials"},
            },
        },
        "crds": {"enabled": False},
        "operator": {"resyncSeconds": 2, "healthPort": free_port(), "verbose": True},
        "metrics": {"port": free_port()},
        # The phase pods' ServiceAccount must exist in each game namespace.
        "phaseServiceAccount": {"namespaces": [game_ns]},
    }
    if variant == "namespaced":
        values["watchNamespaces"] = [game_ns]
        values["rbac"] = {"scope": "namespace", "observeClusterScope": True}
    else:
        values["rbac"] = {"scope": "cluster"}
    return values


def _operator_pod(core: kubernetes.client.CoreV1Api, ns: str) -> Any:
    pods = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=operator")
    running = [p for p in pods.items if p.status.phase == "Running"]
    return running[0] if running else None


def _stuck(client: kubernetes.client.ApiClient, namespaces: list[str]) -> list[str]:
    """Every object in `namespaces` (and the namespaces) that has a deletionTimestamp."""
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    stuck = []
    for ns in namespaces:
        try:
            obj = core.read_namespace(ns)
        except ApiException as err:
            if err.status == 404:
                continue
            raise
        if obj.metadata.deletion_timestamp:
            stuck.append(f"namespace {ns}: {obj.status.conditions}")
        games = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        stuck += [
            f"game {ns}/{g['metadata']['name']} finalizers={g['metadata'].get('finalizers')}"
            for g in games
            if g["metadata"].get("deletionTimestamp")
        ]
    return stuck


@pytest.mark.parametrize("variant", ["cluster", "namespaced"])
def test_chart_install_plays_a_game_and_uninstalls_leaving_nothing_stuck(
    control_plane: ControlPlane, s3_storage: StorageSpec, tmp_path: Path, variant: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    release, release_ns, game_ns = (
        f"sparring-{suffix}",
        f"sparring-system-{suffix}",
        f"team-{suffix}",
    )
    admin = kubernetes.config.new_client_from_config(
        config_file=str(control_plane.kubeconfig), persist_config=False
    )
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": game_ns, "labels": RESTRICTED}})
    config = helm.Config(kubeconfig_path=str(control_plane.kubeconfig), namespace=release_ns)
    try:
        installed = config.install(
            str(CHART),
            release,
            _values(variant, game_ns, s3_storage),
            namespace=release_ns,
            create_namespace=True,
            wait="watcher",
            timeout=180,
        )
        assert installed["status"] == "deployed", installed.get("notes")

        pod = wait_for(lambda: _operator_pod(core, release_ns), 60, message="no operator pod")
        assert pod.spec.service_account_name == f"{release}"
        log = control_plane.root / "kubelet" / "logs" / f"{release_ns}_{pod.metadata.name}.log"

        def operator_log() -> str:
            return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"

        ns = Ns(admin, game_ns)
        create_secret(ns, "s3-credentials", "testing", "testing")
        game = apo_tiny(s3_storage, rounds=1)
        custom = kubernetes.client.CustomObjectsApi(admin)
        custom.create_namespaced_custom_object(GROUP, VERSION, game_ns, PLURAL, game)

        def finished() -> dict[str, Any] | None:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, game_ns, PLURAL, "apo-tiny")
            phase = (obj.get("status") or {}).get("phase")
            if phase == "Failed":
                raise AssertionError(f"game failed: {obj['status']}\n{operator_log()}")
            return obj if phase == "Succeeded" else None

        obj = wait_for(
            finished, GAME_TIMEOUT, message=lambda: f"game never finished:\n{operator_log()}"
        )
        assert obj["status"]["completedRounds"] == 1
        assert {"rm_accuracy", "win_rate"} <= set(obj["status"]["rounds"][-1]["metrics"])
        assert not obj["metadata"].get("finalizers"), obj["metadata"]["finalizers"]
        # Every call of the operator was made as the chart's ServiceAccount and allowed by the
        # chart's RBAC: the API server's audit log says so.
        user = f"system:serviceaccount:{release_ns}:{release}"
        records = [json.loads(line) for line in control_plane.audit_log.read_text().splitlines()]
        mine = [r for r in records if (r.get("user") or {}).get("username") == user]
        assert mine, "the operator made no call as its ServiceAccount"
        # (Only this test's namespaces: cluster-wide, the operator also sees games of other
        # tests whose namespaces are terminating, where every create is refused with a 403.)
        refused = {
            (r["verb"], (r.get("objectRef") or {}).get("resource"), r["requestURI"])
            for r in mine
            if (r.get("responseStatus") or {}).get("code") == 403
            and (r.get("objectRef") or {}).get("namespace", "") in ("", game_ns, release_ns)
        }
        assert not refused, refused
    finally:
        config.uninstall(release, wait="watcher", timeout=120, ignore_not_found=True)
        config.close()
        # A hook's object outlives the release (Helm does not track it): the platform's to keep.
        try:
            kubernetes.client.CustomObjectsApi(admin).delete_cluster_custom_object(
                GROUP, VERSION, "clustersparringruntimes", f"default-{game_ns}"
            )
        except ApiException as err:
            assert err.status == 404, err
        # The order a platform team follows: uninstall, then delete games and namespaces.
        custom = kubernetes.client.CustomObjectsApi(admin)
        for game_obj in custom.list_namespaced_custom_object(GROUP, VERSION, game_ns, PLURAL)[
            "items"
        ]:
            custom.delete_namespaced_custom_object(
                GROUP, VERSION, game_ns, PLURAL, game_obj["metadata"]["name"]
            )
        for ns_name in (game_ns, release_ns):
            try:
                core.delete_namespace(ns_name)
            except ApiException as err:
                assert err.status == 404, err

    wait_for(
        lambda: (
            not _stuck(admin, [game_ns, release_ns])
            and all(_gone(core, n) for n in (game_ns, release_ns))
        ),
        DELETION_GRACE,
        message=lambda: (
            f"still deleting after {DELETION_GRACE:.0f} s: {_stuck(admin, [game_ns, release_ns])}"
        ),
    )
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    leftovers = [
        r.metadata.name
        for r in rbac.list_cluster_role(
            label_selector=f"app.kubernetes.io/instance={release}"
        ).items
    ]
    assert not leftovers, f"helm uninstall left cluster roles: {leftovers}"
    admin.close()


def _gone(core: kubernetes.client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
    except ApiException as err:
        if err.status == 404:
            return True
        raise
    return False
