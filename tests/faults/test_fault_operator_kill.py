"""The operator is SIGKILLed at every point of a phase's life and restarted; nothing is lost.

One one-round game (prepare + five phases) on the harness, with moto S3. The operator process
is killed, and a new one started, at five points:

1. before the first Job exists (every Job create fails until the kill, so none can slip in);
2. while a phase's Job runs;
3. right after a Job completed, before the next phase's Job exists;
4. between creating a Job and writing the status that mentions it (that status write fails);
5. right after a status change was observed.

On each restart the operator derives everything from the Jobs and the store again: no
duplicate Job (every phase runs exactly once, as attempt 1), no two of one phase at once,
nothing committed is lost or rewritten, and the game ends Succeeded with its round.
"""

from __future__ import annotations

from typing import Any

import pytest
from faultops import GAME, Watchdog, assert_store_intact, attempts, store_manifests
from harness.gameops import PHASES, RESTRICTED_SECURITY, Operator, create, get, wait_phase
from harness.rawclient import wait_for
from kubernetes import client as k8s
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import open_store

JOB_CREATE = r"/namespaces/[^/]+/jobs(\?|$)"
STATUS_WRITE = rf"/adversarialgames/{GAME}/status"
T = 180.0  # seconds: generous bound for one phase on a busy 2-core machine


def _injected(api: Any, method: str, resource: str, since: int = 0) -> bool:
    return any(
        r.injected and r.method == method and r.resource == resource for r in api.requests[since:]
    )


def _restart(operator: Operator) -> None:
    operator.kill()
    operator.start()


@pytest.mark.slow  # ~45 s on 2 cores: run by .ci/run, not by default
def test_operator_killed_at_every_point_of_a_phase_loses_nothing(
    kube_env: Any,
    kubelet: Any,
    operator: Operator,
    s3_game: dict[str, Any],
    s3_storage: StorageSpec,
) -> None:
    store = open_store(s3_storage)
    tail = operator.tail
    with Watchdog(kube_env, kubelet) as dog:
        # 1. The operator has decided to start `prepare` but no Job exists when it dies.
        block = kube_env.fail_next(10**6, 500, "POST", JOB_CREATE)
        create(kube_env, s3_game)
        wait_for(lambda: _injected(kube_env, "POST", "jobs"), T, message=tail)
        operator.kill()
        block.times = 0
        assert attempts(kube_env) == {}
        operator.start()

        # 2. While prepare's Job runs.
        wait_for(lambda: kubelet.running(f"{GAME}-r0000-prepare-a1"), T, message=tail)
        _restart(operator)

        # 3. Right after sample's Job completed, before update-adversary's exists.
        wait_for(lambda: kubelet.running(f"{GAME}-r0001-sample-a1"), T, message=tail)
        block = kube_env.fail_next(10**6, 500, "POST", JOB_CREATE)
        kubelet.wait_job(f"{GAME}-r0001-sample-a1", timeout=T)
        operator.kill()
        block.times = 0
        assert (1, "update-adversary") not in attempts(kube_env)
        before = store_manifests(store, kube_env.namespace)
        assert (1, "sample") in before  # committed before the Job reported Complete
        operator.start()

        # 4. update-adversary's Job was created, but the status write after it fails.
        mark = len(kube_env.requests)
        block = kube_env.fail_next(10**6, 500, "PATCH", STATUS_WRITE)
        wait_for(lambda: kubelet.running(f"{GAME}-r0001-update-adversary-a1"), T, message=tail)
        wait_for(lambda: _injected(kube_env, "PATCH", "adversarialgames/status", mark), 30)
        operator.kill()
        block.times = 0
        operator.start()

        # 5. Right after the status says update-policy is the current phase.
        wait_for(
            lambda: (
                (get(kube_env, GAME).get("status") or {}).get("currentPhase") == "update-policy"
            ),
            2 * T,
            message=tail,
        )
        _restart(operator)

        obj = wait_phase(kube_env, GAME, "Succeeded", operator)
    dog.check()

    status = obj["status"]
    assert status["completedRounds"] == 1
    assert {"rm_accuracy", "reward_mean", "win_rate"} <= set(status["rounds"][-1]["metrics"])
    # Every phase ran exactly once, as attempt 1: no duplicate, no lost or replayed phase.
    assert attempts(kube_env) == {
        (r, p): [f"{GAME}-r{r:04d}-{p}-a1"] for r, p in [(0, "prepare")] + [(1, p) for p in PHASES]
    }
    assert_store_intact(store, kube_env.namespace, earlier=before)


def test_the_watchdog_sees_two_of_one_phase_at_once(kube_api: Any, kubelet: Any) -> None:
    """The duplicate check every fault test relies on is not vacuous."""
    for attempt in (1, 2):
        name = f"{GAME}-r0001-sample-a{attempt}"
        container = {
            "name": "phase",
            "image": "x",
            "command": ["sleep", "30"],
            "securityContext": RESTRICTED_SECURITY,  # the namespace enforces "restricted"
        }
        job = {
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            },
        }
        k8s.BatchV1Api(kube_api.client).create_namespaced_job(kube_api.namespace, job)
    with Watchdog(kube_api, kubelet) as dog:
        wait_for(lambda: kubelet.running(f"{GAME}-r0001-sample-a2"), 30)
        wait_for(lambda: dog.samples > 12, 10)
    assert any("two live Jobs" in v for v in dog.violations)
    assert any("two live phase processes" in v for v in dog.violations)
