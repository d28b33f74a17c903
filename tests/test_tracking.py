"""Experiment tracking (issue "Bring your own data", item 2) with the real MLflow client
against a local tracking store (sqlite): one run per game, every phase's steps in it, the
rounds' game metrics at step = round; a tracking server that fails never fails a phase. W&B
with the real wandb package, offline (`WANDB_MODE=offline`), its files read back."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness.wandbfile import offline_runs
from sparring_trainer.document import MlflowTracking, WandbTracking
from sparring_trainer.tracking import GAME_TAG, MlflowRun, WandbRun

ROOT = Path(__file__).resolve().parents[1]


def _runs(uri: str, game: str) -> list[object]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sparring")
    assert experiment is not None
    return list(
        client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{GAME_TAG}` = '{game}'"
        )
    )


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_phases_of_one_game_share_its_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = MlflowTracking(tracking_uri=uri)
    first = MlflowRun(spec, "team/apo", "r1/update-adversary/")
    first.log(1, {"loss": 0.7}, "r1/update-adversary/reward-model/")
    first.log(2, {"loss": 0.5}, "r1/update-adversary/reward-model/")
    MlflowRun(spec, "team/apo", "r1/evaluate/").log(1, {"rm_accuracy": 0.6}, "")
    MlflowRun(spec, "team/other", "r0/prepare/").log(0, {"rm_accuracy": 0.4}, "")
    (run,) = _runs(uri, "team/apo")
    assert run.info.run_name == "apo"  # type: ignore[attr-defined]
    run_id = run.info.run_id  # type: ignore[attr-defined]
    assert _history(uri, run_id, "r1/update-adversary/reward-model/loss") == [(1, 0.7), (2, 0.5)]
    assert _history(uri, run_id, "rm_accuracy") == [(1, 0.6)]
    assert len(_runs(uri, "team/other")) == 1


def test_a_failing_server_is_reported_once_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run = MlflowRun(MlflowTracking(tracking_uri="http://127.0.0.1:9"), "team/apo", "r1/x/")
    with caplog.at_level(logging.WARNING, logger="sparring_trainer.tracking"):
        run.log(1, {"loss": 1.0})
        run.log(2, {"loss": 0.5})
    assert run.failed
    assert [r.getMessage().startswith("MLflow at http://127.0.0.1:9") for r in caplog.records] == [
        True
    ]


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """W&B writing offline under a fresh folder, with no key and nothing of the user's. wandb
    reads its environment once per process, into a singleton: torn down around each test."""
    import wandb

    wandb.teardown()
    folder = tmp_path / "wandb-dir"
    folder.mkdir()
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(folder),
                        "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(folder / "config"),
                        "WANDB_CACHE_DIR": str(folder / "cache")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(folder / "no-netrc"))  # nor a key from `wandb login`
    yield folder
    wandb.teardown()


def test_a_phase_is_one_wandb_run_in_its_games_group(wandb_offline: Path) -> None:
    run = WandbRun(WandbTracking(project="sparring"), "team/apo", 1, "update-adversary")
    run.log(1, {"loss": 0.7}, "r1/update-adversary/reward-model/")
    run.log(2, {"loss": 0.5}, "r1/update-adversary/reward-model/")
    run.log(1, {"loss": 0.9}, "r1/update-adversary/reward-model-2/")  # its own step axis
    run.log(1, {"rm_accuracy": 0.6}, "")  # a game metric, against the round
    run.close()
    (written,) = offline_runs(wandb_offline)
    assert (written.group, written.job_type, written.name) == (
        "team/apo", "update-adversary", "team/apo r1 update-adversary"
    )  # fmt: skip
    assert written.history == [
        {"r1/update-adversary/reward-model/step": 1, "r1/update-adversary/reward-model/loss": 0.7},
        {"r1/update-adversary/reward-model/step": 2, "r1/update-adversary/reward-model/loss": 0.5},
        {"r1/update-adversary/reward-model-2/step": 1,
         "r1/update-adversary/reward-model-2/loss": 0.9},
        {"round": 1, "rm_accuracy": 0.6},
    ]  # fmt: skip


def test_wandb_without_a_key_is_reported_once_and_never_raises(
    wandb_offline: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "online")  # online, and no API key anywhere
    wandb.teardown()  # so that wandb reads the changed environment
    run = WandbRun(WandbTracking(project="sparring"), "team/apo", 1, "x")
    with caplog.at_level(logging.WARNING, logger="sparring_trainer.tracking"):
        run.log(1, {"loss": 1.0})
        run.log(2, {"loss": 0.5})
        run.close()
    assert run.failed
    assert [r.getMessage().startswith("W&B project sparring") for r in caplog.records] == [True]


@pytest.mark.slow  # a tiny game
def test_apo_tiny_tracks_its_steps_and_rounds_in_one_mlflow_run(tmp_path: Path) -> None:
    import json

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["rounds"] = 1
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path / 'store'}"}
    doc["spec"]["tracking"] = {"mlflow": {"trackingUri": uri}, "wandb": {"project": "sparring"}}
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc))
    wandb_dir = tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(wandb_dir / "config")}  # fmt: skip
    played = subprocess.run(
        [sys.executable, "-m", "sparring_operator", "run", str(game)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert played.returncode == 0, played.stderr[-3000:]
    (run,) = _runs(uri, "default/apo-tiny")
    run_id = run.info.run_id  # type: ignore[attr-defined]
    phases = tmp_path / "store" / "default" / "apo-tiny" / "round-0001"
    for phase, name in [("update-adversary", "reward-model"), ("update-policy", "dpo")]:
        steps = int(json.loads((phases / phase / "metrics.json").read_text())["train_steps"])
        losses = _history(uri, run_id, f"r1/{phase}/{name}/loss")
        assert [s for s, _ in losses] == list(range(1, steps + 1))
    evaluated = json.loads((phases / "evaluate" / "metrics.json").read_text())
    assert _history(uri, run_id, "rm_accuracy")[-1] == (1, pytest.approx(evaluated["rm_accuracy"]))
    assert [s for s, _ in _history(uri, run_id, "rm_accuracy")] == [0, 1]  # RM_Base, round 1
    # W&B: a run per phase that has something to log (sample and score train nothing and
    # report no game metrics), in the game's group; each training run against its own step.
    runs = offline_runs(wandb_dir)
    assert {r.group for r in runs} == {"default/apo-tiny"}
    assert sorted(r.name for r in runs) == [
        "default/apo-tiny r0 prepare", "default/apo-tiny r1 evaluate",
        "default/apo-tiny r1 update-adversary", "default/apo-tiny r1 update-policy",
    ]  # fmt: skip
    (policy,) = [r for r in runs if r.job_type == "update-policy"]
    steps = int(json.loads((phases / "update-policy" / "metrics.json").read_text())["train_steps"])
    assert [h["r1/update-policy/dpo/step"] for h in policy.history
            if "r1/update-policy/dpo/loss" in h] == list(range(1, steps + 1))  # fmt: skip
    (evaluate,) = [r for r in runs if r.job_type == "evaluate"]
    assert {"round": 1, "rm_accuracy": pytest.approx(evaluated["rm_accuracy"])} == {
        k: v for k, v in evaluate.history[-1].items() if k in ("round", "rm_accuracy")
    }
