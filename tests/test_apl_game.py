"""`sparring run` plays the APL game end to end on tiny random models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sparring_trainer.config import ROUND_PHASES
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import is_committed, open_store, phase_prefix

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "apl-tiny.yaml"
HEADLINE = ("asr_direct", "asr_attack", "over_refusal", "harm_score_mean", "attacker_diversity")
RATES = ("asr_direct", "asr_attack", "over_refusal", "attacker_diversity")


def sparring(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparring_operator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def markers(rounds: int) -> list[tuple[int, str]]:
    return [(0, "prepare")] + [(r, p) for r in range(1, rounds + 1) for p in ROUND_PHASES["apl"]]


@pytest.fixture(scope="module")
def finished_game(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    work = tmp_path_factory.mktemp("apl")
    result = sparring(
        "run", str(TINY), "--store", f"file://{work}/store", "--output", "json", cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "store", json.loads(result.stdout)


def test_tiny_apl_game_succeeds_with_the_round_metrics(
    finished_game: tuple[Path, dict[str, Any]],
) -> None:
    store_dir, status = finished_game
    assert status["phase"] == "Succeeded"
    assert status["completedRounds"] == 2
    by_round = {r["round"]: r["metrics"] for r in status["rounds"]}
    for r in (0, 1, 2):
        metrics = by_round[r]
        for name in HEADLINE:
            assert name in metrics, f"round {r} lacks {name}: {sorted(metrics)}"
            assert metrics[name] == metrics[name], f"round {r}: {name} is NaN"
        for name in RATES:
            assert 0.0 <= metrics[name] <= 1.0, f"round {r}: {name} = {metrics[name]}"
        # the example sets a judge: its verdicts are rates too
        assert 0.0 <= metrics["asr_attack_judge"] <= 1.0
    for r in (1, 2):
        assert by_round[r]["update_adversary_attacker_pairs"] >= 1
        assert by_round[r]["update_policy_defender_pairs_utility"] >= 0
    store = open_store(StorageSpec(uri=f"file://{store_dir}"))
    for r, p in markers(2):
        assert is_committed(store, phase_prefix("default", "apl-tiny", r, p)), (r, p)
    assert status["latestCheckpoint"].endswith("round-0002/update-policy/policy/")


def test_outputs_are_inspectable(finished_game: tuple[Path, dict[str, Any]]) -> None:
    store_dir, _ = finished_game
    game = store_dir / "default" / "apl-tiny"
    samples = [json.loads(x) for x in (game / "round-0001/sample/samples.jsonl").open()]
    assert len(samples) == 6 and all(len(s["rewrites"]) == len(s["answers"]) == 4 for s in samples)
    scores = [json.loads(x) for x in (game / "round-0001/score/scores.jsonl").open()]
    assert all(len(s["harm"]) == 4 for s in scores)
    answers = [json.loads(x) for x in (game / "round-0002/evaluate/answers.jsonl").open()]
    kinds = [a["kind"] for a in answers]
    assert kinds.count("direct") == kinds.count("attack") == 4 and kinds.count("benign") == 4
    for name in ("base-policy", "base-attacker", "judge"):
        assert (game / "round-0000/prepare" / name / "config.json").is_file()


def _tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for file in sorted(path.glob("*.safetensors")):
        out |= load_file(str(file))
    return out


def test_both_players_are_updated(finished_game: tuple[Path, dict[str, Any]]) -> None:
    store_dir, _ = finished_game
    game = store_dir / "default" / "apl-tiny"

    def changed(a: str, b: str) -> bool:
        x, y = _tensors(game / a), _tensors(game / b)
        return any(not (x[k] == y[k]).all() for k in x)

    assert changed("round-0000/prepare/base-policy", "round-0001/update-policy/policy")
    assert changed("round-0001/update-policy/policy", "round-0002/update-policy/policy")
    assert changed("round-0000/prepare/base-attacker", "round-0001/update-adversary/attacker")


def test_rerun_of_a_finished_game_redoes_nothing(
    finished_game: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    store_dir, _ = finished_game
    prefix = phase_prefix("default", "apl-tiny", 2, "evaluate")
    store = open_store(StorageSpec(uri=f"file://{store_dir}"))
    before = store.get_bytes(prefix + "_SUCCESS")
    result = sparring(
        "run", str(TINY), "--store", f"file://{store_dir}", "--output", "json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert store.get_bytes(prefix + "_SUCCESS") == before


def test_a_non_dpo_defender_is_bad_input(tmp_path: Path) -> None:
    doc = yaml.safe_load(TINY.read_text())
    doc["spec"]["game"]["policy"]["update"]["method"] = "rjs"
    doc["spec"]["storage"]["uri"] = f"file://{tmp_path}/store"
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "sparring_trainer", "prepare", "--game", str(game), "--round", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "policy.update.method: an APL defender is updated by DPO only" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_frozen_attacker_game_shares_the_start_and_compares_per_seed(
    finished_game: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The ablation of the adversarial game (`mode: baseline`): the attacker never changes,
    the defender still trains; started from the trained game's prepare and first samples and
    scores, then compared with it per held-out seed."""
    store_dir, _ = finished_game
    doc = yaml.safe_load(TINY.read_text())
    doc["metadata"]["name"] = "apl-frozen"
    doc["spec"]["game"]["adversary"].setdefault("update", {})["mode"] = "baseline"
    game_file = tmp_path / "frozen.yaml"
    game_file.write_text(yaml.safe_dump(doc))
    uri = f"file://{store_dir}"
    result = sparring("run", str(game_file), "--store", uri, "--reuse-from", "apl-tiny",
                      "--output", "json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reused by apl-frozen: round 0 prepare, round 1 sample, round 1 score" in " ".join(
        result.stderr.split()
    )
    frozen = store_dir / "default" / "apl-frozen"
    base = _tensors(frozen / "round-0000/prepare/base-attacker")
    for r in (1, 2):
        attacker = _tensors(frozen / f"round-000{r}/update-adversary/attacker")
        assert base.keys() == attacker.keys() and all((base[k] == attacker[k]).all() for k in base)
    assert _tensors(frozen / "round-0002/update-policy/policy") != {}
    rounds = {r["round"]: r["metrics"] for r in json.loads(result.stdout)["rounds"]}
    assert rounds[1]["update_adversary_attacker_frozen"] == 1.0

    compared = sparring("compare", "apl-tiny", "apl-frozen", "--store", uri, "-o", "json",
                        cwd=tmp_path)  # fmt: skip
    assert compared.returncode == 0, compared.stderr[-3000:]
    rows = {(r["round"], r["metric"]): r for r in json.loads(compared.stdout)}
    for r in (1, 2):
        attack = rows[r, "asr_attack"]
        assert attack["note"] == "paired over 4 held-out seeds (own attacker's rewrite)"
        assert attack["difference"] == pytest.approx(attack["a"] - attack["b"])
        assert rows[r, "over_refusal"]["note"] == "paired over 4 benign requests"
        assert "difference" in rows[r, "asr_attack_judge"]  # the judge came with prepare
