"""Experiment tracking (issue "Bring your own data", item 2) with the real MLflow client
against a local tracking store (sqlite): one run per game, every phase's steps in it, the
rounds' game metrics at step = round; a tracking server that fails never fails a phase."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sparring_trainer.config import MlflowTracking
from sparring_trainer.tracking import GAME_TAG, MlflowRun

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


@pytest.mark.slow  # a tiny game
def test_apo_tiny_tracks_its_steps_and_rounds_in_one_mlflow_run(tmp_path: Path) -> None:
    import json

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["rounds"] = 1
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path / 'store'}"}
    doc["spec"]["tracking"] = {"mlflow": {"trackingUri": uri}}
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
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
