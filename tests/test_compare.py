"""`sparring compare` (issue "A game that measurably works", item 6): two games' rounds as
paired differences over the items both measured, under the same judge only."""

from __future__ import annotations

import pytest
from sparring_operator.compare import Measured, RoundOutputs, Row, as_json, paired_rows
from sparring_trainer.stats import margin_correct


def _round(
    margins: dict[str, float], rewards: dict[str, float], judge: str = "j", **metrics: float
) -> RoundOutputs:
    """An APO round as read_round builds it from its margins and answers files."""
    accuracy = {k: margin_correct(m) for k, m in margins.items()}
    paired = {
        "rm_accuracy": Measured(accuracy, "held-out pairs"),
        "judge reward_mean": Measured(rewards, "test queries", judged=True),
    }
    return RoundOutputs(dict(metrics), paired, judge)


def _row(rows: list[Row], metric: str) -> Row:
    (row,) = [r for r in rows if r.metric == metric]
    return row


def test_rm_accuracy_is_paired_over_the_pairs_both_scored() -> None:
    a = _round({"p1": 1.0, "p2": -1.0, "p3": 0.5}, {})
    b = _round({"p1": -1.0, "p2": -1.0, "p3": 0.5, "p4": 2.0}, {})
    row = _row(paired_rows(a, b, seed=0), "rm_accuracy")
    # p4 only in B: left out of both sides. A right on p1 and p3, B on p3 only.
    assert row.a == pytest.approx(2 / 3) and row.b == pytest.approx(1 / 3)
    assert row.difference is not None and row.difference[0] == pytest.approx(1 / 3)
    assert row.difference[1] <= row.difference[0] <= row.difference[2]
    assert row.note == "paired over the 3 held-out pairs both measured (3 and 4)"
    # A tie counts half, as in the game's own accuracy.
    tied = _row(paired_rows(_round({"p": 0.0}, {}), _round({"p": -3.0}, {}), 0), "rm_accuracy")
    assert (tied.a, tied.b) == (0.5, 0.0)


def test_the_difference_is_a_minus_b() -> None:
    a = _round({}, {"q1": 0.5, "q2": 0.25})
    b = _round({}, {"q1": 0.0, "q2": -0.25})
    forward = _row(paired_rows(a, b, 0), "judge reward_mean").difference
    backward = _row(paired_rows(b, a, 0), "judge reward_mean").difference
    # Each query's difference is +0.5: every resample's mean is too.
    assert forward == pytest.approx((0.5, 0.5, 0.5))
    assert backward == pytest.approx((-0.5, -0.5, -0.5))


def test_rewards_under_different_judges_are_not_paired() -> None:
    a = _round({}, {"q1": 0.5}, judge="one")
    b = _round({}, {"q1": 0.0}, judge="two")
    row = _row(paired_rows(a, b, 0), "judge reward_mean")
    assert row.difference is None and row.note == "different judges: not comparable"
    assert (row.a, row.b) == (0.5, 0.0)  # each game's own mean is still shown


def test_other_metrics_are_side_by_side_and_json_keeps_the_interval() -> None:
    a = _round({"p": 1.0}, {}, answer_distinct_2=0.9, rm_ece=0.1)
    b = _round({"p": -1.0}, {}, answer_distinct_2=0.5)
    rows = paired_rows(a, b, 0)
    distinct = _row(rows, "answer_distinct_2")
    assert (distinct.a, distinct.b, distinct.difference) == (0.9, 0.5, None)
    assert (_row(rows, "rm_ece").a, _row(rows, "rm_ece").b) == (0.1, None)
    assert "log_ratio_mean" not in {r.metric for r in rows}  # in neither game
    (acc,) = [r for r in as_json({1: rows}) if r["metric"] == "rm_accuracy"]
    assert acc == {"round": 1, "metric": "rm_accuracy", "a": 1.0, "b": 0.0,
                   "note": "paired over 1 held-out pairs", "difference": 1.0,
                   "difference_lo": 1.0, "difference_hi": 1.0}  # fmt: skip


def test_apl_outcomes_pair_per_seed_and_only_judged_ones_need_the_same_judge() -> None:
    from sparring_operator.compare import _apl_items

    def answers(attack: list[bool], refused: bool, judged: bool) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for i, ok in enumerate(attack):
            rows.append({"kind": "direct", "id": f"s{i}", "success": False})
            rows.append({"kind": "attack", "id": f"s{i}", "success": ok}
                        | ({"judge_success": ok} if judged else {}))  # fmt: skip
        rows.append({"kind": "benign", "id": "b0", "refused": refused})
        return rows

    trained = RoundOutputs({}, _apl_items(answers([True, True, False], False, True)), "x")
    frozen = RoundOutputs({}, _apl_items(answers([False, True, False], True, True)), "y")
    rows = {r.metric: r for r in paired_rows(trained, frozen, 0)}
    assert rows["asr_attack"].difference == pytest.approx((1 / 3, 0.0, 1.0))
    assert rows["asr_direct"].difference == (0.0, 0.0, 0.0)
    assert rows["over_refusal"].difference == (-1.0, -1.0, -1.0)
    assert rows["asr_attack_judge"].difference is None  # two different judge models
    assert rows["asr_attack"].note == "paired over 3 held-out seeds (own attacker's rewrite)"
