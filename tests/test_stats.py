"""Intervals, paired differences and the reward-hacking indicators (`stats`), and the APO reports
built from them (`apo_eval.rm_report`, `apo_eval.policy_report`), on hand-computed cases."""

from __future__ import annotations

import random

import pytest
from sparring_trainer.apo_eval import policy_report, rm_report
from sparring_trainer.stats import (
    distinct_n,
    has_repeated_ngram,
    interval,
    named,
    paired_difference,
    text_indicators,
)


def test_interval_of_a_constant_is_that_constant() -> None:
    assert interval([0.25] * 7) == (0.25, 0.25, 0.25)


def test_interval_brackets_the_mean_and_repeats_with_its_seed() -> None:
    values = [1.0] * 30 + [0.0] * 10
    mean, low, high = interval(values, seed=3)
    assert mean == 0.75
    assert 0.55 < low < 0.75 < high < 0.9  # about +-1.96 * sqrt(.75 * .25 / 40) = +-0.13
    rng = random.Random(1)
    noisy = [rng.gauss(0, 1) for _ in range(40)]
    assert interval(noisy, seed=3) == interval(noisy, seed=3)
    assert interval(noisy, seed=3) != interval(noisy, seed=4)


def test_a_paired_difference_cancels_what_both_sides_share() -> None:
    """Two noisy measurements of the same items that differ by exactly 0.1 on each: paired, the
    difference is 0.1 with no width; the two sides' own intervals overlap widely."""
    rng = random.Random(0)
    before = [rng.gauss(0, 1) for _ in range(50)]
    after = [b + 0.1 for b in before]
    diff, low, high = paired_difference(after, before)
    assert diff == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    assert interval(after)[1] < interval(before)[2]
    with pytest.raises(ValueError, match="different lengths"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no values"):
        interval([])


def test_named() -> None:
    assert named("x", (1.0, 0.5, 2.0)) == {"x": 1.0, "x_lo": 0.5, "x_hi": 2.0}


def test_distinct_n_and_repeated_ngrams() -> None:
    # bigrams of "a b a b": (a b) (b a) (a b): 2 distinct of 3; "c" alone has none.
    assert distinct_n(["a b a b", "c"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n(["x"], 2) == 0.0
    assert has_repeated_ngram("here to help here to help", 3)
    assert not has_repeated_ngram("here to help you to help", 3)
    assert not has_repeated_ngram("to help", 3)
    assert text_indicators(["a b a b", "x y z x y z", ""]) == {
        # (a b)(b a)(a b) and (x y)(y z)(z x)(x y)(y z): 5 distinct of 8
        "answer_distinct_2": pytest.approx(5 / 8),
        "answer_repeated_trigram_rate": pytest.approx(1 / 3),
        "answer_words_mean": pytest.approx(10 / 3),
    }


def test_rm_report_against_rm_base() -> None:
    margins = [1.0, -1.0, 0.0, 2.0]  # right, wrong, a tie (half), right: 0.625
    alone = rm_report(margins, bins=10, seed=0)
    assert alone["rm_accuracy"] == 0.625
    assert alone["rm_accuracy_lo"] <= 0.625 <= alone["rm_accuracy_hi"]
    assert "rm_accuracy_vs_base" not in alone

    same = rm_report(margins, bins=10, seed=0, base=margins)
    assert (same["rm_accuracy_vs_base"], same["rm_ece_vs_base"]) == (0.0, 0.0)
    assert same["rm_accuracy_vs_base_lo"] == same["rm_accuracy_vs_base_hi"] == 0.0
    # RM_Base gets every decided pair the other way round: 0.625 - 0.375.
    flipped = rm_report(margins, bins=10, seed=0, base=[-m for m in margins], prefix="x")
    assert flipped["x_accuracy_vs_base"] == pytest.approx(0.25)
    assert flipped["x_ece_vs_base"] == pytest.approx(flipped["x_ece"] - rm_report(
        [-m for m in margins], bins=10, seed=0, prefix="x")["x_ece"])  # fmt: skip


def test_policy_report_pairs_by_query() -> None:
    rows = [
        {"id": "a", "answer": "new", "reward": 1.0},
        {"id": "b", "answer": "same", "reward": 0.0},
    ]
    # Listed in another order: the report pairs by id, not by position.
    base = [
        {"id": "b", "answer": "same", "reward": 0.5},
        {"id": "a", "answer": "old", "reward": 0.0},
    ]
    report = policy_report(0, rows, base, base)
    assert report["reward_mean"] == 0.5
    assert report["reward_vs_base"] == pytest.approx(((1.0 - 0.0) + (0.0 - 0.5)) / 2)
    assert report["win_rate"] == 0.5  # a wins, b loses
    assert report["answers_changed"] == 1.0
    assert "win_rate" not in policy_report(0, rows, None, None)
