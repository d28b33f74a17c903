"""Data-parallel phases under real torchrun processes (gloo on CPU), issue "Train what users
train" item 2: N ranks x b train exactly as 1 rank x N*b, and a game played with
`--nproc-per-node 2` commits every phase once, from rank 0, with every sample drawn once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from sparring_trainer.config import APODataSpec
from sparring_trainer.data import read_preferences, split_apo
from sparring_trainer.document import StorageSpec

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "harness" / "dp_worker.py"
METHODS = ("rm", "rjs", "rrhf", "dpo", "dpo-lora", "defender")
OWN_LOOP = ("rm", "rjs", "rrhf", "defender")  # Sparring's loop: DDP or FSDP2; TRL's DPO: DDP
PHASES = ("sample", "update-adversary", "score", "update-policy", "evaluate")
EXIT_BAD_INPUT = 3


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), *args]  # fmt: skip


def _run(cmd: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"} | kw.pop("env", {})
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every method's trained weights: one process with the global batch 4; two torchrun ranks
    with 2 each (DDP, and FSDP2 for Sparring's own loop); the same two ranks with a naive
    normalisation (the negative controls)."""
    work = tmp_path_factory.mktemp("dp")
    runs = {
        "one": [sys.executable, str(WORKER), str(work / "one.pt")],
        "two": _torchrun(2, str(WORKER), str(work / "two.pt")),
        "control": _torchrun(2, str(WORKER), str(work / "control.pt"), "--control"),
        "fsdp": _torchrun(2, str(WORKER), str(work / "fsdp.pt"), "--fsdp"),
        "fsdp-control": _torchrun(2, str(WORKER), str(work / "fsdp-control.pt"), "--fsdp",
                                  "--control"),
    }  # fmt: skip
    out = {}
    for name, cmd in runs.items():
        result = _run(cmd, work)
        assert result.returncode == 0, result.stderr[-4000:]
        out[name] = torch.load(work / f"{name}.pt")
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_train_as_one_with_twice_the_batch(
    trained: dict[str, dict[str, Any]], method: str
) -> None:
    one, two, control = trained["one"][method], trained["two"][method], trained["control"][method]
    assert _max_diff(one, two) <= 1e-5
    # The naive normalisation lands elsewhere by far more than the tolerance: the comparison
    # above can fail.
    assert _max_diff(one, control) > 1e-4


@pytest.mark.parametrize("method", OWN_LOOP)
def test_two_fsdp_ranks_train_as_one_with_twice_the_batch(
    trained: dict[str, dict[str, Any]], method: str
) -> None:
    """FSDP2 shards the weights, gradients and AdamW states, and gathers them whole to save."""
    one, fsdp = trained["one"][method], trained["fsdp"][method]
    assert _max_diff(one, fsdp) <= 1e-5
    assert _max_diff(one, trained["fsdp-control"][method]) > 1e-4


