"""APL building blocks: the intrinsic harmfulness score, both players' preference pairs and the
defender's weighted DPO loop. Pure functions of models and tables, so tests can check each one by
hand; the phases in apl.py only read inputs, call these and write outputs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparring_trainer.apl_eval import answer_complies
from sparring_trainer.config import APLSpec, PolicyUpdateSpec
from sparring_trainer.data import Seed
from sparring_trainer.distributed import ranks
from sparring_trainer.losses import PreferencePairOut, ScoredGroup, best_vs_worst, weighted_dpo_loss
from sparring_trainer.models import render_prompt
from sparring_trainer.training import _optimise, encode_for_lm, sequence_logprobs

ProgressFn = Callable[[int, int], None]


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def rewrite_instruction(spec: APLSpec, seed_prompt: str) -> str:
    """The attacker's instruction for one seed (`rewriteTemplate` with {prompt} replaced)."""
    return spec.rewrite_template.replace("{prompt}", seed_prompt)


def safe_answer_for(prompt: str, safe_answers: Sequence[str]) -> str:
    """The refusal used for `prompt`: chosen by a hash of its text, so the same every round."""
    digest = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16)
    return safe_answers[digest % len(safe_answers)]


# ---- intrinsic harmfulness -------------------------------------------------------------------
@torch.no_grad()
def response_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    batch_size: int = 16,
) -> list[float]:
    """Token-summed log p(response | prompt) for rendered prompts (EOS after the response
    included, as `encode_for_lm` builds it). Under torchrun each rank computes its shard and
    every rank returns them all."""
    model.eval()
    here = ranks()
    prompts, responses = here.shard(prompts), here.shard(responses)
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        enc = encode_for_lm(
            tokenizer,
            prompts[start : start + batch_size],
            responses[start : start + batch_size],
            max_length,
            model.device,
        )
        logp, _ = sequence_logprobs(model, enc)
        out.extend(logp.tolist())
    return here.gather(out)


def harm_scores(
    model: Any,
    tokenizer: Any,
    requests: Sequence[str],
    harmful: Sequence[str],
    safe: Sequence[str],
    max_length: int,
) -> list[float]:
    """``H(x') = log p(y_harm | x') - log p(y_safe | x')`` for each request x' (a user turn
    rendered with the model's chat template), token-summed."""
    prompts = [render_prompt(tokenizer, user_turn(r)) for r in requests]
    log_harm = response_logprobs(model, tokenizer, prompts, harmful, max_length)
    log_safe = response_logprobs(model, tokenizer, prompts, safe, max_length)
    return [h - s for h, s in zip(log_harm, log_safe, strict=True)]


def intrinsic_harm(
    defender: tuple[Any, Any],
    reference: tuple[Any, Any] | None,
    requests: Sequence[str],
    harmful: Sequence[str],
    safe: Sequence[str],
    max_length: int,
) -> list[float]:
    """H under the defender (model, tokenizer); with a reference, H_defender - H_reference
    (the DPO-style implicit reward of the harmful over the safe answer)."""
    scores = harm_scores(*defender, requests, harmful, safe, max_length)
    if reference is None:
        return scores
    base = harm_scores(*reference, requests, harmful, safe, max_length)
    return [s - b for s, b in zip(scores, base, strict=True)]


# ---- the attacker's pairs ----------------------------------------------------------------------
def attacker_pairs(groups: Sequence[ScoredGroup]) -> list[PreferencePairOut]:
    """Per seed: the highest-H rewrite is chosen, the lowest-H one rejected.

    Empty rewrites are dropped first (they carry no request); seeds whose rewrites all tie, or
    whose best and worst are the same text, give no pair (`losses.best_vs_worst`).
    """
    kept = []
    for group in groups:
        keep = [i for i, text in enumerate(group.responses) if text.strip()]
        kept.append(
            ScoredGroup(
                group.query_id,
                tuple(group.responses[i] for i in keep),
                tuple(group.rewards[i] for i in keep),
            )
        )
    return best_vs_worst(kept)


# ---- the defender's pairs ----------------------------------------------------------------------
@dataclass(frozen=True)
class ScoredRewrite:
    seed_id: str
    rewrite: str
    harm: float


@dataclass(frozen=True)
class DefenderPair:
    request: str
    """The user turn (a rewrite, or a benign prompt); rendered with the defender's template."""
    chosen: str
    rejected: str
    weight: float
    source: str  # "harm" or "utility"


