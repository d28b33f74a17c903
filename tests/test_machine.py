"""The pure game machine: which phase runs next, from committed markers alone."""

from __future__ import annotations

from sparring_operator.machine import (
    EarlyStop,
    GameDone,
    RunPhase,
    completed_rounds,
    next_step,
    phase_sequence,
)

APO = ("sample", "update-adversary", "score", "update-policy", "evaluate")


def test_sequence_starts_with_prepare_then_rounds_in_order() -> None:
    seq = phase_sequence("apo", 2)
    assert seq[0] == (0, "prepare")
    assert seq[1:6] == [(1, p) for p in APO]
    assert seq[6:] == [(2, p) for p in APO]


def test_next_is_first_uncommitted_even_with_later_markers() -> None:
    committed = {(0, "prepare"), (1, "sample"), (1, "score")}  # score without its predecessor
    assert next_step("apo", 2, committed) == RunPhase(1, "update-adversary")


def test_done_when_all_rounds_committed_and_resumes_when_rounds_grow() -> None:
    committed = set(phase_sequence("apo", 2))
    assert next_step("apo", 2, committed) == GameDone(2, "AllRoundsPlayed", "all 2 rounds played")
    assert next_step("apo", 3, committed) == RunPhase(3, "sample")
    assert completed_rounds("apo", committed) == 2


def test_early_stop_on_a_round_metric() -> None:
    committed = set(phase_sequence("apo", 1))
    rule = EarlyStop("rm_accuracy", 0.6, "above")
    decision = next_step("apo", 5, committed, {1: {"rm_accuracy": 0.7}}, rule)
    assert isinstance(decision, GameDone) and decision.reason == "EarlyStopped"
    assert next_step("apo", 5, committed, {1: {"rm_accuracy": 0.5}}, rule) == RunPhase(2, "sample")


def test_apl_order_scores_before_updates() -> None:
    assert phase_sequence("apl", 1)[1:3] == [(1, "sample"), (1, "score")]


def test_early_stop_reads_only_completed_rounds() -> None:
    """Round 0 (prepare) and the unfinished round 2 carry the metric above the threshold: only
    a completed round counts, and a completed round without metrics does not stop the game."""
    committed = set(phase_sequence("apo", 1)) | {(2, "sample")}
    rule = EarlyStop("score_sample_reward_mean", 0.5, "above")
    high = {"score_sample_reward_mean": 0.9}
    metrics = {0: high, 1: {"score_sample_reward_mean": 0.1}, 2: high}
    assert next_step("apo", 5, committed, metrics, rule) == RunPhase(2, "update-adversary")
    assert next_step("apo", 5, committed, {2: high}, rule) == RunPhase(2, "update-adversary")
    stop = next_step("apo", 5, committed, {1: {"score_sample_reward_mean": 0.7}}, rule)
    assert stop == GameDone(1, "EarlyStopped", "round 1: score_sample_reward_mean=0.7 is above 0.5")


def test_early_stop_thresholds_are_strict_and_directional() -> None:
    above, below = EarlyStop("m", 0.5, "above"), EarlyStop("m", 0.5, "below")
    assert not above.triggered({"m": 0.5}) and above.triggered({"m": 0.51})
    assert not below.triggered({"m": 0.5}) and below.triggered({"m": 0.49})
    assert not below.triggered({"m": 0.9})
    assert not above.triggered({"other": 0.9}) and not below.triggered({})
