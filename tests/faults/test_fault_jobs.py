"""Someone deletes a running phase Job or its pod; the scheduler preempts a phase's pod.

One one-round game with `retry.limit: 0` for every phase but update-policy (limit 1), so that
any attempt spent on something that is not the phase's fault would fail the game:
* sample: its running Job is deleted. Not a failure: the operator starts it again as the next
  attempt (`-a2`, never reusing a name), and no retry budget is used;
* score: its pod is preempted through the eviction API (the API server marks it with a
  DisruptionTarget condition, the kubelet stops it); the Job's podFailurePolicy counts it against
  the phase's disruptionLimit and the real Job controller runs a new pod: no `-a2` Job, no
  retry used;
* update-policy: its running pod is deleted. The Job controller counts that pod as failed, so
  this one is a failed attempt and the retry budget pays for `-a2`.
The game completes; never two of one phase at once; nothing committed is lost.
"""

from __future__ import annotations

from typing import Any

import pytest
from faultops import GAME, Watchdog, assert_store_intact, attempts
from harness.gameops import PHASES, Operator, create, wait_phase
from harness.rawclient import wait_for
from kubernetes import client as k8s
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import open_store

T = 180.0


@pytest.mark.slow  # ~45 s on 2 cores: run by .ci/run, not by default
def test_deleted_job_or_pod_is_replaced_by_the_next_attempt_and_preemption_costs_nothing(
    kube_env: Any,
    kubelet: Any,
    operator: Operator,
    s3_game: dict[str, Any],
    s3_storage: StorageSpec,
) -> None:
    s3_game["spec"]["phases"] = {
        "default": {"retry": {"limit": 0, "backoffSeconds": 1}},
        "updatePolicy": {"retry": {"limit": 1, "backoffSeconds": 1}},
    }
    batch, core = k8s.BatchV1Api(kube_env.client), k8s.CoreV1Api(kube_env.client)
    job = f"{GAME}-r0001-{{}}-a{{}}".format
    with Watchdog(kube_env, kubelet) as dog:
        create(kube_env, s3_game)

        wait_for(lambda: kubelet.running(job("sample", 1)), T, message=operator.tail)
        batch.delete_namespaced_job(
            job("sample", 1), kube_env.namespace, propagation_policy="Background"
        )
        wait_for(lambda: kubelet.running(job("sample", 2)), 60, message=operator.tail)

        preempted = kubelet.preempt(job("score", 1), timeout=T)

        run = wait_for(lambda: kubelet.running(job("update-policy", 1)), T, message=operator.tail)
        core.delete_namespaced_pod(run.name, kube_env.namespace)
        wait_for(lambda: kubelet.running(job("update-policy", 2)), 60, message=operator.tail)

        obj = wait_phase(kube_env, GAME, "Succeeded", operator)
    dog.check()

    expected = {(0, "prepare"): [f"{GAME}-r0000-prepare-a1"]}
    expected |= {(1, p): [job(p, 1)] for p in PHASES}
    expected[(1, "sample")] = [job("sample", 2)]  # a1 was deleted; a2 is its replacement
    expected[(1, "update-policy")] = [job("update-policy", 1), job("update-policy", 2)]
    assert attempts(kube_env) == expected
    assert obj["status"]["completedRounds"] == 1

    # The preempted pod had DisruptionTarget: within the phase's disruptionLimit (3), its Job
    # ran a second pod and completed, and no retry was spent.
    score = kube_env.get("batch/v1/jobs", job("score", 1))
    complete = [c for c in score["status"]["conditions"] if c["type"] == "Complete"]
    assert complete and complete[0]["status"] == "True", score["status"]
    assert score["status"]["failed"] == 1 and score["status"]["succeeded"] == 1
    assert preempted.conditions.get("DisruptionTarget") == "EvictionByEvictionAPI", preempted

    events = [(e["reason"], e["message"]) for e in kube_env.list("v1/events")]
    assert ("PhaseStarted", "round 1 sample (attempt 2)") in events
    retried = [m for r, m in events if r == "PhaseRetried"]
    assert len(retried) == 1 and job("update-policy", 1) in retried[0], events
    assert_store_intact(open_store(s3_storage), kube_env.namespace)


@pytest.mark.slow  # ~60 s on 2 cores
def test_disruptions_beyond_the_phase_limit_fail_the_attempt(
    kube_env: Any,
    kubelet: Any,
    operator: Operator,
    s3_game: dict[str, Any],
) -> None:
    """A phase evicted again and again (a disk hog on a full node, a preemption loop) is not
    replaced forever: past `retry.disruptionLimit` its attempt fails and a retry pays for it."""
    s3_game["spec"]["rounds"] = 1
    s3_game["spec"]["phases"] = {
        "default": {"retry": {"limit": 0, "backoffSeconds": 1}},
        "score": {"retry": {"limit": 1, "backoffSeconds": 1, "disruptionLimit": 1}},
    }
    job = f"{GAME}-r0001-{{}}-a{{}}".format
    create(kube_env, s3_game)
    first = kubelet.preempt(job("score", 1), timeout=T)  # within the limit: replaced in place
    second = wait_for(
        lambda: (r := kubelet.running(job("score", 1))) and r.name != first.name and r,
        T,
        message=operator.tail,
    )
    kubelet.preempt(job("score", 1), timeout=T)  # one more: the attempt fails
    failed = kubelet.wait_job(job("score", 1), timeout=T)
    reasons = {c["type"]: c.get("reason") for c in failed["status"]["conditions"]}
    assert reasons.get("Failed") == "BackoffLimitExceeded", failed["status"]
    assert failed["status"]["failed"] == 2 and second.name != first.name
    obj = wait_phase(kube_env, GAME, "Succeeded", operator)
    assert obj["status"]["completedRounds"] == 1
    assert attempts(kube_env)[(1, "score")] == [job("score", 1), job("score", 2)]
    retried = [e["message"] for e in kube_env.list("v1/events") if e["reason"] == "PhaseRetried"]
    assert len(retried) == 1 and job("score", 1) in retried[0], retried
