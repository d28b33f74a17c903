"""A multi-node phase on the real control plane (issue "Many nodes per phase", item 1): the
operator makes `update-policy` with `nodes: 2` an Indexed Job of two pods plus a headless
Service; the process kubelet runs both pods, which find pod 0 by its DNS name and meet there
through torchrun's rendezvous. One pod killed mid-phase fails the attempt; the next attempt
reruns both pods, commits once, and its checkpoint is what one node with two processes trains
from the same inputs (1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from harness.gameops import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    apo_tiny,
    create,
    create_secret,
    jobs,
    wait_phase,
)
from harness.nodeview import RunningPod
from harness.rawclient import wait_for
from kubernetes import client as k8s
from safetensors.torch import load
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import ArtifactStore, copy_committed, open_store, phase_prefix

GAME = "apo-tiny"
PHASE_JOB = f"{GAME}-r0001-update-policy-a"  # + attempt
INDEX = "batch.kubernetes.io/job-completion-index"


def _pods(kube_env: Any, kubelet: Any, job: str) -> dict[str, RunningPod | None]:
    """Pod index -> its running process (None: not running), of a Job's pods."""
    core = k8s.CoreV1Api(kube_env.client)
    out: dict[str, RunningPod | None] = {}
    for pod in core.list_namespaced_pod(kube_env.namespace, label_selector=f"job-name={job}").items:
        pid = kubelet._pid(kube_env.namespace, pod.metadata.name)
        run = RunningPod(kube_env.namespace, pod.metadata.name, job, pid) if pid else None
        out[pod.metadata.annotations[INDEX]] = run
    return out


def _weights(store: ArtifactStore, prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key in sorted(store.list(prefix + "policy/")):
        if key.endswith(".safetensors"):
            out |= load(store.get_bytes(key))
    return out


@pytest.mark.slow  # two games' worth of phases on 2 cores
def test_two_pods_meet_survive_a_killed_pod_and_train_as_one_node_with_two_processes(
    kube_env: Any, kubelet: Any, operator: Operator, s3_storage: StorageSpec, tmp_path: Path
) -> None:
    create_secret(kube_env, "s3-credentials", "testing", "testing")
    game = apo_tiny(s3_storage, rounds=1)
    game["spec"]["phases"]["updatePolicy"] = {"resources": {"nodes": 2}}
    create(kube_env, game)

    # Attempt 1: once both pods run, kill pod 1 (SIGKILL, as an OOM kill).
    first = f"{PHASE_JOB}1"
    running = wait_for(
        lambda: (p := _pods(kube_env, kubelet, first)) and len(p) == 2 and all(p.values()) and p,
        420,
        message=operator.tail,
    )
    running["1"].kill()
    obj = wait_phase(kube_env, GAME, "Succeeded", operator)

    by_name = {j["metadata"]["name"]: j for j in jobs(kube_env, GAME)}
    attempts = sorted(n for n in by_name if n.startswith(PHASE_JOB))
    assert attempts == [first, f"{PHASE_JOB}2"], attempts
    failed, ok = (by_name[n]["status"] for n in attempts)
    assert failed.get("failed") and not failed.get("succeeded"), failed
    assert ok.get("succeeded") == 2 and not ok.get("failed"), ok
    for name in attempts:  # Indexed, all-or-nothing, on its own headless Service
        spec = by_name[name]["spec"]
        assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
            "Indexed", 2, 2,
        )  # fmt: skip
        assert spec["template"]["spec"]["subdomain"] == name
        service = k8s.CoreV1Api(kube_env.client).read_namespaced_service(name, kube_env.namespace)
        assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses
        (owner,) = service.metadata.owner_references
        assert (owner.kind, owner.name) == ("AdversarialGame", GAME)
    assert obj["status"]["completedRounds"] == 1

    # The reference: one node with two processes, from the same committed inputs.
    store = open_store(s3_storage)
    ns = kube_env.namespace
    for round, phase in [(0, "prepare"), (1, "sample"), (1, "update-adversary"), (1, "score")]:
        copy_committed(
            store, phase_prefix(ns, GAME, round, phase), phase_prefix(ns, "ref", round, phase)
        )
    doc = json.loads(json.dumps(game))
    doc["metadata"] = {"name": "ref", "namespace": ns}
    (tmp_path / "ref.json").write_text(json.dumps(doc))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # fmt: skip
    cmd = [sys.executable, "-m", "sparring_trainer", "update-policy", "--game",
           str(tmp_path / "ref.json"), "--round", "1", "--nproc-per-node", "2"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    two_pods = _weights(store, phase_prefix(ns, GAME, 1, "update-policy"))
    one_node = _weights(store, phase_prefix(ns, "ref", 1, "update-policy"))
    assert two_pods.keys() == one_node.keys() and two_pods
    assert max(float((two_pods[k] - one_node[k]).abs().max()) for k in two_pods) <= 1e-5

    # Deleting the game removes its Jobs and their Services (the garbage collector).
    k8s.CustomObjectsApi(kube_env.client).delete_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, GAME
    )
    core = k8s.CoreV1Api(kube_env.client)
    wait_for(
        lambda: (
            not jobs(kube_env, GAME)
            and not core.list_namespaced_service(
                ns, label_selector=f"sparring.dev/game={GAME}"
            ).items
        ),
        60,
        message="the Jobs and Services were not garbage-collected",
    )
