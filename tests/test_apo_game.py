"""`sparring run` plays the APO game end to end, resumes after a kill, and runs on S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import is_committed, open_store, phase_prefix

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "apo-tiny.yaml"
PHASES = ("sample", "update-adversary", "score", "update-policy", "evaluate")


def sparring(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparring_operator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def all_markers(rounds: int) -> list[tuple[int, str]]:
    return [(0, "prepare")] + [(r, p) for r in range(1, rounds + 1) for p in PHASES]


def committed_at(store_dir: Path, game: str = "apo-tiny") -> dict[tuple[int, str], str]:
    store = open_store(StorageSpec(uri=f"file://{store_dir}"))
    out = {}
    for r, p in all_markers(2):
        prefix = phase_prefix("default", game, r, p)
        if is_committed(store, prefix):
            out[(r, p)] = json.loads(store.get_bytes(prefix + "_SUCCESS"))["committed_at"]
    return out


@pytest.fixture(scope="module")
def finished_game(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The tiny example played once to the end; several tests read its store."""
    work = tmp_path_factory.mktemp("game")
    result = sparring(
        "run", str(TINY), "--store", f"file://{work}/store", "--output", "json", cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "store", json.loads(result.stdout)


def test_tiny_game_succeeds_with_metrics_for_every_round(
    finished_game: tuple[Path, dict[str, Any]],
) -> None:
    store_dir, status = finished_game
    assert status["phase"] == "Succeeded"
    assert status["completedRounds"] == 2
    by_round = {r["round"]: r for r in status["rounds"]}
    for r in (1, 2):
        metrics = by_round[r]["metrics"]
        for name in ("rm_accuracy", "rm_ece", "reward_mean", "win_rate"):
            assert name in metrics, f"round {r} lacks {name}: {sorted(metrics)}"
        assert 0.0 <= metrics["rm_accuracy"] <= 1.0 and 0.0 <= metrics["rm_ece"] <= 1.0
        assert set(by_round[r]["artifacts"]) == set(PHASES)
    assert status["latestCheckpoint"].endswith("round-0002/update-policy/policy/")
    assert set(committed_at(store_dir)) == set(all_markers(2))


def test_rerun_of_a_finished_game_redoes_nothing(
    finished_game: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    store_dir, _ = finished_game
    before = committed_at(store_dir)
    result = sparring(
        "run", str(TINY), "--store", f"file://{store_dir}", "--output", "json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["phase"] == "Succeeded"
    assert committed_at(store_dir) == before


def _checkpoint_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors |= load_file(str(file))
    assert tensors, f"no safetensors under {path}"
    return tensors


def _changed(before: Path, after: Path) -> bool:
    a, b = _checkpoint_tensors(before), _checkpoint_tensors(after)
    return any(not (a[k] == b[k]).all() for k in a if k in b)


def test_update_phases_change_the_models(finished_game: tuple[Path, dict[str, Any]]) -> None:
    store_dir, _ = finished_game
    game = store_dir / "default" / "apo-tiny"
    assert _changed(game / "round-0000/prepare/base-rm", game / "round-0001/update-adversary/rm")
    assert _changed(
        game / "round-0000/prepare/base-policy", game / "round-0001/update-policy/policy"
    )
    assert _changed(
        game / "round-0001/update-policy/policy", game / "round-0002/update-policy/policy"
    )


def test_every_training_phase_commits_a_loss_per_optimiser_step(
    finished_game: tuple[Path, dict[str, Any]],
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    game = Path(finished_game[0]) / "default" / "apo-tiny"

    def losses(phase: str) -> dict[str, list[int]]:
        """Each training run's steps with a loss, from TensorBoard's own reader; every step
        also has its tokens per second (Sparring's loop and TRL's alike)."""
        runs = {}
        for folder in sorted((game / phase / "tensorboard").iterdir()):
            events = EventAccumulator(str(folder))
            events.Reload()
            runs[folder.name] = [e.step for e in events.Scalars("train/loss")]
            rates = events.Scalars("train/tokens_per_second")
            assert [e.step for e in rates] == runs[folder.name], folder
            assert all(e.value > 0 for e in rates), folder
        return runs

    # prepare trains RM_Base and the judge; each update trains its one model.
    assert set(losses("round-0000/prepare")) == {"reward-model", "reward-model-2"}
    for phase, run in [("update-adversary", "reward-model"), ("update-policy", "dpo")]:
        metrics = json.loads((game / "round-0001" / phase / "metrics.json").read_text())
        steps = int(metrics["train_steps"])
        assert steps > 1 and losses(f"round-0001/{phase}") == {run: list(range(1, steps + 1))}
    manifest = json.loads((game / "round-0001/update-policy/_SUCCESS").read_text())
    assert "tensorboard/dpo/events.out.tfevents.0.sparring" in manifest["files"]


@pytest.mark.parametrize("method", ["rjs", "rrhf"])
def test_rjs_and_rrhf_update_the_policy(
    finished_game: tuple[Path, dict[str, Any]], tmp_path: Path, method: str
) -> None:
    """Replays round 1's update-policy with another method on a copy of the store."""
    import shutil

    store_dir, _ = finished_game
    copy = tmp_path / "store"
    shutil.copytree(
        store_dir / "default" / "apo-tiny" / "round-0000", copy / "default/apo-tiny/round-0000"
    )
    for phase in ("sample", "update-adversary", "score"):
        src = store_dir / "default/apo-tiny/round-0001" / phase
        shutil.copytree(src, copy / "default/apo-tiny/round-0001" / phase)
    doc = yaml.safe_load(TINY.read_text())
    doc["spec"]["storage"]["uri"] = f"file://{copy}"
    doc["spec"]["game"]["policy"]["update"]["method"] = method
    game_file = tmp_path / "game.yaml"
    game_file.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparring_trainer",
            "update-policy",
            "--game",
            str(game_file),
            "--round",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["train_steps"] >= 1
    game = copy / "default/apo-tiny"
    assert _changed(
        game / "round-0000/prepare/base-policy", game / "round-0001/update-policy/policy"
    )


def test_killed_mid_game_resumes_without_redoing_committed_phases(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sparring_operator",
            "run",
            str(TINY),
            "--store",
            f"file://{store_dir}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while (1, "update-adversary") not in committed_at(store_dir):
            assert proc.poll() is None, "the game ended before it could be killed"
            assert time.monotonic() < deadline, "round 1 never reached update-adversary"
            time.sleep(0.2)  # polling the store for a marker, bounded by the deadline
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its phase child, mid-phase
        proc.wait()
    before = committed_at(store_dir)
    assert (2, "evaluate") not in before
    result = sparring(
        "run", str(TINY), "--store", f"file://{store_dir}", "--output", "json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["phase"] == "Succeeded"
    after = committed_at(store_dir)
    assert set(after) == set(all_markers(2))
    assert {m: after[m] for m in before} == before, "a committed phase was run again"


def test_game_on_s3(s3_storage: StorageSpec, tmp_path: Path) -> None:
    doc = yaml.safe_load(TINY.read_text())
    doc["spec"]["rounds"] = 1
    doc["spec"]["storage"] = {
        "uri": s3_storage.uri,
        "endpoint": s3_storage.endpoint,
        "pathStyle": True,
    }
    game_file = tmp_path / "game.yaml"
    game_file.write_text(yaml.safe_dump(doc))
    result = sparring("run", str(game_file), "--output", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout)
    assert status["phase"] == "Succeeded" and status["completedRounds"] == 1
    store = open_store(s3_storage)
    for r, p in all_markers(1):
        assert is_committed(store, phase_prefix("default", "apo-tiny", r, p)), (r, p)
    assert status["latestCheckpoint"].startswith("s3://")
    assert store.list(phase_prefix("default", "apo-tiny", 1, "update-policy") + "policy/")
