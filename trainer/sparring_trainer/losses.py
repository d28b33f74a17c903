"""The game's losses and metrics as small pure functions on tensors.

Each is checked against values computed by hand in tests/test_losses.py, so the training code
can stay a thin loop around them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def weighted_rank_loss(
    reward_good: torch.Tensor, reward_bad: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """APO reward-model loss over a batch that mixes human and gold-vs-sample pairs.

    ``L = sum_i w_i * -log sigmoid(r(x_i, y_good) - r(x_i, y_bad)) / n``

    The paper writes ``L_rank(D_APO) + beta2 * L_rank(D_P)``; the reference code computes it
    as one weighted mean over the mixed batch, each human pair weighted `humanWeight` (beta2,
    1.0) and each gold-vs-sample pair `apoCoeff / S`. Shapes: all three are (n,).
    """
    assert reward_good.shape == reward_bad.shape == weights.shape, (
        f"shape mismatch: good {tuple(reward_good.shape)}, bad {tuple(reward_bad.shape)}, "
        f"weights {tuple(weights.shape)}"
    )
    per_pair = -F.logsigmoid(reward_good - reward_bad)  # (n,)
    return (weights * per_pair).sum() / per_pair.numel()


def rrhf_loss(
    mean_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    best_nll: torch.Tensor,
    sft_weight: float = 1.0,
) -> torch.Tensor:
    """RRHF (Yuan et al. 2023) for one query's k responses.

    ``L = sum_{r_i < r_j} max(0, p_i - p_j) + sft_weight * NLL(best)``, where ``p`` is each
    response's length-normalised log-probability under the policy. Ties in reward add nothing.
    Shapes: mean_logprobs and rewards (k,), best_nll a scalar.
    """
    assert mean_logprobs.shape == rewards.shape and mean_logprobs.dim() == 1, (
        f"expected (k,) tensors, got {tuple(mean_logprobs.shape)} and {tuple(rewards.shape)}"
    )
    # worse[i, j] is True where response i has a lower reward than response j.
    worse = rewards.unsqueeze(1) < rewards.unsqueeze(0)  # (k, k)
    margins = mean_logprobs.unsqueeze(1) - mean_logprobs.unsqueeze(0)  # p_i - p_j
    rank = torch.where(worse, margins.clamp(min=0), torch.zeros_like(margins)).sum()
    return rank + sft_weight * best_nll


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Sigmoid DPO loss on summed log-probs, averaged over the batch (for checks and APL)."""
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * logits).mean()


def weighted_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Sigmoid DPO loss with a weight per pair (the APL defender's harm + utility pairs).

    ``L = sum_i w_i * -log sigmoid(beta * ((pc_i - rc_i) - (pr_i - rr_i))) / n`` on summed
    log-probs: the same weighted mean as `weighted_rank_loss`, and `dpo_loss` when every
    weight is 1. Shapes: all five tensors are (n,).
    """
    assert (
        policy_chosen.shape
        == policy_rejected.shape
        == ref_chosen.shape
        == ref_rejected.shape
        == weights.shape
    ), (
        f"shape mismatch: policy {tuple(policy_chosen.shape)}/{tuple(policy_rejected.shape)}, "
        f"ref {tuple(ref_chosen.shape)}/{tuple(ref_rejected.shape)}, weights {tuple(weights.shape)}"
    )
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    per_pair = -F.logsigmoid(beta * logits)  # (n,)
    return (weights * per_pair).sum() / per_pair.numel()


@dataclass(frozen=True)
class ScoredGroup:
    """One query's samples and their rewards."""

    query_id: str
    responses: tuple[str, ...]
    rewards: tuple[float, ...]


@dataclass(frozen=True)
class PreferencePairOut:
    query_id: str
    chosen: str
    rejected: str
    margin: float


def best_vs_worst(groups: Sequence[ScoredGroup]) -> list[PreferencePairOut]:
    """DPO pairs: the highest-reward sample is chosen, the lowest rejected.

    A query whose samples all tie carries no preference and is skipped; so is a query whose
    best and worst responses are the same text (the pair would teach nothing).
    """
    pairs = []
    for group in groups:
        if len(group.responses) < 2:
            continue
        best = max(range(len(group.rewards)), key=lambda i: (group.rewards[i], -i))
        worst = min(range(len(group.rewards)), key=lambda i: (group.rewards[i], i))
        # best == worst exactly when every reward ties (both are then the first sample).
        if best == worst or group.responses[best] == group.responses[worst]:
            continue
        margin = group.rewards[best] - group.rewards[worst]
        pairs.append(
            PreferencePairOut(group.query_id, group.responses[best], group.responses[worst], margin)
        )
    return pairs


def preference_rows(
    pairs: Sequence[PreferencePairOut], prompt_of: Mapping[str, str]
) -> list[dict[str, str]]:
    """Pairs as TRL's standard preference rows, each with its query's rendered prompt."""
    return [
        {"prompt": prompt_of[p.query_id], "chosen": p.chosen, "rejected": p.rejected} for p in pairs
    ]


def best_sample(group: ScoredGroup) -> str:
    """Rejection sampling (RJS): the highest-reward response (first one on ties)."""
    return group.responses[max(range(len(group.rewards)), key=lambda i: (group.rewards[i], -i))]


def preference_accuracy(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> float:
    """Share of pairs where the RM ranks the human-preferred answer higher (ties count half)."""
    diff = reward_chosen - reward_rejected
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def expected_calibration_error(
    reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, bins: int = 10
) -> float:
    """ECE of the RM's pairwise preference probabilities (Guo et al. 2017).

    The RM predicts ``p = sigmoid(r_chosen - r_rejected)`` that the chosen answer is better.
    Its prediction is "chosen" when p >= 0.5, with confidence ``max(p, 1 - p)``. Confidences
    fall into ``bins`` uniform bins over [0, 1]; ECE = sum over bins of
    ``|bin| / n * |accuracy(bin) - mean confidence(bin)|``.
    """
    p = torch.sigmoid(reward_chosen - reward_rejected).double()  # (n,)
    confidence = torch.maximum(p, 1 - p)
    correct = (p >= 0.5).double()
    # Bin edges (0, 1/b], (1/b, 2/b], ... (1 - 1/b, 1]: a confidence in [1/2, 1] lands in
    # bins ceil(b/2) - 1 .. b - 1, so no index falls outside.
    index = torch.ceil(confidence * bins).long() - 1
    n = p.numel()
    ece = 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            gap = correct[members].mean() - confidence[members].mean()
            ece += count / n * abs(float(gap))
    return ece


def win_rate(new_rewards: Sequence[float], old_rewards: Sequence[float]) -> float:
    """Share of queries where the new answer out-scores the old one (ties count half). The
    rewards are paired by query: lists of different lengths are a ValueError."""
    if not new_rewards:
        raise ValueError("win rate of no queries")
    wins = sum(
        1.0 if n > o else 0.5 if n == o else 0.0
        for n, o in zip(new_rewards, old_rewards, strict=True)
    )
    return wins / len(new_rewards)
