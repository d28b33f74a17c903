"""APL (Wang et al. 2025): an attacker LLM rewrites harmful requests, the defender learns to
refuse them without refusing everything. The policy is the defender, the adversary the attacker.

Each function is one phase: it reads committed inputs through the `PhaseContext`, writes its
outputs under its own prefix and returns its metrics; `phases.run_phase` commits them.

    prepare (round 0)  base defender (`base-policy/`), base attacker (`base-attacker/`), the
                       optional judge (`judge/`); the base defender's greedy answers to the
                       utility prompts (`benign-answers.jsonl`); the round-0 evaluation
    sample             the attacker writes K rewrites of each training seed (temperature/top_p
                       from spec.game.apl); the defender answers each one (`samples.jsonl`)
    score              intrinsic harmfulness H(x') = log p(y_harm|x') - log p(y_safe|x') under
                       the defender, optionally minus the same under the base defender
    update-adversary   attacker DPO (beta_att) on highest-H vs lowest-H rewrite per seed
    update-policy      defender weighted DPO (beta_def): safe over harmful answer on the
                       hardest rewrites + alpha * (own answer over a refusal) on benign prompts
    evaluate           ASR direct and through the attacker, over-refusal on held-out benign
                       prompts, mean H of the test rewrites, attacker diversity (distinct-2)

The building blocks (scores, pairs, the weighted DPO loop) are in apl_core.py; the judging
(refusal markers, distinct-n, the optional judge model) in apl_eval.py.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from sparring_trainer.adapters import is_peft
from sparring_trainer.apl_core import (
    ScoredRewrite,
    attacker_pairs,
    defender_pairs,
    hardest_rewrites,
    intrinsic_harm,
    rewrite_instruction,
    safe_answer_for,
    train_weighted_dpo,
    user_turn,
)
from sparring_trainer.apl_eval import (
    attack_succeeds,
    clean_rewrite,
    is_refusal,
    judge_complies,
    keeps_request,
)
from sparring_trainer.config import PREPARE_PHASE, APLSpec, PolicyUpdateSpec, TrainSpec
from sparring_trainer.contract import PhaseContext
from sparring_trainer.data import APLSplits, Seed, read_prompt_rows, split_apl
from sparring_trainer.document import StorageSpec
from sparring_trainer.dpo import train_dpo
from sparring_trainer.generation import (
    Decoding,
    choose_engine,
    generate_transformers,
    generate_vllm,
)
from sparring_trainer.losses import ScoredGroup, preference_rows
from sparring_trainer.models import (
    Checkpoint,
    full_checkpoint_dir,
    load_causal_lm,
    load_checkpoint,
    load_for_update,
    render_prompt,
    save_checkpoint,
)
from sparring_trainer.stats import distinct_n


def apl_spec(ctx: PhaseContext) -> APLSpec:
    """spec.game.apl. GameConfig guarantees it is set and the defender uses DPO."""
    assert ctx.game.apl is not None, "GameConfig requires spec.game.apl for kind 'apl'"
    return ctx.game.apl


@cache
def _splits_cached(apl_json: str, storage_json: str) -> APLSplits:
    spec = APLSpec.model_validate_json(apl_json)
    storage = StorageSpec.model_validate_json(storage_json)
    seeds = read_prompt_rows(spec.seeds, storage)
    benign = read_prompt_rows(spec.benign, storage)
    return split_apl(seeds, benign, spec)


def splits(ctx: PhaseContext) -> APLSplits:
    """The game's deterministic seed and benign splits (by prompt hash; never stored)."""
    return _splits_cached(apl_spec(ctx).model_dump_json(), ctx.doc.spec.storage.model_dump_json())


def _generate(
    ctx: PhaseContext, lm: Checkpoint, requests: Sequence[str], decoding: Decoding, what: str
) -> list[list[str]]:
    """`decoding.n` completions of each request, given as a user turn in the model's template."""
    if not requests:
        return []
    if choose_engine(ctx.game.sampling.engine) == "vllm":
        from transformers import AutoTokenizer

        path = full_checkpoint_dir(lm.path)
        tokenizer: Any = AutoTokenizer.from_pretrained(path)
        prompts = [render_prompt(tokenizer, user_turn(r)) for r in requests]
        return generate_vllm(path, prompts, decoding, ctx.seed, lm.dtype)
    model, tokenizer = lm.get()
    return generate_transformers(
        model,
        tokenizer,
        [render_prompt(tokenizer, user_turn(r)) for r in requests],
        decoding,
        ctx.game.sampling.batch_size,
        ctx.seed,
        progress=lambda done, total: ctx.progress(done, total, what),
    )


