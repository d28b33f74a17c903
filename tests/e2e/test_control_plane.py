"""The test bed itself: the pinned release answers `/version` and `/readyz`, the controller
manager's controllers act (the Job controller makes pods, the garbage collector follows owner
references), and `scripts/kube up` / `down` start and stop exactly their own processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes.client
from harness.controlplane import KUBE_VERSION, ROOT, ControlPlane
from harness.gameops import RESTRICTED_SECURITY
from harness.rawclient import wait_for

RESTRICTED_CONTAINER = {
    "name": "c",
    "image": "not-pulled",
    "command": ["python", "-c", "print('hello from a pod')"],
    "securityContext": RESTRICTED_SECURITY,
}


def test_the_pinned_release_is_ready(control_plane: ControlPlane) -> None:
    status, body = control_plane.http_get("/version")
    assert status == 200 and json.loads(body)["gitVersion"] == f"v{KUBE_VERSION}", body
    assert control_plane.http_get("/readyz") == (200, "ok")
    # The admission plugins the operator must live with are really on.
    status, flags = control_plane.http_get("/readyz?verbose")
    assert status == 200 and "[+]etcd ok" in flags, flags


def test_job_controller_runs_pods_and_the_garbage_collector_follows_owners(kube: Any) -> None:
    batch = kubernetes.client.BatchV1Api(kube.client)
    job = {
        "metadata": {"name": "hello"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [RESTRICTED_CONTAINER]}},
        },
    }
    created = batch.create_namespaced_job(kube.namespace, job)

    def complete() -> bool:
        status = batch.read_namespaced_job_status("hello", kube.namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])

    wait_for(complete, 120, message="the Job never completed")
    [pod] = kube.list("v1/pods", selector="job-name=hello")
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("Job", created.metadata.uid)
    assert pod["spec"]["nodeName"] and pod["status"]["phase"] == "Succeeded"

    # Deleting the Job in the background leaves its pod to the garbage collector.
    batch.delete_namespaced_job("hello", kube.namespace, propagation_policy="Background")
    wait_for(
        lambda: not kube.list("v1/pods", selector="job-name=hello"),
        60,
        message="the garbage collector never deleted the Job's pod",
    )


def test_an_unschedulable_pod_stays_pending_with_the_reason(kube: Any) -> None:
    core = kubernetes.client.CoreV1Api(kube.client)
    greedy = dict(RESTRICTED_CONTAINER, resources={"limits": {"nvidia.com/gpu": "64"}})
    core.create_namespaced_pod(
        kube.namespace, {"metadata": {"name": "greedy"}, "spec": {"containers": [greedy]}}
    )

    def unschedulable() -> str:
        pod = core.read_namespaced_pod("greedy", kube.namespace)
        return next(
            (
                c.message
                for c in pod.status.conditions or []
                if c.type == "PodScheduled" and c.reason == "Unschedulable"
            ),
            "",
        )

    message = wait_for(unschedulable, 30, message="no Unschedulable condition")
    assert "Insufficient nvidia.com/gpu" in message
    assert core.read_namespaced_pod("greedy", kube.namespace).status.phase == "Pending"


def _pids(root: Path) -> dict[str, int]:
    state = json.loads((root / "state.json").read_text())
    return {name: int(p["pid"]) for name, p in state["processes"].items()}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_scripts_kube_up_and_down_start_and_stop_exactly_their_processes(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    env = {**os.environ, "SPARRING_KUBE_ROOT": str(tmp_path / "kube")}
    up = subprocess.run(
        [str(ROOT / "scripts" / "kube"), "up"], env=env, capture_output=True, text=True, timeout=300
    )
    assert up.returncode == 0, up.stderr[-3000:]
    last = up.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"export KUBECONFIG=(\S+)", last)
    assert match, up.stdout
    pids = _pids(tmp_path / "kube")
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kubelet"}
    try:
        client = kubernetes.config.new_client_from_config(config_file=match[1])
        nodes = wait_for(
            lambda: kubernetes.client.CoreV1Api(client).list_node().items, 60, message="no node"
        )
        assert [n.metadata.name for n in nodes] == ["sparring-node"]
        client.close()
    finally:
        down = subprocess.run(
            [str(ROOT / "scripts" / "kube"), "down"], env=env, capture_output=True, text=True
        )
    assert down.returncode == 0, down.stderr[-3000:]
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not (tmp_path / "kube" / "state.json").exists()
    # The session's own control plane was not touched.
    assert control_plane.http_get("/readyz") == (200, "ok")
