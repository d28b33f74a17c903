"""A changed game never reports old results (issue "Results you can trust", item 4): each
committed phase records the spec it was played with; `sparring run` refuses a spec whose
changes invalidate committed phases, naming the fields, and `--fork` replays it as a new game
from exactly the phases the change leaves valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.browser import CHROMIUM, render
from sparring_trainer.identity import changed_fields, first_reader, first_stale

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["sample", "update-adversary", "score", "update-policy", "evaluate"]


def test_changed_fields_are_dotted_paths() -> None:
    old = {"policy": {"update": {"learningRate": 1e-4, "beta": 0.1}}, "seed": 0}
    new = {"policy": {"update": {"learningRate": 2e-4, "beta": 0.1}}, "seed": 0, "apl": None}
    assert changed_fields(old, new) == ["apl", "policy.update.learningRate"]
    assert changed_fields(old, old) == []
    # A field that is gone differs from one that is null.
    assert changed_fields({"apl": None}, {}) == ["apl"] == changed_fields({}, {"apl": None})


def test_a_recorded_spec_read_back_from_json_is_unchanged() -> None:
    """What a phase records goes through JSON (tuples become lists): the comparison must not
    see a change where there is none."""
    import json

    from sparring_trainer.config import GameConfig
    from sparring_trainer.identity import game_record

    game = GameConfig.model_validate({
        "policy": {"model": "tiny-random", "update": {"lora": {"targetModules": ["q_proj"]}}},
        "adversary": {"model": "tiny-random"},
    })  # fmt: skip
    stored = json.loads(json.dumps(game_record(game)))
    assert changed_fields(stored, game_record(game)) == []
    assert game_record(game)["policy"]["update"]["lora"]["targetModules"] == ["q_proj"]


@pytest.mark.parametrize(
    ("kind", "field", "first"),
    [
        ("apo", "policy.update.learningRate", (1, "update-policy")),
        ("apo", "adversary.update.apoCoeff", (1, "update-adversary")),
        ("apo", "adversary.update.mode", (1, "update-adversary")),
        ("apo", "adversary.update.learningRate", (0, "prepare")),  # RM_Base's recipe
        ("apo", "data.judgePairs", (0, "prepare")),
        ("apo", "adversary.update.maxLength", (0, "prepare")),  # prepare scores with it
        ("apo", "sampling.temperature", (1, "sample")),
        ("apo", "sampling.batchSize", (0, "prepare")),  # prepare's greedy answers use it
        ("apo", "data.humanPairs", (0, "prepare")),
        ("apo", "seed", (0, "prepare")),
        ("apl", "policy.update.maxLength", (0, "prepare")),  # harm in prepare's evaluation
        ("apl", "policy.update.beta", (1, "update-policy")),
        ("apl", "sampling.temperature", (0, "prepare")),
    ],
)
def test_each_field_is_first_read_where_the_phases_read_it(
    kind: str, field: str, first: tuple[int, str]
) -> None:
    assert first_reader(kind, field) == first


def test_the_earliest_reader_of_several_changes_wins() -> None:
    assert first_stale("apo", ["policy.update.beta", "sampling.topP"]) == (1, "sample")
    assert first_stale("apo", []) is None


# ---- end to end ------------------------------------------------------------------------------
def _sparring(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sparring_operator", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _manifest(store: Path, game: str, rnd: int, phase: str) -> dict[str, Any]:
    path = store / "default" / game / f"round-{rnd:04d}" / phase / "_SUCCESS"
    return dict(json.loads(path.read_text()))


def test_a_changed_learning_rate_is_refused_and_forked(tmp_path: Path) -> None:
    store = tmp_path / "store"
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"] = {"uri": f"file://{store}"}
    doc["spec"]["rounds"] = 1
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc))
    first = _sparring("run", str(game), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    markers = [(0, "prepare")] + [(1, p) for p in PHASES]
    before = {m: _manifest(store, "apo-tiny", *m) for m in markers}
    assert before[(1, "evaluate")]["game"]["policy"]["update"]["learningRate"] == 1e-4

    doc["spec"]["game"]["policy"]["update"]["learningRate"] = 2e-4
    game.write_text(yaml.safe_dump(doc))
    refused = _sparring("run", str(game), cwd=tmp_path)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 3, refused.stderr[-3000:]
    assert "spec.game.policy.update.learningRate: 0.0001 -> 0.0002" in message, message
    assert "from round 1 update-policy on" in message and "--fork NEW_NAME" in message
    assert {m: _manifest(store, "apo-tiny", *m) for m in markers} == before  # nothing touched

    forked = _sparring("run", str(game), "--fork", "apo-tiny-lr2", cwd=tmp_path)
    assert forked.returncode == 0, forked.stderr[-3000:]
    after = {m: _manifest(store, "apo-tiny-lr2", *m) for m in markers}
    reused = [(0, "prepare"), (1, "sample"), (1, "update-adversary"), (1, "score")]
    for m in markers:
        if m in reused:  # copied as committed, byte for byte
            assert after[m] == before[m], m
        else:  # played again, with the new spec
            assert after[m]["committed_at"] != before[m]["committed_at"], m
            assert after[m]["game"]["policy"]["update"]["learningRate"] == 2e-4, m
    # The original game keeps its results; the fork is a game of its own that resumes as any.
    assert {m: _manifest(store, "apo-tiny", *m) for m in markers} == before
    again = _sparring("run", str(game), "--fork", "apo-tiny-lr2", cwd=tmp_path)
    assert again.returncode == 3 and "already has committed phases" in again.stderr


@pytest.mark.slow  # plays two games (about 1.5 min); the mutation gate runs without it
def test_a_baseline_reuses_the_phases_its_spec_shares_and_compares_paired(tmp_path: Path) -> None:
    """`--reuse-from`: a baseline (mode changed, first read by update-adversary) starts from
    the APO game's prepare and first samples, byte for byte, and plays the rest; `sparring
    compare` then pairs the two rounds over the same held-out pairs and under the same judge."""
    store = tmp_path / "store"
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"] = {"uri": f"file://{store}"}
    doc["spec"]["rounds"] = 1
    apo = tmp_path / "apo.yaml"
    apo.write_text(yaml.safe_dump(doc))
    assert _sparring("run", str(apo), cwd=tmp_path).returncode == 0
    doc["metadata"]["name"] = "tiny-baseline"
    doc["spec"]["game"]["adversary"]["update"]["mode"] = "baseline"
    baseline = tmp_path / "baseline.yaml"
    baseline.write_text(yaml.safe_dump(doc))

    played = _sparring("run", str(baseline), "--reuse-from", "apo-tiny", cwd=tmp_path)
    assert played.returncode == 0, played.stderr[-3000:]
    assert "reused by tiny-baseline: round 0 prepare, round 1 sample" in " ".join(
        played.stderr.split()
    )
    for m in [(0, "prepare"), (1, "sample")]:  # copies, committed as they were
        assert _manifest(store, "tiny-baseline", *m) == _manifest(store, "apo-tiny", *m)
    for m in [(1, p) for p in PHASES[1:]]:  # played with the baseline's spec
        recorded = _manifest(store, "tiny-baseline", *m)["game"]
        assert recorded["adversary"]["update"]["mode"] == "baseline", m

    compared = _sparring("compare", "apo-tiny", "tiny-baseline", "--store", f"file://{store}",
                         "-o", "json", cwd=tmp_path)  # fmt: skip
    assert compared.returncode == 0, compared.stderr[-3000:]
    rows = {r["metric"]: r for r in json.loads(compared.stdout)}
    accuracy, reward = rows["rm_accuracy"], rows["judge reward_mean"]
    assert accuracy["note"] == "paired over 32 held-out pairs"
    assert accuracy["difference"] == pytest.approx(accuracy["a"] - accuracy["b"])
    assert reward["note"] == "paired over 8 test queries"  # one judge: prepare was shared
    evaluated = json.loads(
        (store / "default/apo-tiny/round-0001/evaluate/metrics.json").read_text()
    )
    assert accuracy["a"] == pytest.approx(evaluated["rm_accuracy"])

    # `sparring report` on both: one page, both games overlaid, their samples shown.
    page = tmp_path / "report.html"
    reported = _sparring("report", "apo-tiny", "tiny-baseline", "--store", f"file://{store}",
                         "-o", str(page), cwd=tmp_path)  # fmt: skip
    assert reported.returncode == 0, reported.stderr[-3000:]
    if CHROMIUM is not None:
        shown = render(page, tmp_path)
        drawn = {alt for alt, width in shown.images if width > 0}
        assert {"Reward model (held-out pairs)", "Policy under the judge", "reliability"} <= drawn
        assert "Sparring report: default/apo-tiny, default/tiny-baseline" in shown.text
        # The round's most told-apart prompt, with its best sample.
        scores = store / "default/tiny-baseline/round-0001/score/scores.jsonl"
        rows = [json.loads(line) for line in scores.read_text().splitlines()]
        widest = max(rows, key=lambda r: max(r["rewards"]) - min(r["rewards"]))
        best = widest["responses"][widest["rewards"].index(max(widest["rewards"]))]
        assert " ".join(best.split())[:60] in " ".join(shown.text.split())

    # A started game continues from its own phases: nothing is copied again.
    before = _manifest(store, "tiny-baseline", 1, "evaluate")
    again = _sparring("run", str(baseline), "--reuse-from", "apo-tiny", cwd=tmp_path)
    assert again.returncode == 0 and "reused by tiny-baseline: none" in again.stderr
    assert _manifest(store, "tiny-baseline", 1, "evaluate") == before
    # A source with nothing committed is refused before anything is played.
    doc["metadata"]["name"] = "tiny-other"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(doc))
    unknown = _sparring("run", str(other), "--reuse-from", "no-such-game", cwd=tmp_path)
    assert unknown.returncode == 3 and "has no committed phases" in unknown.stderr
    assert not (store / "default" / "tiny-other").exists()
