"""A game on its runtime (issue "Platform-owned runtimes"): each field the runtime does not allow
is refused by name, and what it does allow comes out in the effective game the operator plays,
down to the phase Job it builds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from sparring_operator.api import AdversarialGame
from sparring_operator.jobs import OperatorSettings, build_job, game_json
from sparring_operator.runtimeapi import RuntimeSpec
from sparring_operator.runtimes import (
    RuntimeRefused,
    apply_runtime,
    builtin_runtime,
    image_allowed,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
IMAGE = "registry.example.com/ml/sparring-trainer:1.2.0"
NAME = "ClusterSparringRuntime 'gpu'"
RUNTIME: dict[str, Any] = {
    "images": [IMAGE, "registry.example.com/ml/sparring-trainer:*"],
    "imagePullPolicy": "Always",
    "serviceAccountName": "team-phase",
    "phases": {
        "default": {"resources": {"cpu": "2", "memory": "8Gi"}},
        "updatePolicy": {"resources": {"gpu": 1, "memory": "40Gi"}},
    },
    "scheduling": {"queueName": "team-queue", "priorityClassName": "batch"},
    "storage": {
        "uri": "s3://platform-artifacts/sparring",
        "endpoint": "https://minio.storage.svc:9000",
        "pathStyle": True,
        "secretRef": {"name": "platform-store"},
        "allowedUris": ["s3://team-bucket"],
        "allowedEndpoints": ["https://*.s3.example.com"],
    },
    "allowedModelSources": ["tiny-random", "hf://HuggingFaceTB/"],
    "overridable": ["scheduling"],
}


def game(**spec: Any) -> AdversarialGame:
    doc = copy.deepcopy(TINY)
    doc["metadata"]["namespace"] = "team-a"
    doc["spec"].update(spec)
    return AdversarialGame.model_validate(doc)


def runtime(**changes: Any) -> RuntimeSpec:
    return RuntimeSpec.model_validate({**copy.deepcopy(RUNTIME), **changes})


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host}:{port}, which this case must not need")


def refusal(g: AdversarialGame, rt: RuntimeSpec | None = None, resolve: Any = no_dns) -> str:
    with pytest.raises(RuntimeRefused) as caught:
        apply_runtime(g, rt or runtime(), NAME, OperatorSettings(), resolve)
    return str(caught.value)


def test_the_unchanged_tiny_game_plays_in_the_runtimes_store_with_its_images_and_identity() -> None:
    on = apply_runtime(game(), runtime(), NAME, OperatorSettings(), no_dns)
    spec = on.game.spec
    # file://./.sparring is the local store: on the cluster the game plays in the runtime's.
    assert spec.storage.uri == "s3://platform-artifacts/sparring"
    assert spec.storage.endpoint == "https://minio.storage.svc:9000"
    assert spec.storage.path_style is True
    assert spec.storage.secret_ref is not None and spec.storage.secret_ref.name == "platform-store"
    assert spec.game == game().spec.game  # what the game computes is untouched
    job = build_job(on.game, 1, "update-policy", 1, on.settings)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert container["imagePullPolicy"] == "Always"
    assert pod["serviceAccountName"] == "team-phase"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the runtime's updatePolicy
    assert pod["priorityClassName"] == "batch"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    sample = build_job(on.game, 1, "sample", 1, on.settings)["spec"]["template"]["spec"]
    assert sample["containers"][0]["resources"]["requests"]["memory"] == "8Gi"  # its default
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "platform-store"
    # The phases read the effective store from the game document.
    assert '"uri":"s3://platform-artifacts/sparring"' in game_json(on.game)


@pytest.mark.parametrize(
    ("phases", "field"),
    [
        ({"default": {"image": "docker.io/someone/miner:latest"}}, "spec.phases.default.image"),
        ({"updatePolicy": {"image": "registry.example.com/ml/other:1"}},
         "spec.phases.updatePolicy.image"),
    ],
)  # fmt: skip
def test_an_image_the_runtime_does_not_list_is_refused_by_its_field(
    phases: dict[str, Any], field: str
) -> None:
    message = refusal(game(phases=phases))
    assert message.startswith(f"{field}: "), message
    assert NAME in message


def test_an_image_under_an_allowed_prefix_runs() -> None:
    chosen = "registry.example.com/ml/sparring-trainer:1.3.0-rc1"
    on = apply_runtime(game(phases={"sample": {"image": chosen}}), runtime(), NAME,
                       OperatorSettings(), no_dns)  # fmt: skip
    pod = build_job(on.game, 1, "sample", 1, on.settings)["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == chosen
    assert not image_allowed("registry.example.com/ml/sparring-trainer", ["x:*"])
    assert not image_allowed(IMAGE + "-evil", [IMAGE])


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"pod": {"imagePullPolicy": "IfNotPresent"}}, "spec.pod.imagePullPolicy"),
        ({"phases": {"updatePolicy": {"resources": {"gpu": 2}}}},
         "spec.phases.updatePolicy.resources"),
        ({"storage": {"uri": "s3://team-bucket", "secretRef": {"name": "mine"}}},
         "spec.storage.uri"),
    ],
)  # fmt: skip
def test_what_the_runtime_does_not_let_a_game_override_is_refused(
    spec: dict[str, Any], field: str
) -> None:
    message = refusal(game(**spec))
    assert message.startswith(f"{field}: {NAME} does not let a game set its "), message


def test_scheduling_the_runtime_lets_a_game_set_overlays_the_runtimes() -> None:
    on = apply_runtime(game(scheduling={"queueName": "team-a-urgent"}), runtime(), NAME,
                       OperatorSettings(), no_dns)  # fmt: skip
    assert on.game.spec.scheduling.queue_name == "team-a-urgent"
    assert on.game.spec.scheduling.priority_class_name == "batch"
    closed = runtime(overridable=[])
    assert refusal(game(scheduling={"queueName": "x"}), closed).startswith(
        "spec.scheduling.queueName: "
    )


def test_a_model_from_a_source_the_runtime_does_not_list_is_refused() -> None:
    doc = copy.deepcopy(TINY["spec"]["game"])
    doc["adversary"]["model"] = "hf://someone/rm"
    message = refusal(game(game=doc))
    assert message.startswith("spec.game.adversary.model: 'hf://someone/rm' is not a model "), (
        message
    )


def test_a_store_the_game_names_must_be_listed_reached_as_allowed_and_opened_with_its_secret() -> (
    None
):
    rt = runtime(overridable=["storage"])
    # Not listed (team-b's bucket, or a prefix inside the allowed store).
    for uri in ("s3://team-b-bucket", "s3://team-bucket/team-b"):
        message = refusal(game(storage={"uri": uri, "secretRef": {"name": "mine"}}), rt)
        assert message.startswith(f"spec.storage.uri: {uri!r} is not a store "), message
    # Listed, through an endpoint the runtime does not allow: refused before any lookup.
    own = {"uri": "s3://team-bucket", "secretRef": {"name": "mine"}}
    message = refusal(game(storage={**own, "endpoint": "http://127.0.0.1:9000"}), rt)
    assert message.startswith("spec.storage.endpoint: http://127.0.0.1:9000 is not an allowed")
    # An allowed name that resolves to the metadata service.
    metadata = {"eu.s3.example.com": ["169.254.169.254"]}
    message = refusal(
        game(storage={**own, "endpoint": "https://eu.s3.example.com"}), rt,
        lambda host, port: metadata[host],
    )  # fmt: skip
    assert message.startswith("spec.storage.endpoint: eu.s3.example.com resolves to 169.254."), (
        message
    )
    # Allowed: the game's store, with the game's own Secret and never the runtime's.
    on = apply_runtime(game(storage=own), rt, NAME, OperatorSettings(), no_dns)
    assert on.game.spec.storage.uri == "s3://team-bucket"
    assert on.game.spec.storage.secret_ref is not None
    assert on.game.spec.storage.secret_ref.name == "mine"
    lone = apply_runtime(game(storage={"uri": "s3://team-bucket"}), rt, NAME, OperatorSettings(),
                         no_dns)  # fmt: skip
    assert lone.game.spec.storage.secret_ref is None  # the operator stalls it (NoStoreCredentials)


def test_runtime_defaults_the_game_cannot_play_with_are_refused_before_any_job() -> None:
    # 8 GPUs for update-policy: the policy's batchSize 4 does not divide among 8 ranks.
    phases = {"updatePolicy": {"resources": {"gpu": 8}}}
    message = refusal(game(), runtime(phases=phases))
    assert message.startswith(
        f"on {NAME}: spec.game.policy.update.batchSize: 4 does not divide among the 8 GPUs"
    ), message


def test_a_runtime_whose_stores_nest_or_whose_default_image_is_a_pattern_is_invalid() -> None:
    storage = {"allowedUris": ["s3://shared", "s3://shared/team-b"]}
    with pytest.raises(ValidationError, match="lies inside"):
        runtime(storage=storage)
    with pytest.raises(ValidationError, match="whole image name"):
        runtime(images=["registry.example.com/ml/*"])


def test_the_builtin_runtime_plays_a_game_as_the_operator_always_has() -> None:
    settings = OperatorSettings(trainer_image="trainer:dev", phase_service_account="phase")
    doc = {"uri": "s3://bucket", "endpoint": "http://127.0.0.1:9000", "secretRef": {"name": "s"}}
    g = game(storage=doc, phases={"sample": {"image": "elsewhere/any:1"}})
    resolve = lambda host, port: ["127.0.0.1"]  # noqa: E731
    on = apply_runtime(g, builtin_runtime(settings), "built-in", settings, resolve)
    assert on.game.spec.storage == g.spec.storage
    assert build_job(on.game, 1, "sample", 1, on.settings) == build_job(g, 1, "sample", 1, settings)
    assert build_job(on.game, 1, "score", 1, on.settings) == build_job(g, 1, "score", 1, settings)


def test_scheduling_per_phase_replaces_the_games_field_by_field() -> None:
    phases = {
        "default": {"resources": {"cpu": "2"}},
        "sample": {"scheduling": {"nodeSelector": {"pool": "inference"}}},
    }
    rt = runtime(phases=phases, scheduling={"queueName": "team-queue",
                                            "nodeSelector": {"pool": "training"}})  # fmt: skip
    on = apply_runtime(game(), rt, NAME, OperatorSettings(), no_dns)

    def placed(phase: str) -> tuple[dict[str, str], str]:
        job = build_job(on.game, 1, phase, 1, on.settings)
        pod = job["spec"]["template"]["spec"]
        return pod.get("nodeSelector", {}), job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]

    assert placed("sample") == ({"pool": "inference"}, "team-queue")
    assert placed("update-policy") == ({"pool": "training"}, "team-queue")
    # A game's own per-phase scheduling where the runtime lets it choose, and not elsewhere.
    mine = {"sample": {"scheduling": {"queueName": "team-a-burst"}}}
    on = apply_runtime(game(phases=mine), rt, NAME, OperatorSettings(), no_dns)
    assert placed("sample") == ({"pool": "inference"}, "team-a-burst")
    closed = runtime(overridable=[])
    assert refusal(game(phases=mine), closed).startswith(
        "spec.phases.sample.scheduling.queueName: "
    )


def test_the_runtimes_secret_is_never_lent_to_a_store_the_game_chose() -> None:
    rt = runtime(overridable=["storage"])
    borrowed = {"uri": "s3://team-bucket", "secretRef": {"name": "platform-store"}}
    message = refusal(game(storage=borrowed), rt)
    assert message.startswith("spec.storage.secretRef: 'platform-store' is "), message


def test_the_sandbox_is_its_own_override_apart_from_scheduling() -> None:
    sandbox = {"runtimeClassName": "runc"}
    message = refusal(game(scheduling=sandbox))  # scheduling overridable, the sandbox not
    assert message.startswith("spec.scheduling.runtimeClassName: "), message
    per_phase = {"sample": {"scheduling": sandbox}}
    assert refusal(game(phases=per_phase)).startswith(
        "spec.phases.sample.scheduling.runtimeClassName: "
    )
    rt = runtime(overridable=["scheduling", "runtimeClassName"])
    on = apply_runtime(game(scheduling=sandbox), rt, NAME, OperatorSettings(), no_dns)
    assert on.game.spec.scheduling.runtime_class_name == "runc"


def test_the_runtimes_own_store_and_an_allowed_one_may_not_nest() -> None:
    storage = {"uri": "s3://shared", "allowedUris": ["s3://shared/team-b"]}
    with pytest.raises(ValidationError, match="lie one inside the other"):
        runtime(storage=storage)


def test_the_example_runtimes_are_valid_and_play_a_game_that_names_them() -> None:
    path = ROOT / "examples" / "platform" / "runtimes.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    assert [d["kind"] for d in docs] == ["ClusterSparringRuntime", "SparringRuntime"]
    for doc in docs:
        spec = RuntimeSpec.model_validate(doc["spec"])
        named = game(runtimeRef={"kind": doc["kind"], "name": doc["metadata"]["name"]})
        doc_game = copy.deepcopy(named.spec.game.model_dump(by_alias=True))
        doc_game["policy"]["model"] = "hf://meta-llama/Llama-3.2-1B"
        doc_game["adversary"]["model"] = "hf://mistralai/Mistral-7B-v0.1"
        doc_game["policy"]["update"]["batchSize"] = 64  # divides among update-policy's 8 GPUs
        g = game(runtimeRef=named.spec.runtime_ref.model_dump(), game=doc_game)  # type: ignore[union-attr]
        on = apply_runtime(g, spec, doc["metadata"]["name"], OperatorSettings(), no_dns)
        assert on.game.spec.storage.uri == "s3://ml-artifacts/sparring"
