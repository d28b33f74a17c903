"""`sparring compare`: two games, round by round, as paired differences on the same items.

An APO game and its baseline (`mode: baseline`) started with `sparring run --reuse-from` share
prepare (the held-out pairs and queries, RM_Base, the judge) and their first samples, so each
round's RMs can be compared pair by pair on the same held-out pairs, and their policies query
by query under the same judge. A paired interval is far narrower than the difference of two
independent ones, and it is the only honest way to call a small difference resolved.

APL games pair the defender's outcomes per held-out seed (direct request, the attacker's
rewrite) and per benign request: a frozen attacker's game (`mode: baseline`) against a trained
one's. Only items both games measured are paired; a judge that differs between the games
(neither game reused the other's prepare) leaves judged metrics unpaired, and the table says
so.
Reads only: nothing here advances a game.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from sparring_trainer.config import PREPARE_PHASE
from sparring_trainer.stats import RM_MARGINS, margin_correct, paired_difference
from sparring_trainer.store import ArtifactStore, game_prefix, phase_prefix, require_committed

JUDGE_DIRS = ("eval-rm/", "judge/")  # prepare's judge (APO's RM, APL's classifier)
# Shown side by side, unpaired: what exposes reward hacking, and the adversary's own numbers.
SIDE_BY_SIDE = (
    "rm_ece", "rm_accuracy_vs_base", "rm_gold_over_policy", "reward_vs_base", "win_rate",
    "answers_changed", "answer_distinct_2", "answer_repeated_trigram_rate", "answer_words_mean",
    "log_ratio_mean",  # APO
    "harm_score_mean", "attacker_diversity", "rewrite_keeps_request", "attacker_refusal_rate",
    "attacker_pairs",  # APL
)  # fmt: skip


@dataclass(frozen=True)
class Measured:
    """One metric's per-item values in one round, the mean of which is the metric."""

    values: dict[str, float]  # item (held-out pair key, query or seed id) -> its value
    items: str  # what the items are, for the table
    judged: bool = False  # made by the judge model: comparable only under the same judge


@dataclass(frozen=True)
class RoundOutputs:
    """What one game's evaluate wrote for one round."""

    metrics: dict[str, float]
    paired: dict[str, Measured]  # the metrics that can be paired item by item
    judge: str  # a digest of the judge's weights ("" without a judge model)


@dataclass(frozen=True)
class Row:
    metric: str
    a: float | None
    b: float | None
    difference: tuple[float, float, float] | None = None  # a - b, with its 95% interval
    note: str = ""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def paired_rows(a: RoundOutputs, b: RoundOutputs, seed: int) -> list[Row]:
    """The round's table: each per-item metric paired over the items both games measured (a
    judged one only under the same judge), then the other metrics side by side."""
    rows = []
    for name in dict.fromkeys([*a.paired, *b.paired]):
        mine, theirs = a.paired.get(name), b.paired.get(name)
        if mine is None or theirs is None:
            continue
        shared = sorted(mine.values.keys() & theirs.values.keys())
        left = [mine.values[k] for k in shared]
        right = [theirs.values[k] for k in shared]
        comparable = not mine.judged or a.judge == b.judge
        note = _coverage(len(shared), len(mine.values), len(theirs.values), mine.items)
        rows.append(
            Row(
                name,
                _mean(left),
                _mean(right),
                paired_difference(left, right, seed) if shared and comparable else None,
                note if comparable else "different judges: not comparable",
            )
        )
    for name in SIDE_BY_SIDE:
        if name in a.metrics or name in b.metrics:
            rows.append(Row(name, a.metrics.get(name), b.metrics.get(name)))
    return rows


def _coverage(shared: int, in_a: int, in_b: int, what: str) -> str:
    if shared == in_a == in_b:
        return f"paired over {shared} {what}"
    return f"paired over the {shared} {what} both measured ({in_a} and {in_b})"


