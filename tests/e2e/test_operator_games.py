"""The operator plays games through Jobs on the real control plane (kube-apiserver, the Job
controller and garbage collector of kube-controller-manager), the process kubelet and moto S3.

The operator runs as a real process (`python -m sparring_operator operator`) under the chart's
ServiceAccount and RBAC, so it can be killed and restarted; the kubelet runs each pod's command
as a local process.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from harness.gameops import (
    GAME_TIMEOUT,
    GROUP,
    PHASES,
    PLURAL,
    VERSION,
    Operator,
    create,
    get,
    jobs,
    patch_spec,
    wait_phase,
)
from harness.rawclient import wait_for
from kubernetes import client as k8s
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import is_committed, open_store, phase_prefix


def test_game_plays_through_jobs_survives_an_operator_kill_and_commits_to_s3(
    kube_env: Any,
    kubelet: Any,
    operator: Operator,
    s3_game: dict[str, Any],
    s3_storage: StorageSpec,
) -> None:
    create(kube_env, s3_game)
    # Kill the operator while round 1's first phase runs, then start a new one.
    wait_for(
        lambda: kubelet.running("apo-tiny-r0001-sample-a1"),
        GAME_TIMEOUT,
        message=lambda: f"round 1 never started\n{operator.tail()}",
    )
    operator.kill()
    operator.start()
    obj = wait_phase(kube_env, "apo-tiny", "Succeeded", operator)

    status = obj["status"]
    assert status["completedRounds"] == 2
    by_round = {r["round"]: r for r in status["rounds"]}
    store = open_store(s3_storage)
    for r in (1, 2):
        assert {"rm_accuracy", "rm_ece", "reward_mean", "win_rate"} <= set(by_round[r]["metrics"])
        for phase_name, uri in by_round[r]["artifacts"].items():
            assert uri == store.uri_for(phase_prefix(kube_env.namespace, "apo-tiny", r, phase_name))
            assert is_committed(store, phase_prefix(kube_env.namespace, "apo-tiny", r, phase_name))
    assert status["latestCheckpoint"].startswith("s3://")
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True" and conditions["Succeeded"] == "True"

    # Retention: the last two rounds' Jobs stay for debugging, round 0's is gone, and its pod
    # with it (garbage collector).
    wait_for(
        lambda: (
            not [j for j in jobs(kube_env, "apo-tiny") if "-r0000-" in j["metadata"]["name"]]
            and not _pods(kube_env, "apo-tiny-r0000-")
        ),
        60,
        message=lambda: f"round 0's Job was kept\n{operator.tail()}",
    )
    created = jobs(kube_env, "apo-tiny")
    names = [j["metadata"]["name"] for j in created]
    assert len(names) == 10 and all(n.endswith("-a1") for n in names), names  # no duplicates
    for job in created:
        assert job["metadata"]["ownerReferences"][0]["name"] == "apo-tiny"
        # What the operator sent, less the fields the API server adds (selector, its labels).
        meta = {k: v for k, v in job["metadata"].items() if k in ("name", "namespace", "labels")}
        spec = {k: v for k, v in job["spec"].items() if k not in ("selector", "manualSelector")}
        template_labels = spec["template"]["metadata"]["labels"]
        spec["template"]["metadata"] = {
            "labels": {
                k: v for k, v in template_labels.items() if k.startswith(("sparring.dev/", "app."))
            }
        }
        manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}
        kubernetes_validate.validate(manifest, "1.32", strict=True)
    events = kube_env.list("v1/events")
    reasons = {e["reason"] for e in events}
    assert {"PhaseStarted", "PhaseSucceeded", "GameSucceeded"} <= reasons
    # The game ended once. (A phase event may repeat here: the pass the kill interrupted may
    # have posted it before its status write; tests/e2e/test_status.py checks one event per
    # transition in a game without kills.)
    assert [e["reason"] for e in events].count("GameSucceeded") == 1

    # Re-creating the finished game with the same spec (GitOps) is Succeeded at once, without
    # a single new Job; growing its rounds afterwards continues the game from round 3.
    k8s.CustomObjectsApi(kube_env.client).delete_namespaced_custom_object(
        GROUP, VERSION, kube_env.namespace, PLURAL, "apo-tiny"
    )
    wait_for(lambda: not jobs(kube_env, "apo-tiny"), 60, message="Jobs were not garbage-collected")
    create(kube_env, s3_game)
    again = wait_phase(kube_env, "apo-tiny", "Succeeded", operator, timeout=60)
    assert again["status"]["completedRounds"] == 2 and not jobs(kube_env, "apo-tiny")
    patch_spec(kube_env, "apo-tiny", {"rounds": 3})
    wait_for(lambda: jobs(kube_env, "apo-tiny"), 60, message=lambda: operator.tail())
    wait_for(
        lambda: get(kube_env, "apo-tiny")["status"].get("completedRounds") == 3,
        GAME_TIMEOUT,
        message=lambda: f"{get(kube_env, 'apo-tiny').get('status')}\n{operator.tail()}",
    )
    assert get(kube_env, "apo-tiny")["status"]["phase"] == "Succeeded"
    assert {j["metadata"]["name"] for j in jobs(kube_env, "apo-tiny")} == {
        f"apo-tiny-r0003-{p}-a1" for p in PHASES
    }


def _pods(api: Any, job_prefix: str) -> list[str]:
    pods = [p["metadata"]["name"] for p in api.list("v1/pods")]
    return [p for p in pods if p.startswith(job_prefix)]


def test_retries_with_backoff_then_fails_with_the_job_and_its_message(
    kube_env: Any, kubelet: Any, operator: Operator, s3_game: dict[str, Any]
) -> None:
    s3_game["spec"]["rounds"] = 1
    create(kube_env, s3_game)
    # Crash round 0 twice: the third attempt runs and the game goes on.
    for attempt in (1, 2):
        run = wait_for(
            lambda a=attempt: kubelet.running(f"apo-tiny-r0000-prepare-a{a}"),
            120,
            message=lambda: operator.tail(),
        )
        run.kill()
    wait_for(
        lambda: kubelet.running("apo-tiny-r0001-sample-a1"),
        GAME_TIMEOUT,
        message=lambda: operator.tail(),
    )
    names = sorted(j["metadata"]["name"] for j in jobs(kube_env, "apo-tiny"))
    assert [n for n in names if "prepare" in n] == [
        f"apo-tiny-r0000-prepare-a{i}" for i in (1, 2, 3)
    ], [(j["metadata"]["name"], j.get("status")) for j in jobs(kube_env, "apo-tiny")]
    reasons = [e["reason"] for e in kube_env.list("v1/events")]
    assert reasons.count("PhaseRetried") == 2

    # A phase that keeps failing on bad input ends the game Failed, naming Job and message.
    bad = {**s3_game, "metadata": {"name": "bad-model"}}
    bad["spec"] = {
        **s3_game["spec"],
        "game": {**s3_game["spec"]["game"], "policy": {"model": "./no/such/model"}},
    }
    create(kube_env, bad)
    obj = wait_phase(kube_env, "bad-model", "Failed", operator, timeout=120)
    message = obj["status"]["message"]
    assert "bad-model-r0000-prepare-a1" in message and "no/such/model" in message
    assert len(jobs(kube_env, "bad-model")) == 1  # bad input is not retried


def test_suspend_deletes_the_job_and_resume_starts_the_phase_again(
    kube_env: Any, kubelet: Any, operator: Operator, s3_game: dict[str, Any]
) -> None:
    s3_game["spec"]["rounds"] = 1
    create(kube_env, s3_game)
    wait_for(
        lambda: kubelet.running("apo-tiny-r0000-prepare-a1"), 120, message=lambda: operator.tail()
    )
    patch_spec(kube_env, "apo-tiny", {"suspend": True})
    obj = wait_phase(kube_env, "apo-tiny", "Suspended", operator, timeout=60)
    wait_for(lambda: not jobs(kube_env, "apo-tiny"), 30, message="the running Job was not deleted")
    assert obj["status"]["conditions"]
    patch_spec(kube_env, "apo-tiny", {"suspend": False})
    wait_for(lambda: jobs(kube_env, "apo-tiny"), 60, message=lambda: operator.tail())
    assert [j["metadata"]["name"] for j in jobs(kube_env, "apo-tiny")] == [
        "apo-tiny-r0000-prepare-a2"
    ]
