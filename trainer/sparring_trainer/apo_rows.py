"""APO's training rows (Cheng et al. 2023), one pure function per update, beside the losses
they feed (`losses.weighted_rank_loss`, TRL's DPO, `training.train_sft`, `losses.rrhf_loss`).

The phases in `apo.py` and the benchmarks build their rows here and nowhere else, so that a
test of these functions is a test of what the game trains on.

Reward model, the paper's objective (eq. 6 with the reference code's weighting):

    L_RM = E_{(x, y_w, y_l) in D_P} [ w_h * -log sigmoid(r(x, y_w) - r(x, y_l)) ]
         + E_{x in D_gold, y ~ pi(x)} [ (apo_coeff / S) * -log sigmoid(r(x, y_gold) - r(x, y)) ]

taken as one weighted mean over the mixed batch (`weighted_rank_loss`): `humanWeight` is w_h
(beta2 in the paper); each of a gold query's S samples carries apo_coeff / S, so one query's
gold-vs-sample pairs weigh apo_coeff together. Modes: `baseline` keeps D_P only, `gail` keeps
the gold-vs-sample pairs only (the paper's collapse ablation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sparring_trainer.config import AdversaryUpdateSpec
from sparring_trainer.data import PreferencePair, Query
from sparring_trainer.losses import ScoredGroup, best_sample, best_vs_worst, preference_rows
from sparring_trainer.models import render_conversation
from sparring_trainer.training import RankedGroup, WeightedPair


def human_reward_pairs(
    tokenizer: Any, pairs: Sequence[PreferencePair], weight: float = 1.0
) -> list[WeightedPair]:
    """D_P as reward-model training rows: each human pair's chosen over its rejected reply,
    rendered as conversations, with `weight` (humanWeight, beta2 in the paper)."""
    return [
        WeightedPair(
            render_conversation(tokenizer, p.prompt, p.chosen),
            render_conversation(tokenizer, p.prompt, p.rejected),
            weight,
            "human",
        )
        for p in pairs
    ]


def gold_reward_pairs(
    tokenizer: Any,
    gold_queries: Sequence[Query],
    samples: Mapping[str, Sequence[str]],
    apo_coeff: float,
    samples_per_query: int,
) -> list[WeightedPair]:
    """D_APO: each gold query's gold answer over each of the policy's samples for it (by query
    id), each pair weighted apo_coeff / S."""
    per_pair = apo_coeff / samples_per_query
    pairs = []
    for q in gold_queries:
        if q.gold is None:
            raise ValueError(f"gold query {q.id} has no gold answer")
        gold_text = render_conversation(tokenizer, q.prompt, q.gold)
        pairs += [
            WeightedPair(gold_text, render_conversation(tokenizer, q.prompt, s), per_pair, "apo")
            for s in samples[q.id]
        ]
    return pairs


def reward_pairs(
    tokenizer: Any,
    update: AdversaryUpdateSpec,
    human: Sequence[PreferencePair],
    gold_queries: Sequence[Query],
    samples: Mapping[str, Sequence[str]],
    samples_per_query: int,
) -> list[WeightedPair]:
    """The reward model's rows for one round, by `update.mode` (apo, baseline or gail)."""
    # D_P keeps the RM anchored to human preferences (gail drops it).
    pairs = (
        [] if update.mode == "gail" else human_reward_pairs(tokenizer, human, update.human_weight)
    )
    if update.mode != "baseline":  # D_APO: gold answer preferred over each policy sample
        pairs += gold_reward_pairs(
            tokenizer, gold_queries, samples, update.apo_coeff, samples_per_query
        )
    return pairs


def dpo_rows(groups: Sequence[ScoredGroup], prompt_of: Mapping[str, str]) -> list[dict[str, str]]:
    """DPO: per query, the RM's best sample chosen over its worst (ties give no row), in TRL's
    standard format with the prompt rendered by the policy's chat template."""
    return preference_rows(best_vs_worst(groups), prompt_of)


def rjs_examples(
    groups: Sequence[ScoredGroup], prompt_of: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Rejection sampling: per query, (prompt, the RM's best sample) for supervised tuning."""
    return [(prompt_of[g.query_id], best_sample(g)) for g in groups]


def rrhf_groups(groups: Sequence[ScoredGroup], prompt_of: Mapping[str, str]) -> list[RankedGroup]:
    """RRHF: per query, every sample with its reward (the loss ranks them)."""
    return [RankedGroup(prompt_of[g.query_id], g.responses, g.rewards) for g in groups]