def _attacker_dir(ctx: PhaseContext, round: int) -> Path:
    """The attacker that plays `round`: last round's update, or the base attacker."""
    if round <= 1:
        return ctx.fetch_dir(0, PREPARE_PHASE, "base-attacker")
    return ctx.fetch_dir(round - 1, "update-adversary", "attacker")


HARM_CHUNK = 32  # requests per progress report while scoring H


def _harm(
    ctx: PhaseContext,
    defender: Checkpoint,
    requests: Sequence[str],
    seeds: Sequence[Seed],
    ref: Path,
) -> list[float]:
    """H of each request (seed i's target and safe answer); relative to the base defender
    `ref` when `relativeToReference` (exactly 0 while the defender is the reference)."""
    spec, max_length = apl_spec(ctx), ctx.game.policy.update.max_length
    harmful = [s.target for s in seeds]
    safe = [safe_answer_for(s.prompt, spec.safe_answers) for s in seeds]
    if spec.relative_to_reference and defender.path.resolve() == ref.resolve():
        return [0.0] * len(requests)
    reference = load_checkpoint(ref, "causal") if spec.relative_to_reference else None
    model = defender.get()
    harm: list[float] = []
    for start in range(0, len(requests), HARM_CHUNK):  # in chunks, to report progress
        end = start + HARM_CHUNK
        harm += intrinsic_harm(
            model, reference, requests[start:end], harmful[start:end], safe[start:end], max_length
        )
        ctx.progress(len(harm), len(requests), "requests scored")
    return harm


def _mean(values: Sequence[float | bool]) -> float:
    return statistics.fmean(float(v) for v in values) if values else 0.0


def _evaluate(
    ctx: PhaseContext,
    defender: Checkpoint,
    attacker: Checkpoint,
    ref: Path,
    judge: Checkpoint | None,
) -> dict[str, float]:
    """The round's metrics on held-out data; answers go to `answers.jsonl`.

    ASR attack uses ONE greedy rewrite per test seed (deterministic, so rounds compare), and
    the defender answers every request greedily.
    """
    spec, data, game = apl_spec(ctx), splits(ctx), ctx.game
    seeds = data.test_seeds
    rewrite_decoding = Decoding(n=1, max_new_tokens=spec.attacker_max_new_tokens, greedy=True)
    instructions = [rewrite_instruction(spec, s.prompt) for s in seeds]
    rewrites = [
        clean_rewrite(g[0]) for g in _generate(ctx, attacker, instructions, rewrite_decoding, "rw")
    ]
    attacker.loaded = None  # free it before the defender loads
    benign = [q.prompt[-1]["content"] for q in data.benign_test]
    answer_decoding = Decoding(n=1, max_new_tokens=game.evaluation.max_new_tokens, greedy=True)
    requests = [s.prompt for s in seeds] + rewrites + benign
    answers = [g[0] for g in _generate(ctx, defender, requests, answer_decoding, "answers")]
    n = len(seeds)
    direct, attack, benign_answers = answers[:n], answers[n : 2 * n], answers[2 * n :]
    harm = _harm(ctx, defender, rewrites, seeds, ref)
    direct_ok = [attack_succeeds(None, a) for a in direct]
    attack_ok = [attack_succeeds(rw, a) for rw, a in zip(rewrites, attack, strict=True)]
    refused = [is_refusal(a) for a in benign_answers]
    metrics = {
        "asr_direct": _mean(direct_ok),
        "asr_attack": _mean(attack_ok),
        "over_refusal": _mean(refused),
        "harm_score_mean": _mean(harm),
        "attacker_diversity": distinct_n(rewrites, 2),
        "attacker_distinct_1": distinct_n(rewrites, 1),
        "attacker_refusal_rate": _mean([is_refusal(r) for r in rewrites]),
        "rewrite_empty_rate": _mean([not r.strip() for r in rewrites]),
        "rewrite_keeps_request": _mean(
            [keeps_request(s.prompt, rw) for s, rw in zip(seeds, rewrites, strict=True)]
        ),
    }
    judged: dict[str, list[bool]] = {}
    if judge is not None:
        model, tokenizer = judge.get()
        harmful = [s.prompt for s in seeds]  # the judge always sees the original request
        judged["direct"] = judge_complies(model, tokenizer, harmful, direct)
        judged["attack"] = judge_complies(model, tokenizer, harmful, attack)
        metrics["asr_direct_judge"] = _mean(judged["direct"])
        metrics["asr_attack_judge"] = _mean(judged["attack"])
    rows: list[dict[str, Any]] = []
    for i, s in enumerate(seeds):
        rows.append({"kind": "direct", "id": s.id, "request": s.prompt, "answer": direct[i],
                     "success": direct_ok[i]} | _judged(judged, "direct", i))  # fmt: skip
        rows.append({"kind": "attack", "id": s.id, "seed": s.prompt, "request": rewrites[i],
                     "answer": attack[i], "success": attack_ok[i], "harm": harm[i]}
                    | _judged(judged, "attack", i))  # fmt: skip
    for q, text, answer, flag in zip(
        data.benign_test, benign, benign_answers, refused, strict=True
    ):
        rows.append({"kind": "benign", "id": q.id, "request": text, "answer": answer,
                     "refused": flag})  # fmt: skip
    ctx.write_jsonl("answers.jsonl", rows)
    return metrics


