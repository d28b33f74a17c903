"""Each loss and metric against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from sparring_trainer.losses import (
    ScoredGroup,
    best_sample,
    best_vs_worst,
    dpo_loss,
    expected_calibration_error,
    preference_accuracy,
    rrhf_loss,
    weighted_dpo_loss,
    weighted_rank_loss,
    win_rate,
)


def _nls(x: float) -> float:  # -log sigmoid(x)
    return math.log1p(math.exp(-x))


def test_apo_rank_loss_weights_human_and_apo_pairs_as_the_reference_code() -> None:
    # Two human pairs (weight 1.0) and four gold-vs-sample pairs of one query (S=4, apo_coeff
    # 0.1 -> weight 0.025 each); the loss is the weighted sum over the 6 pairs divided by 6.
    good = torch.tensor([2.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    bad = torch.tensor([1.0, 1.5, 0.0, 2.0, 1.0, -1.0])
    w = torch.tensor([1.0, 1.0, 0.025, 0.025, 0.025, 0.025])
    by_hand = (
        _nls(1.0) + _nls(-1.0) + 0.025 * (_nls(1.0) + _nls(-1.0) + _nls(0.0) + _nls(2.0))
    ) / 6
    assert weighted_rank_loss(good, bad, w).item() == pytest.approx(by_hand, rel=1e-6)


def test_apo_rank_loss_without_apo_term_is_plain_bradley_terry() -> None:
    good, bad = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0])
    loss = weighted_rank_loss(good, bad, torch.ones(2))
    assert loss.item() == pytest.approx((_nls(2.0) + math.log(2)) / 2, rel=1e-6)


def test_rrhf_hinge_counts_only_misordered_pairs_plus_sft() -> None:
    # Rewards order: r1 < r0 < r2. Log-probs p = [-1.0, -0.5, -2.0].
    # Pairs with r_i < r_j: (1,0): max(0, p1 - p0) = 0.5; (1,2): max(0, -0.5 + 2) = 1.5;
    # (0,2): max(0, -1 + 2) = 1.0. Sum 3.0, plus 0.5 * NLL(best) = 0.5 * 2.0.
    p = torch.tensor([-1.0, -0.5, -2.0])
    r = torch.tensor([0.3, 0.1, 0.9])
    assert rrhf_loss(p, r, torch.tensor(2.0), sft_weight=0.5).item() == pytest.approx(4.0)


def test_rrhf_ignores_ties() -> None:
    p = torch.tensor([-1.0, -3.0])
    assert rrhf_loss(p, torch.tensor([1.0, 1.0]), torch.tensor(0.0)).item() == 0.0


def test_dpo_loss_by_hand() -> None:
    # logits = (-1 - -2) - (-3 - -2.5) = 1.5; beta 0.1 -> -log sigmoid(0.15)
    loss = dpo_loss(
        torch.tensor([-1.0]),
        torch.tensor([-3.0]),
        torch.tensor([-2.0]),
        torch.tensor([-2.5]),
        beta=0.1,
    )
    assert loss.item() == pytest.approx(_nls(0.15), rel=1e-6)


def test_dpo_pairs_take_best_and_worst_and_skip_ties() -> None:
    groups = [
        ScoredGroup("a", ("x", "y", "z", "w"), (0.1, 0.9, -0.3, 0.2)),
        ScoredGroup("b", ("s", "t"), (0.5, 0.5)),  # all tied: no preference
        ScoredGroup("c", ("same", "same"), (1.0, 0.0)),  # identical texts: nothing to learn
    ]
    pairs = best_vs_worst(groups)
    assert [(p.query_id, p.chosen, p.rejected) for p in pairs] == [("a", "y", "z")]
    assert pairs[0].margin == pytest.approx(1.2)
    assert best_sample(groups[0]) == "y"
    assert best_sample(groups[1]) == "s"  # first on ties


def test_preference_accuracy_counts_ties_half() -> None:
    acc = preference_accuracy(
        torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 0.5])
    )
    assert acc == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_ece_uniform_bins_by_hand() -> None:
    # diffs -> p = sigmoid(d). Confidences max(p, 1-p); correct iff p >= 0.5.
    d = torch.tensor([2.0, 2.0, -0.1, 0.05])
    p = [1 / (1 + math.exp(-x)) for x in d.tolist()]
    conf = [max(v, 1 - v) for v in p]  # 0.8808, 0.8808, 0.52498, 0.51250
    # bins of 0.1: first two in bin 8 (0.8, 0.9], last two in bin 5 (0.5, 0.6].
    bin8 = abs(1.0 - (conf[0] + conf[1]) / 2) * 2 / 4
    bin5 = abs(0.5 - (conf[2] + conf[3]) / 2) * 2 / 4
    ece = expected_calibration_error(d, torch.zeros(4), bins=10)
    assert ece == pytest.approx(bin8 + bin5, rel=1e-6)


def test_ece_bin_edges_are_closed_above() -> None:
    """Bins are (0, 1/2] and (1/2, 1]: a confidence of exactly 1/2 (a tie, predicted "chosen"
    and right) falls in the lower bin. Bins closed below would put it with the two pairs of
    confidence 3/4 (one right, one wrong), and the gaps would cancel to 0."""
    third = math.log(3.0)  # sigmoid(log 3) = 3/4
    d = torch.tensor([0.0, third, -third], dtype=torch.float64)
    # Lower bin: {1/2, right}: gap 1/2. Upper bin: accuracy 1/2, confidence 3/4: gap 1/4.
    expected = 1 / 3 * 0.5 + 2 / 3 * 0.25
    ece = expected_calibration_error(d, torch.zeros(3, dtype=torch.float64), bins=2)
    assert ece == pytest.approx(expected, abs=1e-9)


def test_ece_of_a_perfectly_calibrated_set_is_zero() -> None:
    # Two pairs at confidence ~0.5 (diff 0) in the same bin: accuracy 1 (p >= 0.5 counts
    # "chosen"), confidence 0.5 -> gap 0.5. Then add one confident correct pair: gap ~0.
    assert expected_calibration_error(torch.tensor([30.0]), torch.tensor([0.0])) == pytest.approx(
        0, abs=1e-9
    )


def test_win_rate() -> None:
    assert win_rate([1.0, 2.0, 0.0], [0.5, 2.0, 1.0]) == pytest.approx((1 + 0.5 + 0) / 3)


# ---- edges the mutation gate found untested -----------------------------------------------------
def test_losses_name_the_shapes_that_do_not_match() -> None:
    two, three = torch.zeros(2), torch.zeros(3)
    with pytest.raises(AssertionError, match=r"^shape mismatch: good \(2,\), bad \(3,\), "
                       r"weights \(2,\)$"):  # fmt: skip
        weighted_rank_loss(two, three, two)
    square = torch.zeros(2, 2)
    with pytest.raises(AssertionError, match=r"^expected \(k,\) tensors, got \(2, 2\) and "
                       r"\(2, 2\)$"):  # fmt: skip
        rrhf_loss(square, square, torch.tensor(0.0))
    with pytest.raises(AssertionError, match=r"^shape mismatch: policy \(2,\)/\(3,\), "
                       r"ref \(2,\)/\(2,\), weights \(3,\)$"):  # fmt: skip
        weighted_dpo_loss(two, three, two, two, 0.1, three)


def test_rrhf_adds_the_best_answers_nll_with_weight_one_by_default() -> None:
    p, r = torch.tensor([-1.0, -2.0]), torch.tensor([0.0, 1.0])  # hinge: max(0, -1 + 2) = 1
    assert rrhf_loss(p, r, torch.tensor(3.0)).item() == pytest.approx(1.0 + 3.0)


def test_best_vs_worst_edges() -> None:
    groups = [
        ScoredGroup("one", ("alone",), (1.0,)),  # one sample: no pair, and the scan goes on
        ScoredGroup("two", ("lo", "hi"), (0.0, 0.25)),  # two samples, a margin below 1
        ScoredGroup("tie", ("first", "second", "low"), (2.0, 2.0, 0.0)),  # first best wins
    ]
    pairs = best_vs_worst(groups)
    assert [(p.query_id, p.chosen, p.rejected) for p in pairs] == [
        ("two", "hi", "lo"),
        ("tie", "first", "low"),
    ]


def test_ece_defaults_to_ten_bins_and_uses_the_reward_difference() -> None:
    """Confidences 0.71 (right) and 0.79 (wrong) share the bin (0.7, 0.8] of ten bins (gap
    |0.5 - 0.75|); eleven bins would part them (7/11 < 0.71 <= 8/11 < 0.79)."""
    logit = lambda q: math.log(q / (1 - q))  # noqa: E731
    diffs = torch.tensor([logit(0.71), -logit(0.79)], dtype=torch.float64)
    rejected = torch.tensor([0.3, 1.1], dtype=torch.float64)  # only the differences count
    assert expected_calibration_error(diffs + rejected, rejected) == pytest.approx(0.25)


def test_preference_accuracy_counts_a_margin_of_one_as_a_win() -> None:
    assert preference_accuracy(torch.tensor([1.0]), torch.tensor([0.0])) == 1.0


def test_win_rate_counts_ties_half_and_refuses_unpaired_rewards() -> None:
    assert win_rate([1.0, 0.5, 0.0, 0.0], [0.5] * 4) == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    with pytest.raises(ValueError, match=r"^win rate of no queries$"):
        win_rate([], [])
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [1.0])