def hardest_rewrites(rewrites: Sequence[ScoredRewrite], fraction: float) -> list[ScoredRewrite]:
    """The top `fraction` (rounded up, at least one) of the distinct non-empty rewrites by H
    centred within their seed (H minus the mean H of the seed's rewrites); ties keep their order.

    H sums log-probabilities over the seed's harmful target and safe answer, whose lengths and
    wording differ from seed to seed: ranked raw, a few seeds' rewrites took every place.
    Centred, a rewrite ranks by how much harder it is than its seed's other rewrites."""
    seen: set[str] = set()
    pool = []
    for item in rewrites:
        if item.rewrite.strip() and item.rewrite not in seen:
            seen.add(item.rewrite)
            pool.append(item)
    if not pool:
        return []
    by_seed: dict[str, list[float]] = {}
    for item in pool:
        by_seed.setdefault(item.seed_id, []).append(item.harm)
    centre = {seed: sum(h) / len(h) for seed, h in by_seed.items()}
    count = max(1, math.ceil(round(fraction * len(pool), 9)))
    order = sorted(range(len(pool)), key=lambda i: (centre[pool[i].seed_id] - pool[i].harm, i))
    return [pool[i] for i in order[:count]]


def defender_pairs(
    hardest: Sequence[ScoredRewrite],
    seeds: Mapping[str, Seed],
    safe_answers: Sequence[str],
    utility: Sequence[tuple[str, str]],
    alpha: float,
) -> list[DefenderPair]:
    """The defender's DPO pairs with weights that make the weighted batch mean an unbiased
    estimate of ``L = mean_harm(DPO) + alpha * mean_utility(DPO)``.

    Harm pairs: on each hard rewrite, the seed's safe answer is chosen over its harmful target.
    Utility pairs: on each benign prompt, the base defender's own answer (`utility` holds
    (prompt, answer)) is chosen over a refusal; a base answer that is empty or itself a refusal
    is skipped (it would teach the refusal). With N pairs in all, each harm pair weighs
    N / n_harm and each utility pair alpha * N / n_utility.
    """
    harm = [
        (r.rewrite, safe_answer_for(seeds[r.seed_id].prompt, safe_answers), seeds[r.seed_id].target)
        for r in hardest
    ]
    useful = [
        (prompt, answer, safe_answer_for(prompt, safe_answers))
        for prompt, answer in utility
        if alpha > 0 and answer_complies(answer)
    ]
    total = len(harm) + len(useful)
    pairs = [DefenderPair(x, c, r, total / len(harm), "harm") for x, c, r in harm]
    pairs += [DefenderPair(x, c, r, alpha * total / len(useful), "utility") for x, c, r in useful]
    return pairs


def train_weighted_dpo(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[DefenderPair],
    spec: PolicyUpdateSpec,
    seed: int,
    progress: ProgressFn | None = None,
) -> dict[str, float]:
    """DPO with a weight per pair (`losses.weighted_dpo_loss`), beta = ``spec.beta``.

    The reference log-probs are computed once, before the first step, with `model` as it enters
    the round (iterative DPO: the reference is the round's starting defender).
    """
    prompts = [render_prompt(tokenizer, user_turn(p.request)) for p in pairs]
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    ref_chosen = response_logprobs(model, tokenizer, prompts, chosen, spec.max_length)
    ref_rejected = response_logprobs(model, tokenizer, prompts, rejected, spec.max_length)

    def batch_loss(net: Any, batch: list[int]) -> tuple[torch.Tensor, float, dict[str, float]]:
        n = len(batch)
        enc = encode_for_lm(
            tokenizer,
            [prompts[i] for i in batch] * 2,
            [chosen[i] for i in batch] + [rejected[i] for i in batch],
            spec.max_length,
            model.device,
        )
        logp, _ = sequence_logprobs(net, enc)  # (2n,): chosen then rejected

        def column(values: Sequence[float]) -> torch.Tensor:
            return logp.new_tensor([values[i] for i in batch])

        ref_c, ref_r = column(ref_chosen), column(ref_rejected)
        weights = column([p.weight for p in pairs])
        loss = weighted_dpo_loss(logp[:n], logp[n:], ref_c, ref_r, spec.beta, weights)
        margin = ((logp[:n] - ref_c) - (logp[n:] - ref_r)).detach()
        return (
            loss,
            float(n),
            {  # the loss is a mean over the batch's n pairs
                "accuracy": float((margin > 0).float().mean()),
                "margin": float(margin.mean()),
            },
        )

    return _optimise(
        model, list(range(len(pairs))), spec, seed, batch_loss, progress, "defender-dpo"
    )