def read_round(store: ArtifactStore, namespace: str, game: str, round: int) -> RoundOutputs:
    """A round's evaluate outputs (UncommittedError, naming the prefix, when there are none)."""
    prefix = phase_prefix(namespace, game, round, "evaluate")
    require_committed(store, prefix)

    def rows(name: str) -> list[dict[str, Any]]:
        text = store.get_bytes(prefix + name).decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    metrics = json.loads(store.get_bytes(prefix + "metrics.json"))
    answers = rows("answers.jsonl")
    if store.exists(prefix + RM_MARGINS):  # APO
        paired = {
            "rm_accuracy": Measured(
                {str(r["key"]): margin_correct(float(r["margin"])) for r in rows(RM_MARGINS)},
                "held-out pairs",
            ),
            "judge reward_mean": Measured(
                {str(r["id"]): float(r["reward"]) for r in answers}, "test queries", judged=True
            ),
        }
    else:  # APL: one row per held-out seed (direct, attack) and benign request
        paired = _apl_items(answers)
    return RoundOutputs(metrics, paired, judge_digest(store, namespace, game))


def _apl_items(answers: list[dict[str, Any]]) -> dict[str, Measured]:
    def of(kind: str, field: str) -> dict[str, float]:
        return {str(r["id"]): float(r[field]) for r in answers if r["kind"] == kind and field in r}

    paired = {
        "asr_direct": Measured(of("direct", "success"), "held-out seeds"),
        "asr_attack": Measured(of("attack", "success"), "held-out seeds (own attacker's rewrite)"),
        "over_refusal": Measured(of("benign", "refused"), "benign requests"),
    }
    for kind in ("direct", "attack"):
        judged = of(kind, "judge_success")
        if judged:
            paired[f"asr_{kind}_judge"] = Measured(judged, "held-out seeds", judged=True)
    return paired


def judge_digest(store: ArtifactStore, namespace: str, game: str) -> str:
    """A digest of the judge's files as prepare committed them: equal for a shared judge."""
    manifest = require_committed(store, phase_prefix(namespace, game, 0, PREPARE_PHASE))
    files = sorted(
        (name, entry.get("sha256")) for name, entry in manifest["files"].items()
        if name.startswith(JUDGE_DIRS)
    )  # fmt: skip
    return hashlib.sha256(json.dumps(files).encode()).hexdigest() if files else ""


def committed_rounds(store: ArtifactStore, namespace: str, game: str) -> list[int]:
    """The rounds of `game` whose evaluate is committed, in order."""
    found = set()
    for key in store.list(game_prefix(namespace, game)):
        parts = key.split("/")
        if len(parts) >= 3 and parts[-2] == "evaluate" and parts[-1] == "_SUCCESS":
            found.add(int(parts[-3].removeprefix("round-")))
    return sorted(found)


def compare_games(
    store: ArtifactStore, namespace: str, a: str, b: str, seed: int = 0
) -> dict[int, list[Row]]:
    """Every round both games evaluated, as `paired_rows` (bootstrap resampling from `seed`)."""
    shared = sorted(
        set(committed_rounds(store, namespace, a)) & set(committed_rounds(store, namespace, b))
    )
    return {
        r: paired_rows(read_round(store, namespace, a, r), read_round(store, namespace, b, r), seed)
        for r in shared
    }


def as_json(rounds: dict[int, list[Row]]) -> list[dict[str, object]]:
    return [
        {"round": r, "metric": row.metric, "a": row.a, "b": row.b, "note": row.note}
        | (
            {}
            if row.difference is None
            else dict(
                zip(("difference", "difference_lo", "difference_hi"), row.difference, strict=True)
            )
        )
        for r, rows in rounds.items()
        for row in rows
    ]


def render(rounds: dict[int, list[Row]], a: str, b: str) -> Table:
    table = Table(title=f"{a} (A) vs {b} (B): paired differences, 95% bootstrap intervals")
    for column in ("round", "metric", "A", "B", "A - B [95% CI]", "paired over"):
        table.add_column(column, justify="left" if column in ("metric", "paired over") else "right")
    for r, rows in rounds.items():
        for row in rows:
            diff = (
                ""
                if row.difference is None
                else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*row.difference)
            )
            table.add_row(str(r), row.metric, _num(row.a), _num(row.b), diff, row.note)
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