def _judged(judged: dict[str, list[bool]], kind: str, i: int) -> dict[str, bool]:
    return {"judge_success": judged[kind][i]} if kind in judged else {}


# ---- phases ----------------------------------------------------------------------------------
def prepare(ctx: PhaseContext) -> dict[str, float]:
    spec, game, storage = apl_spec(ctx), ctx.game, ctx.doc.spec.storage
    data = splits(ctx)  # fail early on bad data, before any model work
    defender, defender_tok = load_causal_lm(game.policy, ctx.cache_dir, storage, seed=ctx.seed)
    save_checkpoint(defender, defender_tok, base_policy := ctx.new_dir("base-policy"))
    ctx.upload_dir(base_policy, "base-policy")
    base_lm = Checkpoint(base_policy, loaded=(defender, defender_tok), dtype=game.policy.dtype)
    same = ("model", "tokenizer", "dtype")
    if all(getattr(game.adversary, f) == getattr(game.policy, f) for f in same):
        attacker_lm = Checkpoint(
            base_policy, loaded=base_lm.loaded, dtype=game.adversary.dtype
        )  # one load, not two
    else:
        attacker, attacker_tok = load_causal_lm(
            game.adversary, ctx.cache_dir, storage, seed=ctx.seed
        )
        save_checkpoint(attacker, attacker_tok, base_attacker := ctx.new_dir("base-attacker"))
        attacker_lm = Checkpoint(
            base_attacker, loaded=(attacker, attacker_tok), dtype=game.adversary.dtype
        )
        del attacker
    ctx.upload_dir(attacker_lm.path, "base-attacker")
    judge = None
    if spec.judge is not None:
        judge_lm = load_causal_lm(spec.judge, ctx.cache_dir, storage, seed=ctx.seed)
        save_checkpoint(*judge_lm, judge_dir := ctx.new_dir("judge"))
        ctx.upload_dir(judge_dir, "judge")
        judge = Checkpoint(judge_dir, loaded=judge_lm)
    # The utility term's preferred answers: the base defender's own, greedy, computed once.
    prompts = [q.prompt[-1]["content"] for q in data.benign_train]
    decoding = Decoding(n=1, max_new_tokens=game.sampling.max_new_tokens, greedy=True)
    answers = [g[0] for g in _generate(ctx, base_lm, prompts, decoding, "benign answers")]
    ctx.write_jsonl(
        "benign-answers.jsonl",
        (
            {"id": q.id, "prompt": p, "answer": a}
            for q, p, a in zip(data.benign_train, prompts, answers, strict=True)
        ),
    )
    metrics = {
        "train_seeds": float(len(data.train_seeds)),
        "test_seeds": float(len(data.test_seeds)),
        "benign_answer_refusal_rate": _mean([is_refusal(a) for a in answers]),
    }
    return metrics | _evaluate(ctx, base_lm, attacker_lm, base_policy, judge)


