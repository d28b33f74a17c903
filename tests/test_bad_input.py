"""Bad input fails the phase with a message naming the thing, and loses nothing committed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import is_committed, open_store, phase_prefix, require_committed

ROOT = Path(__file__).resolve().parents[1]
EXIT_BAD_INPUT = 3


def write_game(tmp: Path, store: Path, **game: Any) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"]["uri"] = f"file://{store}"
    for key, value in game.items():
        doc["spec"]["game"][key] = value
    path = tmp / f"game-{len(list(tmp.glob('game-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def phase(game_file: Path, name: str, rnd: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sparring_trainer",
            name,
            "--game",
            str(game_file),
            "--round",
            str(rnd),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "SPARRING_TERMINATION_LOG": str(tmp / "termination-log")},
    )


def test_missing_model_path_is_named(tmp_path: Path) -> None:
    game = write_game(tmp_path, tmp_path / "store", policy={"model": "./no/such/model"})
    result = phase(game, "prepare", 0, tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert "no/such/model" in result.stderr and "Traceback" not in result.stderr
    # The operator reads the same message from the pod's termination log.
    assert "no/such/model" in json.loads((tmp_path / "termination-log").read_text())["error"]


def test_unknown_dataset_file_is_named(tmp_path: Path) -> None:
    game = write_game(
        tmp_path, tmp_path / "store", data={"preferences": {"path": "data/nope.jsonl"}}
    )
    result = phase(game, "prepare", 0, tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "data/nope.jsonl" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("prepared")
    result = phase(write_game(tmp, tmp / "store"), "prepare", 0, tmp)
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp / "store"


def test_malformed_row_fails_the_phase_with_file_and_line_and_keeps_committed_work(
    prepared: Path, tmp_path: Path
) -> None:
    rows = [
        {
            "chosen": "\n\nHuman: hi\n\nAssistant: hello",
            "rejected": "\n\nHuman: hi\n\nAssistant: go",
        },
        {"chosen": "\n\nHuman: hey", "rejected": 3},  # line 2: not a string
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = open_store(StorageSpec(uri=f"file://{prepared}"))
    prepare_prefix = phase_prefix("default", "apo-tiny", 0, "prepare")
    manifest_before = require_committed(store, prepare_prefix, verify=True)

    game = write_game(tmp_path, prepared, data={"preferences": {"path": str(data)}})
    result = phase(game, "sample", 1, tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert f"{data}:2" in result.stderr, result.stderr[-2000:]
    assert not is_committed(store, phase_prefix("default", "apo-tiny", 1, "sample"))
    assert require_committed(store, prepare_prefix, verify=True) == manifest_before


def test_rerunning_a_committed_phase_is_a_noop(prepared: Path, tmp_path: Path) -> None:
    store = open_store(StorageSpec(uri=f"file://{prepared}"))
    prefix = phase_prefix("default", "apo-tiny", 0, "prepare")
    before = store.get_bytes(prefix + "_SUCCESS")
    result = phase(write_game(tmp_path, prepared), "prepare", 0, tmp_path)
    assert result.returncode == 0
    assert json.loads(result.stdout)["noop"] is True
    assert store.get_bytes(prefix + "_SUCCESS") == before


def test_phase_out_of_order_is_refused(tmp_path: Path) -> None:
    game = write_game(tmp_path, tmp_path / "store")
    result = phase(game, "sample", 1, tmp_path)  # round 0 never ran
    assert result.returncode == 1  # retryable: the operator never runs phases out of order
    assert "round-0000/prepare/ is not committed" in result.stderr, result.stderr[-2000:]


def _run(game_file: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparring_operator", "run", str(game_file), "-o", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp,
    )  # fmt: skip


def test_run_exits_3_on_a_game_file_it_cannot_accept(tmp_path: Path) -> None:
    game = write_game(tmp_path, tmp_path / "store", seed=-1)
    result = _run(game, tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert "spec.game.seed" in result.stderr
    assert not (tmp_path / "store").exists()


def test_run_exits_3_when_a_phase_refuses_its_input(tmp_path: Path) -> None:
    """The trainer's exit 3 (a model folder that holds no model: `sparring run` checks that
    local paths exist, only the phase can tell what is in them) reaches the user as 3, not as
    a generic 1 that says "try again"; the status still says which phase failed and why."""
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "README.md").write_text("notes, no weights\n")
    game = write_game(tmp_path, tmp_path / "store", policy={"model": "./not-a-model"})
    result = _run(game, tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    status = json.loads(result.stdout)
    assert status["phase"] == "Failed" and "not-a-model" in status["message"]
