"""Phase Jobs and the game ConfigMap: schema-valid for Kubernetes 1.32 (strict), secure, and
running exactly the command `sparring run` runs locally."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from sparring_operator.api import MAX_GAME_NAME, AdversarialGame
from sparring_operator.jobs import (
    GAME_FILE,
    LABEL_ATTEMPT,
    LABEL_GAME,
    LABEL_PHASE,
    LABEL_ROUND,
    OperatorSettings,
    build_configmap,
    build_job,
    configmap_name,
    game_json,
    job_name,
)
from sparring_operator.local import phase_command
from sparring_trainer.config import ALL_PHASES
from sparring_trainer.document import GameDocument

K8S_VERSION = "1.32"
# Dummy credentials "in the environment" of whoever builds the Jobs: they must never leak.
DUMMY_ACCESS_KEY = "AKIADUMMYACCESSKEY0042"
DUMMY_SECRET_KEY = "dummy/secret+access/key/value/0042"


def _game(
    *,
    name: str = "apo-full",
    gpu: int = 0,
    full: bool = True,
) -> AdversarialGame:
    doc: dict[str, Any] = {
        "apiVersion": "sparring.dev/v1alpha1",
        "kind": "AdversarialGame",
        "metadata": {"name": name},
        "spec": {
            "game": {
                "kind": "apo",
                # Global batches that up to 8 GPUs split evenly (one rank each).
                "policy": {"model": "tiny-random", "update": {"batchSize": 8}},
                "adversary": {"model": "tiny-random:7", "update": {"batchSize": 8}},
                "evaluation": {"evalRmTrain": {"batchSize": 8}},
            },
        },
    }
    if full:
        doc["metadata"] |= {
            "namespace": "team-a",
            "labels": {"team": "a"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        }
        doc["spec"] |= {
            "rounds": 3,
            "storage": {
                "uri": "s3://sparring-artifacts/games",
                "endpoint": "http://minio.storage:9000",
                "region": "eu-west-1",
                "pathStyle": True,
                "secretRef": {
                    "name": "s3-creds",
                    "accessKeyIdKey": "id",
                    "secretAccessKeyKey": "key",
                },
            },
            "phases": {
                "default": {
                    "resources": {"cpu": "2", "memory": "8Gi", "gpu": gpu},
                    "deadlineSeconds": 3600,
                },
                "updatePolicy": {
                    "image": "registry.example/trainer:cuda",
                    "resources": {"cpu": "16", "memory": "128Gi", "gpu": gpu},
                    "retry": {"limit": 5},
                },
            },
            "scheduling": {
                "queueName": "gpu-queue",
                "priorityClassName": "training-high",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {
                        "key": "spot",
                        "operator": "Equal",
                        "value": "true",
                        "effect": "NoExecute",
                        "tolerationSeconds": 60,
                    },
                ],
            },
            "earlyStop": {"metric": "rm_accuracy", "threshold": 0.9},
        }
        doc["status"] = {"phase": "Running", "currentRound": 1, "message": "status must not leak"}
    return AdversarialGame.model_validate(doc)


FULL_SETTINGS = OperatorSettings(phase_service_account="sparring-phase", image_pull_policy="Always")


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(job)["env"]}


GAMES = {
    "minimal": lambda: _game(full=False),
    "full-gpu0": lambda: _game(gpu=0),
    "full-gpu1": lambda: _game(gpu=1),
    "full-gpu4": lambda: _game(gpu=4),
}


@pytest.mark.parametrize("settings", [OperatorSettings(), FULL_SETTINGS], ids=["default", "custom"])
@pytest.mark.parametrize("variant", sorted(GAMES))
def test_every_job_is_schema_valid(variant: str, settings: OperatorSettings) -> None:
    game = GAMES[variant]()
    for phase in ALL_PHASES:
        round_ = 0 if phase == "prepare" else 2
        job = build_job(game, round_, phase, 1, settings)
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    kubernetes_validate.validate(build_configmap(game), K8S_VERSION, strict=True)


def test_names_are_deterministic_and_bounded() -> None:
    game_name = "g" * MAX_GAME_NAME
    longest = job_name(game_name, 9999, "update-adversary", 99)
    assert longest == f"{game_name}-r9999-update-adversary-a99"
    assert len(longest) == 63
    assert job_name(game_name, 9999, "update-adversary", 99) == longest
    for phase in ALL_PHASES:
        assert len(job_name(game_name, 9999, phase, 99)) <= 63
    assert job_name("apo", 1, "sample", 2) == "apo-r0001-sample-a2"
    assert configmap_name("apo") == "apo-game"

    with pytest.raises(ValueError, match="at most 63"):
        job_name(game_name + "x", 9999, "update-adversary", 99)
    with pytest.raises(ValueError, match="at most 63"):
        job_name(game_name, 9999, "update-adversary", 100)
    with pytest.raises(ValueError, match="unknown phase"):
        job_name("apo", 1, "train", 1)
    with pytest.raises(ValueError, match="attempt"):
        job_name("apo", 1, "sample", 0)


def test_job_metadata_and_labels() -> None:
    game = _game(name="g" * MAX_GAME_NAME)
    job = build_job(game, 12, "update-adversary", 99, FULL_SETTINGS)
    meta = job["metadata"]
    assert meta["name"] == "g" * MAX_GAME_NAME + "-r0012-update-adversary-a99"
    assert meta["namespace"] == "team-a"
    assert "ownerReferences" not in meta  # kopf.adopt adds them
    sparring = {
        "app.kubernetes.io/name": "sparring",
        "app.kubernetes.io/component": "phase",
        "app.kubernetes.io/managed-by": "sparring-operator",
        LABEL_GAME: "g" * MAX_GAME_NAME,
        LABEL_ROUND: "12",
        LABEL_PHASE: "update-adversary",
        LABEL_ATTEMPT: "99",
    }
    assert meta["labels"] == sparring | {"kueue.x-k8s.io/queue-name": "gpu-queue"}
    assert job["spec"]["template"]["metadata"]["labels"] == sparring
    assert all(isinstance(v, str) and len(v) <= 63 for v in meta["labels"].values())


def test_job_spec_reliability_settings() -> None:
    job = build_job(_game(), 1, "sample", 3, FULL_SETTINGS)
    spec = job["spec"]
    # Only disruptions are retried inside the Job, and only up to retry.disruptionLimit.
    assert spec["backoffLimit"] == 3
    assert "suspend" not in spec
    assert "ttlSecondsAfterFinished" not in spec
    assert spec["activeDeadlineSeconds"] == 3600
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Count",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"]["containerName"] == "phase"
    assert rules[1]["onExitCodes"]["operator"] == "In"
    assert rules[1]["onExitCodes"]["values"] == [2, 3]  # bad input: the operator does not retry
    # Every other exit fails the Job too (the operator retries it with backoff): the Job's
    # backoffLimit is spent on disruptions alone.
    assert rules[2] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "phase", "operator": "NotIn", "values": [0]},
    }
    capped = _game(full=False)
    capped.spec.phases.default.retry.disruption_limit = 0
    assert build_job(capped, 1, "sample", 1, OperatorSettings())["spec"]["backoffLimit"] == 0
    assert (
        "activeDeadlineSeconds"
        not in build_job(_game(full=False), 1, "sample", 1, OperatorSettings())["spec"]
    )


def test_kueue_label_only_with_queue_name_and_never_suspend() -> None:
    queued = build_job(_game(), 1, "sample", 1, OperatorSettings())
    plain = build_job(_game(full=False), 1, "sample", 1, OperatorSettings())
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    for job in (queued, plain):
        assert "suspend" not in job["spec"]
        assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]


def test_no_credentials_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_KEY)
    game = _game(gpu=4)
    objects = [build_configmap(game)] + [
        build_job(game, 1, phase, 1, FULL_SETTINGS) for phase in ALL_PHASES
    ]
    for obj in objects:
        text = json.dumps(obj)
        assert DUMMY_ACCESS_KEY not in text
        assert DUMMY_SECRET_KEY not in text
    env = _env(objects[1])
    assert env["AWS_ACCESS_KEY_ID"] == {
        "name": "AWS_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "id"}},
    }
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "key"}},
    }
    assert env["AWS_REGION"] == {"name": "AWS_REGION", "value": "eu-west-1"}
    # Every credential-looking variable is a reference, never a value.
    for name, var in env.items():
        if name.startswith("AWS_") and name != "AWS_REGION":
            assert "value" not in var and "secretKeyRef" in var["valueFrom"]
    # Without a secretRef no credential variables at all (the pod's own identity is used).
    minimal_env = _env(build_job(_game(full=False), 1, "sample", 1, OperatorSettings()))
    assert not [n for n in minimal_env if n.startswith("AWS_")]


def test_inline_credentials_are_rejected_before_any_job_exists() -> None:
    with pytest.raises(ValueError, match="Secret"):
        AdversarialGame.model_validate(
            {
                "apiVersion": "sparring.dev/v1alpha1",
                "kind": "AdversarialGame",
                "metadata": {"name": "leaky"},
                "spec": {
                    "storage": {"uri": "s3://bucket", "secretAccessKey": DUMMY_SECRET_KEY},
                    "game": {
                        "policy": {"model": "tiny-random"},
                        "adversary": {"model": "tiny-random"},
                    },
                },
            }
        )


@pytest.mark.parametrize("variant", ["minimal", "full-gpu4"])
def test_pod_security(variant: str) -> None:
    settings = FULL_SETTINGS if variant != "minimal" else OperatorSettings()
    job = build_job(GAMES[variant](), 1, "score", 1, settings)
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = _container(job)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc and "add" not in sc["capabilities"]
    if variant == "minimal":
        assert "serviceAccountName" not in pod
    else:
        assert pod["serviceAccountName"] == "sparring-phase"


def test_container_env_mounts_and_termination_message() -> None:
    job = build_job(_game(gpu=1), 2, "update-policy", 4, FULL_SETTINGS)
    c = _container(job)
    assert c["name"] == "phase"
    assert c["image"] == "registry.example/trainer:cuda"  # per-phase image
    assert c["imagePullPolicy"] == "Always"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {k: v.get("value") for k, v in _env(job).items()}
    assert env["SPARRING_TERMINATION_LOG"] == "/dev/termination-log"
    assert env["SPARRING_SCRATCH"] == "/scratch"
    assert env["SPARRING_CACHE"] == "/scratch/cache"
    assert env["HOME"] == "/scratch"
    assert env["HF_HOME"] == "/scratch/hf"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["SPARRING_ATTEMPT"] == "4"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/sparring"] == {
        "name": "game",
        "mountPath": "/etc/sparring",
        "readOnly": True,
    }
    assert mounts["/scratch"]["name"] == "scratch"
    assert mounts["/tmp"] == {"name": "scratch", "mountPath": "/tmp", "subPath": "tmp"}
    assert mounts["/dev/shm"]["name"] == "shm"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["game"]["configMap"]["name"] == "apo-full-game"
    assert volumes["game"]["configMap"]["items"] == [{"key": "game.json", "path": "game.json"}]
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "50Gi"}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory"}
    assert GAME_FILE == "/etc/sparring/game.json"

    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "training-high"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "spot",
            "operator": "Equal",
            "value": "true",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
    ]

    # The minimal game: default image, no shm, no scheduling fields, no resources.
    m = build_job(_game(full=False), 0, "prepare", 1, OperatorSettings())
    mpod = m["spec"]["template"]["spec"]
    assert _container(m)["image"] == "ghcr.io/sparring-dev/sparring-trainer:0.1.0"
    assert _container(m)["imagePullPolicy"] == "IfNotPresent"
    # No cpu/memory/GPU: only the scratch disk is requested (the scheduler must find room).
    assert _container(m)["resources"] == {"requests": {"ephemeral-storage": "50Gi"}}
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}} in mpod["volumes"]
    big = _game(full=False)
    big.spec.phases.default.resources.scratch = "400Gi"
    bjob = build_job(big, 0, "prepare", 1, OperatorSettings())
    assert _container(bjob)["resources"]["requests"]["ephemeral-storage"] == "400Gi"
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "400Gi"}} in bjob["spec"]["template"][
        "spec"
    ]["volumes"]
    assert {v["name"] for v in mpod["volumes"]} == {"game", "scratch"}
    assert "/dev/shm" not in {mt["mountPath"] for mt in _container(m)["volumeMounts"]}
    for key in ("priorityClassName", "nodeSelector", "tolerations", "serviceAccountName"):
        assert key not in mpod
    assert m["metadata"]["namespace"] == "default"


@pytest.mark.parametrize("gpu", [0, 1, 2, 4, 8])
def test_one_rank_per_gpu_for_several_gpus(gpu: int) -> None:
    job = build_job(_game(gpu=gpu), 3, "update-adversary", 1, OperatorSettings())
    c = _container(job)
    args = ["-m", "sparring_trainer", "update-adversary", "--game", GAME_FILE, "--round", "3"]
    if gpu > 1:  # the trainer starts the ranks under torchrun and keeps the exit status
        assert c["command"] == ["python", *args, "--nproc-per-node", str(gpu)]
    else:
        assert c["command"] == ["python", *args]
    if gpu > 0:
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpu)
        assert c["resources"]["requests"]["nvidia.com/gpu"] == str(gpu)
        assert any(v["name"] == "shm" for v in job["spec"]["template"]["spec"]["volumes"])
    else:
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert not any(v["name"] == "shm" for v in job["spec"]["template"]["spec"]["volumes"])
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"] == "2"
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"] == "8Gi"


@pytest.mark.parametrize("phase", ALL_PHASES)
def test_command_matches_local_runner(phase: str) -> None:
    round_ = 0 if phase == "prepare" else 7
    local = phase_command(Path(GAME_FILE), phase, round_)
    pod = _container(build_job(_game(full=False), round_, phase, 1, OperatorSettings()))["command"]
    # Same module, phase, flags and round; only the interpreter differs.
    assert local[0] == sys.executable and pod[0] == "python"
    assert pod[1:] == local[1:]


@pytest.mark.parametrize("full", [True, False])
def test_game_json_round_trips_and_carries_no_status(full: bool) -> None:
    game = _game(full=full)
    text = game_json(game)
    assert "\n" not in text and ": " not in text  # compact
    raw = json.loads(text)
    assert set(raw) == {"apiVersion", "kind", "metadata", "spec"}
    assert raw["metadata"] == {"name": game.metadata.name, "namespace": game.metadata.namespace}
    assert "status must not leak" not in text
    doc = GameDocument.model_validate_json(text)
    assert doc.spec.game == game.spec.game
    assert doc.spec.storage == game.spec.storage
    assert doc.spec.rounds == game.spec.rounds
    assert doc.metadata.name == game.metadata.name
    assert doc.metadata.namespace == game.metadata.namespace
    # The whole spec parses back into the operator's model unchanged.
    assert AdversarialGame.model_validate(raw).spec == game.spec
    assert game_json(game) == text  # deterministic


def test_configmap() -> None:
    game = _game()
    cm = build_configmap(game)
    assert cm["metadata"]["name"] == "apo-full-game"
    assert cm["metadata"]["namespace"] == "team-a"
    assert cm["metadata"]["labels"][LABEL_GAME] == "apo-full"
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sparring-operator"
    assert cm["data"] == {"game.json": game_json(game)}
