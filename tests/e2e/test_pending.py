"""A phase whose pod never starts is visible, and then a failed attempt (issue "The operator,
correct on a real cluster", item 8), and `kubectl get adversarialgames` says what a game is
doing: rounds done/total, phase, status and a short message (the Shape item).

The real scheduler's rule, as the test kubelet's scheduler applies it: a pod whose
nodeSelector matches no node stays Pending with PodScheduled=False/Unschedulable. The operator
shows that reason on the Running condition and in `status.message` (the Message column), and
after the phase's pendingTimeoutSeconds ends the attempt: the real Job controller fails the
Job on its deadline, and the Job stays as the failed attempt's record with the reason.
"""

from __future__ import annotations

import json
from typing import Any

from harness.gameops import Operator, create, get, wait_phase
from harness.rawclient import wait_for
from kubernetes import client as k8s

TIMEOUT = 120.0


def table(kube: Any) -> list[dict[str, Any]]:
    """`kubectl get adversarialgames`: the API server's Table, one dict per row by column."""
    url = (
        f"{kube.client.configuration.host}/apis/sparring.dev/v1alpha1/namespaces/"
        f"{kube.namespace}/adversarialgames"
    )
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io"
    resp = kube.client.call_api("GET", url, header_params={"Accept": accept})
    resp.read()
    data = json.loads(resp.data)
    names = [c["name"] for c in data["columnDefinitions"]]
    return [dict(zip(names, row["cells"], strict=True)) for row in data["rows"]]


def test_an_unschedulable_phase_is_shown_and_then_fails_its_attempt(
    kube_env: Any, kubelet: Any, operator: Operator, s3_game: dict[str, Any]
) -> None:
    s3_game["spec"]["scheduling"] = {"nodeSelector": {"sparring.dev/no-such-pool": "gpu"}}
    s3_game["spec"]["phases"] = {
        "default": {"pendingTimeoutSeconds": 20, "retry": {"limit": 0, "backoffSeconds": 1}}
    }
    create(kube_env, s3_game)

    def shown() -> dict[str, Any] | None:
        status = get(kube_env, "apo-tiny").get("status") or {}
        running = {c["type"]: c for c in status.get("conditions", [])}.get("Running", {})
        return status if running.get("reason") == "Unschedulable" else None

    status = wait_for(shown, TIMEOUT, message=operator.tail)
    assert status["phase"] == "Running"
    assert status["message"].startswith("round 0 prepare Unschedulable (a failed attempt at 20")
    running = {c["type"]: c for c in status["conditions"]}["Running"]
    assert "Job apo-tiny-r0000-prepare-a1: 0/1 nodes are available" in running["message"]
    [row] = table(kube_env)
    assert (row["Rounds"], row["Phase"], row["Status"]) == ("0/2", "prepare", "Running"), row
    assert row["Message"] == status["message"] and len(row["Message"]) <= 160, row

    obj = wait_phase(kube_env, "apo-tiny", "Failed", operator, timeout=TIMEOUT)
    failed = {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]
    assert "apo-tiny-r0000-prepare-a1 failed after 1 attempt(s)" in failed["message"], failed
    assert "pendingTimeoutSeconds=20: Unschedulable" in failed["message"], failed
    job = kube_env.get("batch/v1/jobs", "apo-tiny-r0000-prepare-a1")
    ended = {c["type"]: c for c in job["status"]["conditions"]}
    assert ended["Failed"]["status"] == "True", job["status"]  # failed by the Job controller
    assert job["metadata"]["annotations"]["sparring.dev/failed-reason"] == "Unschedulable"
    assert not kubelet.live_processes(), "no phase ever ran"
    [row] = table(kube_env)
    assert (row["Rounds"], row["Status"]) == ("0/2", "Failed"), row


def test_a_job_whose_pods_cannot_be_created_says_why(
    kube_env: Any, kubelet: Any, operator: Operator, s3_game: dict[str, Any]
) -> None:
    """An exhausted quota (as a missing ServiceAccount or a Pod Security rejection) refuses the
    pod itself: only the Job controller's FailedCreate events say so, and the game shows it."""
    quota = {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    core = k8s.CoreV1Api(kube_env.client)
    core.create_namespaced_resource_quota(kube_env.namespace, quota)
    # Admission counts against the quota once the resourcequota controller has computed it.
    wait_for(
        lambda: core.read_namespaced_resource_quota("no-pods", kube_env.namespace).status.hard,
        TIMEOUT,
    )
    s3_game["spec"]["phases"] = {"default": {"pendingTimeoutSeconds": 20, "retry": {"limit": 0}}}
    create(kube_env, s3_game)

    def shown() -> dict[str, Any] | None:
        status = get(kube_env, "apo-tiny").get("status") or {}
        return (
            status if status.get("message", "").startswith("round 0 prepare FailedCreate") else None
        )

    status = wait_for(shown, TIMEOUT, message=operator.tail)
    running = {c["type"]: c for c in status["conditions"]}["Running"]
    assert running["reason"] == "FailedCreate" and "exceeded quota: no-pods" in running["message"]
    obj = wait_phase(kube_env, "apo-tiny", "Failed", operator, timeout=TIMEOUT)
    assert "pendingTimeoutSeconds=20: FailedCreate" in obj["status"]["message"] or any(
        "pendingTimeoutSeconds=20: FailedCreate" in c["message"]
        for c in obj["status"]["conditions"]
    )
