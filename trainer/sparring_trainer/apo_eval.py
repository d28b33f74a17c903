"""APO's measurements, against honest baselines (the paper compares the APO RM with RM_Base:
the same base model and head trained on the same human pairs D_P, without the APO term).

Reward model, on the held-out preference pairs:
    rm_accuracy, rm_ece                  with 95% bootstrap intervals (_lo, _hi)
    rm_accuracy_vs_base, rm_ece_vs_base  the paired difference from RM_Base, with its interval
    rm_gold_over_policy                  how often the RM ranks a held-out gold answer above
                                         the policy's own answer (the APO term's aim)
Policy, on the held-out queries, scored by the judge (an RM trained on pairs disjoint from
the training RM's, or one the user names):
    reward_mean (+ interval), reward_vs_base (paired, against round 0's answers), win_rate
    and answers_changed (against the previous round), and what exposes reward hacking:
    answer_distinct_2, answer_repeated_trigram_rate, answer_words_mean, and log_ratio_mean,
    the mean log pi(answer) - log pi_base(answer) (how far the policy moved from the base).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparring_trainer.contract import PhaseContext
from sparring_trainer.data import PreferencePair, Query
from sparring_trainer.losses import expected_calibration_error, win_rate
from sparring_trainer.models import Checkpoint, render_conversation
from sparring_trainer.stats import interval, margin_correct, named, paired_difference
from sparring_trainer.training import score_texts


def margin_rows(pairs: Sequence[PreferencePair], margins: Sequence[float]) -> list[dict[str, Any]]:
    """The rows of a margins file: each held-out pair's key and margin, so that two games'
    RMs can be compared pair by pair (`sparring compare`)."""
    return [{"key": p.key, "margin": m} for p, m in zip(pairs, margins, strict=True)]


def pair_margins(ctx: PhaseContext, rm: Checkpoint, pairs: Sequence[PreferencePair]) -> list[float]:
    """r(chosen) - r(rejected) of each pair under `rm`."""
    model, tokenizer = rm.get()
    length = ctx.game.adversary.update.max_length
    chosen = score_texts(
        model,
        tokenizer,
        [render_conversation(tokenizer, p.prompt, p.chosen) for p in pairs],
        length,
    )
    rejected = score_texts(
        model,
        tokenizer,
        [render_conversation(tokenizer, p.prompt, p.rejected) for p in pairs],
        length,
    )
    return [c - r for c, r in zip(chosen, rejected, strict=True)]


def _ece(margins: Sequence[float], bins: int) -> float:
    import torch

    return expected_calibration_error(torch.tensor(list(margins)), torch.zeros(len(margins)), bins)


def rm_report(
    margins: Sequence[float],
    bins: int,
    seed: int,
    prefix: str = "rm",
    base: Sequence[float] | None = None,
) -> dict[str, float]:
    """Accuracy and ECE of an RM from its held-out margins, with intervals; with `base` (RM_Base's
    margins on the same pairs, in the same order) also the paired differences from it."""
    correct = [margin_correct(m) for m in margins]
    out = named(f"{prefix}_accuracy", interval(correct, seed))
    out |= named(f"{prefix}_ece", interval(margins, seed, lambda ms: _ece(ms, bins)))
    if base is not None:
        out |= named(
            f"{prefix}_accuracy_vs_base",
            paired_difference(correct, [margin_correct(m) for m in base], seed),
        )
        both = list(zip(margins, base, strict=True))
        out |= named(
            f"{prefix}_ece_vs_base",
            interval(
                both,
                seed,
                lambda ms: _ece([m for m, _ in ms], bins) - _ece([b for _, b in ms], bins),
            ),
        )
    return out


def gold_over_policy(
    ctx: PhaseContext, rm: Checkpoint, queries: Sequence[Query], answers: Sequence[str]
) -> dict[str, float]:
    """rm_gold_over_policy: the share of held-out queries where `rm` scores the gold answer above
    the policy's answer (ties count half). APO trains the RM to tell them apart; a share near 1
    also says the policy is still far from the gold answers."""
    golds = [q for q in queries if q.gold is not None]
    if not golds:
        return {}
    answer_of = dict(zip((q.id for q in queries), answers, strict=True))
    margins = pair_margins(
        ctx, rm, [PreferencePair(q.prompt, q.gold or "", answer_of[q.id], q.id) for q in golds]
    )
    return named("rm_gold_over_policy", interval([margin_correct(m) for m in margins], ctx.seed))


def policy_report(
    seed: int,
    rows: Sequence[dict[str, Any]],
    base: Sequence[dict[str, Any]] | None,
    previous: Sequence[dict[str, Any]] | None,
) -> dict[str, float]:
    """The policy's judge rewards with intervals, paired against round 0's answers (`base`) and
    the previous round's (`previous`); rows are answers.jsonl rows: id, answer, reward."""
    rewards = [r["reward"] for r in rows]
    out = named("reward_mean", interval(rewards, seed))
    if base is not None:
        before = {r["id"]: r["reward"] for r in base}
        out |= named(
            "reward_vs_base", paired_difference(rewards, [before[r["id"]] for r in rows], seed)
        )
    if previous is not None:
        old = {r["id"]: r for r in previous}
        out["win_rate"] = win_rate(rewards, [old[r["id"]]["reward"] for r in rows])
        out["answers_changed"] = float(sum(r["answer"] != old[r["id"]]["answer"] for r in rows))
    return out