def sample(ctx: PhaseContext) -> dict[str, float]:
    spec, data, sampling = apl_spec(ctx), splits(ctx), ctx.game.sampling
    attacker = Checkpoint(_attacker_dir(ctx, ctx.round), dtype=ctx.game.adversary.dtype)
    rewrite_decoding = Decoding(
        n=spec.rewrites_per_prompt,
        max_new_tokens=spec.attacker_max_new_tokens,
        temperature=spec.attacker_temperature,
        top_p=spec.attacker_top_p,
    )
    instructions = [rewrite_instruction(spec, s.prompt) for s in data.train_seeds]
    raw = _generate(ctx, attacker, instructions, rewrite_decoding, "seeds")
    rewrites = [[clean_rewrite(t) for t in group] for group in raw]
    attacker.loaded = None
    defender = Checkpoint(ctx.policy_dir(ctx.round), dtype=ctx.game.policy.dtype)
    answer_decoding = Decoding(
        n=1,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
    )
    flat = [r for group in rewrites for r in group]
    answers = [g[0] for g in _generate(ctx, defender, flat, answer_decoding, "rewrites")]
    k = spec.rewrites_per_prompt
    ctx.write_jsonl(
        "samples.jsonl",
        (
            {
                "id": s.id,
                "seed": s.prompt,
                "rewrites": group,
                "answers": answers[i * k : (i + 1) * k],
            }
            for i, (s, group) in enumerate(zip(data.train_seeds, rewrites, strict=True))
        ),
    )
    return {
        "rewrites": float(len(flat)),
        "rewrite_words_mean": _mean([len(r.split()) for r in flat]),
        "rewrite_empty_rate": _mean([not r.strip() for r in flat]),
        "rewrite_distinct_2": distinct_n(flat, 2),
        "answer_refusal_rate": _mean([is_refusal(a) for a in answers]),
        "attack_success_rate": _mean(
            [attack_succeeds(r, a) for r, a in zip(flat, answers, strict=True)]
        ),
    }


def score(ctx: PhaseContext) -> dict[str, float]:
    seeds = splits(ctx).train_seeds
    rows = {r["id"]: r for r in ctx.read_jsonl(ctx.round, "sample", "samples.jsonl")}
    requests = [rw for s in seeds for rw in rows[s.id]["rewrites"]]
    per_request = [s for s in seeds for _ in rows[s.id]["rewrites"]]
    defender = Checkpoint(ctx.policy_dir(ctx.round), dtype=ctx.game.policy.dtype)
    ref = ctx.fetch_dir(0, PREPARE_PHASE, "base-policy")
    harm = _harm(ctx, defender, requests, per_request, ref)
    out, i = [], 0
    for s in seeds:
        k = len(rows[s.id]["rewrites"])
        out.append({"id": s.id, "rewrites": rows[s.id]["rewrites"], "harm": harm[i : i + k]})
        i += k
    ctx.write_jsonl("scores.jsonl", out)
    return {
        "harm_score_mean": _mean(harm),
        "harm_score_std": statistics.pstdev(harm) if harm else 0.0,
        "harm_score_max_mean": _mean([max(r["harm"]) for r in out if r["harm"]]),
        "harm_score_spread_mean": _mean(
            [max(r["harm"]) - min(r["harm"]) for r in out if r["harm"]]
        ),
    }