# ---- a whole game, two ranks per phase -----------------------------------------------------
def _game(tmp: Path, example: str, storage: StorageSpec, **overrides: Any) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["spec"]["storage"] = storage.model_dump(by_alias=True, exclude_none=True)
    for dotted, value in overrides.items():
        node = doc["spec"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp / example
    path.write_text(yaml.safe_dump(doc))
    return path


def _play(game: Path, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sparring_operator", "run", str(game), "-o", "json",
           "--nproc-per-node", str(nproc)]  # fmt: skip
    return _run(cmd, cwd)


def test_apo_game_on_two_ranks_commits_each_phase_once(
    tmp_path: Path, s3_storage: StorageSpec, s3_requests: Callable[[], list[str]]
) -> None:
    game = _game(tmp_path, "apo-tiny.yaml", s3_storage)
    result = _play(game, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout)["phase"] == "Succeeded"

    bucket, prefix = s3_storage.uri.removeprefix("s3://").split("/", 1)
    game_path = f"/{bucket}/{prefix}/default/apo-tiny/"
    puts = [r.split(" ", 1)[1] for r in s3_requests() if r.startswith("PUT " + game_path)]
    phases = [(0, "prepare")] + [(r, p) for r in (1, 2) for p in PHASES]
    for rnd, phase in phases:
        where = f"{game_path}round-{rnd:04d}/{phase}/"
        # Rank 0 alone writes and commits: one _SUCCESS and one metrics.json per phase.
        assert puts.count(where + "_SUCCESS") == 1, (rnd, phase)
        assert puts.count(where + "metrics.json") == 1, (rnd, phase)

    # Every gold and training query was sampled S times, once, in the split's order.
    spec = yaml.safe_load(game.read_text())["spec"]["game"]
    data = APODataSpec.model_validate(spec["data"])
    splits = split_apo(read_preferences(data.preferences), data)
    expected = [q.id for q in [*splits.gold_queries, *splits.train_queries]]
    from sparring_trainer.store import open_store

    store = open_store(s3_storage)
    for rnd in (1, 2):
        key = f"default/apo-tiny/round-{rnd:04d}/sample/samples.jsonl"
        rows = [json.loads(line) for line in store.get_bytes(key).decode().splitlines()]
        assert [r["id"] for r in rows] == expected
        assert all(len(r["responses"]) == spec["sampling"]["samplesPerQuery"] for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("example", ["apo-tiny-lora.yaml", "apl-tiny-lora.yaml"])
def test_lora_games_on_two_ranks_store_adapters(
    tmp_path: Path, file_storage: StorageSpec, example: str
) -> None:
    game = _game(tmp_path, example, file_storage)
    result = _play(game, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout)["phase"] == "Succeeded"
    name = yaml.safe_load(game.read_text())["metadata"]["name"]
    root = Path(file_storage.uri.removeprefix("file://")) / "default" / name / "round-0001"
    adversary = "rm" if "apo" in example else "attacker"
    for folder in (root / "update-policy" / "policy", root / "update-adversary" / adversary):
        assert (folder / "adapter_config.json").is_file(), sorted(folder.iterdir())
        assert not (folder / "model.safetensors").exists()


@pytest.mark.slow
def test_fsdp_game_on_two_ranks_saves_whole_checkpoints(
    tmp_path: Path, file_storage: StorageSpec
) -> None:
    """RJS policy and the RM trained with FSDP2 in a played game: the checkpoints that rank 0
    saves from the gathered shards are whole models, and the next round trains on them."""
    overrides = {
        "game.policy.update.method": "rjs",
        "game.policy.update.parallelism": "fsdp",
        "game.adversary.update.parallelism": "fsdp",
    }
    game = _game(tmp_path, "apo-tiny.yaml", file_storage, **overrides)
    result = _play(game, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout)["phase"] == "Succeeded"
    from transformers import AutoModelForCausalLM

    store = Path(file_storage.uri.removeprefix("file://")) / "default" / "apo-tiny"
    policies = [store / f"round-{r:04d}" / "update-policy" / "policy" for r in (1, 2)]
    weights = [AutoModelForCausalLM.from_pretrained(p).state_dict() for p in policies]
    assert weights[0].keys() == weights[1].keys()
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_fsdp_is_refused_where_it_cannot_run(tmp_path: Path, file_storage: StorageSpec) -> None:
    game = _game(tmp_path, "apo-tiny.yaml", file_storage,
                 **{"game.policy.update.parallelism": "fsdp"})  # fmt: skip
    cmd = [sys.executable, "-m", "sparring_operator", "validate", str(game)]
    result = _run(cmd, tmp_path)
    assert result.returncode != 0
    assert "spec.game.policy.update.parallelism: fsdp is not supported here: DPO runs" in (
        result.stderr
    )


# ---- what cannot run is refused, naming the field -------------------------------------------
def test_run_refuses_a_batch_that_does_not_divide(
    tmp_path: Path, file_storage: StorageSpec
) -> None:
    game = _game(tmp_path, "apo-tiny.yaml", file_storage, **{"game.policy.update.batchSize": 3})
    result = _play(game, tmp_path, nproc=2)
    assert result.returncode != 0
    assert "spec.game.policy.update.batchSize: 3 does not divide" in result.stderr
    assert not Path(file_storage.uri.removeprefix("file://")).exists()  # nothing ran


def test_a_failed_rank_reports_its_own_error_and_exit_status(
    tmp_path: Path, file_storage: StorageSpec
) -> None:
    """Bad input on the ranks exits 3 through torchrun (not its generic 1), with the rank's
    own message in the termination log, not a peer's "connection closed"."""
    game = _game(tmp_path, "apo-tiny.yaml", file_storage, **{"game.policy.model": "./no/model"})
    log = tmp_path / "termination-log"
    cmd = [sys.executable, "-m", "sparring_trainer", "prepare", "--game", str(game),
           "--round", "0", "--nproc-per-node", "2"]  # fmt: skip
    result = _run(cmd, tmp_path, env={"SPARRING_TERMINATION_LOG": str(log)})
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-3000:]
    message = json.loads(log.read_text())
    assert "no/model" in message["error"] and message["exitCode"] == EXIT_BAD_INPUT
    store = Path(file_storage.uri.removeprefix("file://"))
    assert not list(store.rglob("_SUCCESS"))


def test_trainer_refuses_a_batch_that_does_not_divide_among_its_ranks(
    tmp_path: Path, file_storage: StorageSpec
) -> None:
    game = _game(
        tmp_path, "apo-tiny.yaml", file_storage, **{"game.evaluation.evalRmTrain.batchSize": 5}
    )
    cmd = [sys.executable, "-m", "sparring_trainer", "prepare", "--game", str(game),
           "--round", "0", "--nproc-per-node", "2"]  # fmt: skip
    result = _run(cmd, tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-3000:]
    assert "spec.game.evaluation.evalRmTrain.batchSize: 5 does not divide among 2" in result.stderr
