"""What `sparring run` shows while it plays (issue "Bring your own data...", item 6): a stage
or a count per phase on its progress bar, and a failed game's error once, whole, without an
empty table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from sparring_operator.local import bar_update

ROOT = Path(__file__).resolve().parents[1]


def test_a_stage_line_clears_the_count_and_a_count_line_sets_it() -> None:
    assert bar_update("[score] stage: loading rm") == (
        "loading rm",
        {"completed": 0, "total": None, "description": "loading rm"},
    )
    assert bar_update("[score] answers scored 64/96") == (
        "answers scored",
        {"completed": 64, "total": 96, "description": "answers scored 64/96"},
    )
    assert bar_update("2026-12-02 10:00:00 INFO sparring_trainer.data: read 96 pairs") is None
    # A stage's text is the phase's own: a bracket in it is not rich markup.
    assert bar_update("[prepare] stage: loading [bold]x")[0] == "loading \\[bold]x"


def _bad_data_game(tmp_path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path / 'store'}"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\n')  # no rejected answer
    doc["spec"]["game"]["data"]["preferences"] = {"path": str(bad)}
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc))
    return game


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_failed_game_prints_its_whole_error_once_and_no_empty_table(tmp_path: Path) -> None:
    game = _bad_data_game(tmp_path)
    done = _run("-m", "sparring_operator", "run", str(game), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    err = " ".join(done.stderr.split())
    assert err.count("missing key 'rejected'") == 1
    assert "round 0 prepare failed: " + str(tmp_path / "bad.jsonl") + ":1: missing key" in err
    assert "prepare round 0 failed" not in err  # the place is named once, by sparring run
    assert err.endswith("other column names: preferences.columns {prompt, chosen, rejected}")
    assert "Game Failed" not in err and "metric" not in err  # no table without a metric


def test_a_phase_names_what_it_waits_for_before_its_first_count(tmp_path: Path) -> None:
    game = _bad_data_game(tmp_path)
    done = _run("-m", "sparring_trainer", "prepare", "--game", str(game), "--round", "0",
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 3
    assert done.stderr.splitlines()[0] == "[prepare] stage: loading libraries"