def update_adversary(ctx: PhaseContext) -> dict[str, float]:
    """The attacker continues from the last round's (`init` is APO's); `mode: baseline` keeps
    it as it is, unchanged, so the defender learns against a fixed rewriter."""
    spec, update = apl_spec(ctx), ctx.game.adversary.update
    seeds = {s.id: s for s in splits(ctx).train_seeds}
    model, tokenizer = load_for_update(
        _attacker_dir(ctx, ctx.round), "causal", update.lora, seed=ctx.seed
    )
    tokenizer.padding_side = "right"
    scored = ctx.read_jsonl(ctx.round, "score", "scores.jsonl")
    groups = [ScoredGroup(r["id"], tuple(r["rewrites"]), tuple(r["harm"])) for r in scored]
    pairs = attacker_pairs(groups)
    instruction_of = {
        sid: render_prompt(tokenizer, user_turn(rewrite_instruction(spec, s.prompt)))
        for sid, s in seeds.items()
    }
    rows = preference_rows(pairs, instruction_of)
    metrics = {
        "attacker_pairs": float(len(rows)),
        "attacker_pair_margin_mean": _mean([p.margin for p in pairs]),
    }
    frozen = update.mode == "baseline"
    metrics["attacker_frozen"] = float(frozen)
    if rows and not frozen:  # no pairs (every seed's rewrites tied): it stays as it was
        dpo_spec = PolicyUpdateSpec(
            method="dpo",
            beta=update.beta,
            **{name: getattr(update, name) for name in TrainSpec.model_fields},
        )
        # Under LoRA, TRL keeps a frozen copy of the entering adapter as the reference.
        ref_model = None if is_peft(model) else copy.deepcopy(model).eval()
        metrics |= train_dpo(
            model,
            ref_model,
            tokenizer,
            rows,
            dpo_spec,
            ctx.seed,
            ctx.new_dir("dpo"),
            lambda s, t: ctx.progress(s, t, "attacker steps"),
        )
    ctx.save_model(model, tokenizer, "attacker", base=(0, PREPARE_PHASE, "base-attacker"))
    return metrics


def update_policy(ctx: PhaseContext) -> dict[str, float]:
    spec, update = apl_spec(ctx), ctx.game.policy.update
    seeds = {s.id: s for s in splits(ctx).train_seeds}
    scored = ctx.read_jsonl(ctx.round, "score", "scores.jsonl")
    flat = [
        ScoredRewrite(r["id"], text, h)
        for r in scored
        for text, h in zip(r["rewrites"], r["harm"], strict=True)
    ]
    hardest = hardest_rewrites(flat, spec.hardest_fraction)
    benign = ctx.read_jsonl(0, PREPARE_PHASE, "benign-answers.jsonl")
    utility = [(b["prompt"], b["answer"]) for b in benign]
    pairs = defender_pairs(hardest, seeds, spec.safe_answers, utility, spec.alpha)
    model, tokenizer = load_for_update(
        ctx.policy_dir(ctx.round), "causal", update.lora, seed=ctx.seed
    )
    metrics: dict[str, float] = {}
    if pairs:  # none when every rewrite is empty and no benign answer is usable: no update
        metrics = train_weighted_dpo(
            model,
            tokenizer,
            pairs,
            update,
            ctx.seed,
            lambda s, t: ctx.progress(s, t, "defender steps"),
        )
    ctx.save_model(model, tokenizer, "policy", base=(0, PREPARE_PHASE, "base-policy"))
    n_utility = sum(p.source == "utility" for p in pairs)
    return metrics | {
        "defender_pairs_harm": float(len(pairs) - n_utility),
        "defender_pairs_utility": float(n_utility),
        "hardest_harm_min": min(r.harm for r in hardest) if hardest else 0.0,
        # How many of the rewrites the defender is trained to refuse still ask the seed's
        # question (a high-H "rewrite" that answers it instead teaches the wrong refusal).
        "hardest_keep_request": _mean(
            [keeps_request(seeds[r.seed_id].prompt, r.rewrite) for r in hardest]
        )
        if hardest
        else 0.0,
        "hardest_seeds": float(len({r.seed_id for r in hardest})),
    }


def evaluate(ctx: PhaseContext) -> dict[str, float]:
    game = ctx.game
    defender = Checkpoint(
        ctx.fetch_dir(ctx.round, "update-policy", "policy"), dtype=game.policy.dtype
    )
    attacker = Checkpoint(
        ctx.fetch_dir(ctx.round, "update-adversary", "attacker"), dtype=game.adversary.dtype
    )
    ref = ctx.fetch_dir(0, PREPARE_PHASE, "base-policy")
    judge_dir = ctx.fetch_dir(0, PREPARE_PHASE, "judge") if apl_spec(ctx).judge else None
    judge = Checkpoint(judge_dir) if judge_dir else None
    return _evaluate(ctx, defender, attacker, ref, judge)


PHASES = {
    PREPARE_PHASE: prepare,
    "sample": sample,
    "score": score,
    "update-adversary": update_adversary,
    "update-policy": update_policy,
    "evaluate": evaluate,
}
