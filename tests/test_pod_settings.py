"""Pod settings a game gives (issue "Many nodes per phase", item 3) land in every phase Job
beside the operator's own, and never replace them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sparring_operator.api import AdversarialGame
from sparring_operator.jobs import OperatorSettings, build_job

ROOT = Path(__file__).resolve().parents[1]
DOC = yaml.safe_load((ROOT / "tests" / "data" / "pod-settings.yaml").read_text())


def _job(doc: dict[str, Any], settings: OperatorSettings | None = None) -> dict[str, Any]:
    game = AdversarialGame.model_validate(doc)
    return build_job(game, 1, "update-policy", 1, settings or OperatorSettings())


def test_every_setting_reaches_the_pod_beside_the_operators() -> None:
    job = _job(DOC)
    template = job["spec"]["template"]
    pod, (container,) = template["spec"], template["spec"]["containers"]
    env = [e["name"] for e in container["env"]]
    # The operator's variables first, untouched; the game's after them.
    assert env[-2:] == ["HF_TOKEN", "NCCL_DEBUG"] and "SPARRING_SCRATCH" in env[:-2]
    assert container["env"][-2]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert container["envFrom"] == [{"prefix": "TEAM_", "configMapRef": {"name": "team-settings"}}]
    assert container["imagePullPolicy"] == "Always"  # the game's, over the operator's
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {"/etc/sparring", "/scratch", "/tmp", "/dev/shm", "/data", "/etc/ssl/team"} == set(
        mounts
    )
    assert mounts["/data"] == {"name": "datasets", "mountPath": "/data", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # /dev/shm without a GPU, because its size was asked for.
    assert volumes["shm"] == {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    assert volumes["certs"] == {"name": "certs", "secret": {"secretName": "ca", "defaultMode": 292}}
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["runtimeClassName"] == "nvidia"
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [
        "NVIDIA-H100-80GB-HBM3"
    ]
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    labels = template["metadata"]["labels"]
    assert labels["team"] == "a" and labels["sparring.dev/phase"] == "update-policy"
    assert template["metadata"]["annotations"] == {"example.com/owner": "alice"}
    # What the operator hardens stays as it was.
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_without_settings_the_job_is_as_before() -> None:
    doc = {k: v for k, v in DOC.items()} | {"spec": {"game": DOC["spec"]["game"]}}
    settings = OperatorSettings(image_pull_policy="IfNotPresent")
    template = _job(doc, settings)["spec"]["template"]
    pod, (container,) = template["spec"], template["spec"]["containers"]
    assert container["imagePullPolicy"] == "IfNotPresent" and "envFrom" not in container
    assert [v["name"] for v in pod["volumes"]] == ["game", "scratch"]  # no GPU, no shm asked
    for key in ("affinity", "topologySpreadConstraints", "runtimeClassName", "imagePullSecrets"):
        assert key not in pod
    assert "annotations" not in template["metadata"]


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("pod", "env", 1, "name"), "SPARRING_ATTEMPT", "set by the operator"),
        (("pod", "env", 1, "value"), None, None),  # NCCL_DEBUG without a value: fine
        (("pod", "env", 1, "name"), "TOKENIZERS_PARALLELISM", None),  # not a token
        (("pod", "env", 1, "name"), "WANDB_API_KEY", "looks like a credential"),
        (("pod", "env", 1, "name"), "db_password", "looks like a credential"),
        (("pod", "volumeMounts", 1, "mountPath"), "/tmp/certs", "overlaps /tmp"),
        (("pod", "volumeMounts", 1, "mountPath"), "/etc", "overlaps /etc/sparring"),
        (("pod", "volumes", 1, "name"), "scratch", "a volume of the operator's"),
        (("pod", "labels"), {"job-name": "x"}, "the operator's or the Job controller's"),
        (("pod", "labels"), {"team": "not a value"}, "not a valid label value"),
        (("pod", "annotations"), {"bad key!": "x"}, "not a valid key"),
        (("scheduling", "topologySpreadConstraints", 0, "minDomains"), 2, "DoNotSchedule"),
    ],
)
def test_what_would_break_the_operators_pods_is_refused(
    path: tuple[Any, ...], value: Any, error: str | None
) -> None:
    doc = yaml.safe_load(yaml.safe_dump(DOC))
    node = doc["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    if error is None:
        AdversarialGame.model_validate(doc)
        return
    with pytest.raises(ValueError, match=error):
        AdversarialGame.model_validate(doc)


def test_a_model_cache_is_mounted_and_every_cache_points_there() -> None:
    doc = yaml.safe_load(yaml.safe_dump(DOC))
    doc["spec"]["modelCache"] = {"claimName": "models"}
    (container,) = _job(doc)["spec"]["template"]["spec"]["containers"]
    pod = _job(doc)["spec"]["template"]["spec"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models"}} in pod[
        "volumes"
    ]
    assert {"name": "model-cache", "mountPath": "/model-cache"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SPARRING_CACHE"] == "/model-cache" and env["HF_HOME"] == "/model-cache/hf"
    assert env["SPARRING_CHECKPOINT_CACHE"] == "/model-cache/checkpoints"
    assert [e["name"] for e in container["env"]].count("HF_HOME") == 1
    # A volume of each pod's own, from a storage class.
    doc["spec"]["modelCache"] = {"ephemeral": {"size": "500Gi", "storageClassName": "local-nvme"}}
    (volume,) = [v for v in _job(doc)["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "model-cache"]  # fmt: skip
    assert volume["ephemeral"]["volumeClaimTemplate"]["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "500Gi"}},
        "storageClassName": "local-nvme",
    }
    for both_or_none in ({}, {"claimName": "models", "ephemeral": {"size": "1Gi"}}):
        doc["spec"]["modelCache"] = both_or_none
        with pytest.raises(ValueError, match="exactly one of claimName"):
            AdversarialGame.model_validate(doc)
    # Without one, each pod caches in its own scratch and keeps no checkpoints.
    (plain,) = _job(DOC)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in plain["env"]}
    assert env["SPARRING_CACHE"] == "/scratch/cache" and "SPARRING_CHECKPOINT_CACHE" not in env


def _on_nodes(doc: dict[str, Any], nodes: int, gpu: int) -> AdversarialGame:
    """The game with every phase on `nodes` nodes of `gpu` GPUs."""
    game = AdversarialGame.model_validate(doc)
    default = game.spec.phases.default
    resources = default.resources.model_copy(update={"nodes": nodes, "gpu": gpu})
    phases = game.spec.phases.model_copy(
        update={"default": default.model_copy(update={"resources": resources})}
    )
    return game.model_copy(update={"spec": game.spec.model_copy(update={"phases": phases})})


def test_a_multi_node_attempt_is_an_indexed_job_meeting_at_pod_zero() -> None:
    from sparring_operator.rendezvous import build_rendezvous_service

    game = _on_nodes(DOC, 2, 4)
    job = build_job(game, 1, "update-policy", 3, OperatorSettings())
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0  # any pod failing fails the attempt
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name
    command = pod["containers"][0]["command"]
    assert command[command.index("--nproc-per-node") + 1] == "4"
    assert command[command.index("--nnodes") + 1] == "2"
    endpoint = command[command.index("--rdzv-endpoint") + 1]
    assert endpoint == f"{name}-0.{name}.default.svc:29500"
    service = build_rendezvous_service(game, 1, "update-policy", 3)
    assert service["metadata"]["name"] == name and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    # The Service selects exactly this attempt's pods.
    labels, selector = spec["template"]["metadata"]["labels"], service["spec"]["selector"]
    assert selector["sparring.dev/attempt"] == "3"
    assert all(labels[k] == v for k, v in selector.items())
    # One node stays a plain Job with a local rendezvous.
    single = build_job(_on_nodes(DOC, 1, 4), 1, "update-policy", 3, OperatorSettings())["spec"]
    assert "completionMode" not in single and "subdomain" not in single["template"]["spec"]
    assert "--nnodes" not in single["template"]["spec"]["containers"][0]["command"]
