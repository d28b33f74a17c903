"""APO (Cheng et al. 2023): the reward model plays against the policy, round by round.

Each function is one phase: it reads committed inputs through the `PhaseContext`, writes its
outputs under its own prefix and returns its metrics; `phases.run_phase` commits them.

    prepare (round 0)  base policy, base RM and the fixed evaluation RM into the store;
                       the base policy's test answers (the round-0 baseline)
    sample             the policy answers gold queries and training queries, S samples each
    update-adversary   RM trained on human pairs + gold-vs-sample pairs (the APO loss)
    score              the updated RM scores the training samples
    update-policy      RJS / RRHF / DPO against those scores
    evaluate           RM accuracy and ECE; policy reward under the fixed RM; win rate
"""

from __future__ import annotations

import copy
import statistics
from functools import cache
from pathlib import Path
from typing import Any

from sparring_trainer.adapters import add_lora, is_peft, merged
from sparring_trainer.apo_rows import (
    dpo_rows,
    human_reward_pairs,
    reward_pairs,
    rjs_examples,
    rrhf_groups,
)
from sparring_trainer.config import PREPARE_PHASE, GameConfig
from sparring_trainer.contract import PhaseContext
from sparring_trainer.data import APOSplits, Query, read_preferences, split_apo
from sparring_trainer.dpo import train_dpo
from sparring_trainer.generation import (
    Decoding,
    choose_engine,
    generate_transformers,
    generate_vllm,
)
from sparring_trainer.losses import (
    ScoredGroup,
    expected_calibration_error,
    preference_accuracy,
    win_rate,
)
from sparring_trainer.models import (
    Checkpoint,
    compute_device,
    full_checkpoint_dir,
    load_causal_lm,
    load_for_update,
    load_reward_model,
    render_conversation,
    render_prompt,
    save_checkpoint,
)
from sparring_trainer.training import (
    score_texts,
    train_reward_model,
    train_rrhf,
    train_sft,
)


@cache
def _splits_cached(game_json: str, ctx_storage_json: str, cache_dir: str) -> APOSplits:
    game = GameConfig.model_validate_json(game_json)
    from sparring_trainer.config import StorageSpec

    storage = StorageSpec.model_validate_json(ctx_storage_json)
    pairs = read_preferences(game.data.preferences, storage, Path(cache_dir))
    return split_apo(pairs, game.data)


def splits(ctx: PhaseContext) -> APOSplits:
    """The game's deterministic data splits (by prompt hash; recomputed, never stored)."""
    return _splits_cached(
        ctx.game.model_dump_json(), ctx.doc.spec.storage.model_dump_json(), str(ctx.cache_dir)
    )


def _sample_answers(
    ctx: PhaseContext, policy: Checkpoint, queries: list[Query], decoding: Decoding
) -> list[list[str]]:
    sampling = ctx.game.sampling
    engine = choose_engine(sampling.engine)
    if engine == "vllm":
        from transformers import AutoTokenizer

        model_dir = full_checkpoint_dir(policy.path)
        tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        prompts = [render_prompt(tokenizer, q.prompt) for q in queries]
        return generate_vllm(model_dir, prompts, decoding, ctx.seed, ctx.game.policy.dtype)
    model, tokenizer = policy.get()
    prompts = [render_prompt(tokenizer, q.prompt) for q in queries]
    return generate_transformers(
        model,
        tokenizer,
        prompts,
        decoding,
        sampling.batch_size,
        ctx.seed,
        progress=lambda done, total: ctx.progress(done, total, "prompts"),
    )


def _rewards(
    ctx: PhaseContext, rm: Checkpoint, queries: list[Query], answers: list[list[str]]
) -> list[list[float]]:
    model, tokenizer = rm.get()
    texts = [
        render_conversation(tokenizer, q.prompt, a)
        for q, group in zip(queries, answers, strict=True)
        for a in group
    ]
    flat = score_texts(model, tokenizer, texts, ctx.game.adversary.update.max_length)
    out, i = [], 0
    for group in answers:
        out.append(flat[i : i + len(group)])
        i += len(group)
    return out


def _greedy_answers(ctx: PhaseContext, policy: Checkpoint) -> tuple[list[Query], list[str]]:
    """The held-out queries and the policy's greedy answer to each; the policy is freed."""
    queries = splits(ctx).test_queries
    decoding = Decoding(n=1, max_new_tokens=ctx.game.evaluation.max_new_tokens, greedy=True)
    answers = [a[0] for a in _sample_answers(ctx, policy, queries, decoding)]
    policy.loaded = None  # free it before an RM loads
    return queries, answers


def _scored_answers(
    ctx: PhaseContext, eval_rm: Checkpoint, queries: list[Query], answers: list[str]
) -> tuple[list[dict[str, Any]], list[float]]:
    """The answers' rewards under the fixed RM, written to answers.jsonl."""
    rewards = [r[0] for r in _rewards(ctx, eval_rm, queries, [[a] for a in answers])]
    rows = [
        {"id": q.id, "answer": a, "reward": r}
        for q, a, r in zip(queries, answers, rewards, strict=True)
    ]
    ctx.write_jsonl("answers.jsonl", rows)
    return rows, rewards


def _rm_accuracy(ctx: PhaseContext, rm: Checkpoint, prefix: str) -> dict[str, float]:
    import torch

    model, tokenizer = rm.get()
    pairs = splits(ctx).test_pairs
    chosen = score_texts(
        model,
        tokenizer,
        [render_conversation(tokenizer, p.prompt, p.chosen) for p in pairs],
        ctx.game.adversary.update.max_length,
    )
    rejected = score_texts(
        model,
        tokenizer,
        [render_conversation(tokenizer, p.prompt, p.rejected) for p in pairs],
        ctx.game.adversary.update.max_length,
    )
    good, bad = torch.tensor(chosen), torch.tensor(rejected)
    return {
        f"{prefix}_accuracy": preference_accuracy(good, bad),
        f"{prefix}_ece": expected_calibration_error(good, bad, ctx.game.evaluation.ece_bins),
    }


# ---- phases ----------------------------------------------------------------------------------
def prepare(ctx: PhaseContext) -> dict[str, float]:
    """Models stay in memory after they are saved (under torchrun only rank 0 writes them),
    one at a time: the policy goes before the reward models load."""
    game, storage = ctx.game, ctx.doc.spec.storage
    data = splits(ctx)  # fail early on bad data, before any model work
    policy = load_causal_lm(game.policy, ctx.cache_dir, storage)
    save_checkpoint(*policy, base_policy := ctx.new_dir("base-policy"))
    ctx.upload_dir(base_policy, "base-policy")
    # The round-0 baseline's answers now, so that the policy is gone before the RMs load.
    queries, answers = _greedy_answers(ctx, Checkpoint(base_policy, loaded=policy))
    del policy
    rm, rm_tok = load_reward_model(game.adversary, ctx.cache_dir, storage)
    save_checkpoint(rm, rm_tok, base_rm := ctx.new_dir("base-rm"))
    ctx.upload_dir(base_rm, "base-rm")
    metrics: dict[str, float] = {"human_pairs": float(len(data.human_pairs))}
    metrics |= _rm_accuracy(ctx, Checkpoint(base_rm, "reward", (rm, rm_tok)), "rm")
    if game.evaluation.reward_model is not None:
        rm, rm_tok = load_reward_model(game.evaluation.reward_model, ctx.cache_dir, storage)
    else:
        # No fixed evaluation RM given: train one on all human pairs, once, and never again.
        human = human_reward_pairs(rm_tok, data.human_pairs)
        rm = rm.to(compute_device())  # type: ignore[arg-type]
        if game.evaluation.eval_rm_train.lora is not None:
            rm = add_lora(rm, game.evaluation.eval_rm_train.lora, "reward")
        train_metrics = train_reward_model(
            rm,
            rm_tok,
            human,
            game.evaluation.eval_rm_train,
            ctx.seed,
            progress=lambda s, t: ctx.progress(s, t, "eval-rm steps"),
        )
        metrics |= {f"eval_rm_{k}": v for k, v in train_metrics.items()}
    # Saved whole (an adapter is merged): the evaluation RM is fixed and read every round.
    save_checkpoint(rm := merged(rm), rm_tok, eval_rm_dir := ctx.new_dir("eval-rm"))
    ctx.upload_dir(eval_rm_dir, "eval-rm")
    eval_rm = Checkpoint(eval_rm_dir, "reward", (rm, rm_tok))
    metrics |= _rm_accuracy(ctx, eval_rm, "eval_rm")
    _, rewards = _scored_answers(ctx, eval_rm, queries, answers)
    metrics["reward_mean"] = statistics.fmean(rewards)
    return metrics


def sample(ctx: PhaseContext) -> dict[str, float]:
    data, sampling = splits(ctx), ctx.game.sampling
    queries = [*data.gold_queries, *data.train_queries]
    decoding = Decoding(
        n=sampling.samples_per_query,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
    )
    answers = _sample_answers(ctx, Checkpoint(ctx.policy_dir(ctx.round)), queries, decoding)
    gold_ids = {q.id for q in data.gold_queries}
    ctx.write_jsonl(
        "samples.jsonl",
        (
            {"id": q.id, "split": "gold" if q.id in gold_ids else "train", "responses": a}
            for q, a in zip(queries, answers, strict=True)
        ),
    )
    lengths = [len(r.split()) for group in answers for r in group]
    return {
        "samples": float(len(lengths)),
        "sample_words_mean": statistics.fmean(lengths) if lengths else 0.0,
        "sample_empty_rate": sum(1 for n in lengths if n == 0) / max(1, len(lengths)),
    }


def update_adversary(ctx: PhaseContext) -> dict[str, float]:
    update, data = ctx.game.adversary.update, splits(ctx)
    if update.init == "continue" and ctx.round > 1:
        init_dir = ctx.fetch_dir(ctx.round - 1, "update-adversary", "rm")
    else:  # the paper: re-initialising from the base RM each round calibrates better
        init_dir = ctx.fetch_dir(0, PREPARE_PHASE, "base-rm")
    model, tokenizer = load_for_update(init_dir, "reward", update.lora)
    samples: dict[str, list[str]] = {}
    if update.mode != "baseline":
        rows = ctx.read_jsonl(ctx.round, "sample", "samples.jsonl")
        samples = {row["id"]: row["responses"] for row in rows}
    pairs = reward_pairs(
        tokenizer,
        update,
        data.human_pairs,
        data.gold_queries,
        samples,
        ctx.game.sampling.samples_per_query,
    )
    metrics = train_reward_model(
        model,
        tokenizer,
        pairs,
        update,
        ctx.seed,
        progress=lambda s, t: ctx.progress(s, t, "rm steps"),
    )
    ctx.save_model(model, tokenizer, "rm", base=(0, PREPARE_PHASE, "base-rm"))
    return metrics | {
        "rm_pairs_human": float(sum(p.source == "human" for p in pairs)),
        "rm_pairs_apo": float(sum(p.source == "apo" for p in pairs)),
    }


def score(ctx: PhaseContext) -> dict[str, float]:
    data = splits(ctx)
    rows = {r["id"]: r for r in ctx.read_jsonl(ctx.round, "sample", "samples.jsonl")}
    queries = data.train_queries
    answers = [rows[q.id]["responses"] for q in queries]
    rm = Checkpoint(ctx.fetch_dir(ctx.round, "update-adversary", "rm"), "reward")
    rewards = _rewards(ctx, rm, queries, answers)
    ctx.write_jsonl(
        "scores.jsonl",
        (
            {"id": q.id, "responses": a, "rewards": r}
            for q, a, r in zip(queries, answers, rewards, strict=True)
        ),
    )
    flat = [x for group in rewards for x in group]
    spread = [max(g) - min(g) for g in rewards]
    return {
        "sample_reward_mean": statistics.fmean(flat),
        "sample_reward_std": statistics.pstdev(flat),
        "sample_reward_spread_mean": statistics.fmean(spread),
    }


def update_policy(ctx: PhaseContext) -> dict[str, float]:
    update = ctx.game.policy.update
    queries = {q.id: q for q in splits(ctx).train_queries}
    scored = ctx.read_jsonl(ctx.round, "score", "scores.jsonl")
    groups = [ScoredGroup(r["id"], tuple(r["responses"]), tuple(r["rewards"])) for r in scored]
    policy_dir = ctx.policy_dir(ctx.round)
    model, tokenizer = load_for_update(policy_dir, "causal", update.lora)
    tokenizer.padding_side = "right"
    prompt_of = {qid: render_prompt(tokenizer, q.prompt) for qid, q in queries.items()}
    progress = lambda s, t: ctx.progress(s, t, "policy steps")  # noqa: E731
    if update.method == "dpo":
        # Under LoRA, TRL keeps a frozen copy of the entering adapter as the reference.
        ref_model = None if is_peft(model) else copy.deepcopy(model).eval()
        rows = dpo_rows(groups, prompt_of)
        metrics = train_dpo(
            model, ref_model, tokenizer, rows, update, ctx.seed, ctx.new_dir("dpo"), progress
        )
    elif update.method == "rjs":
        examples = rjs_examples(groups, prompt_of)
        metrics = train_sft(model, tokenizer, examples, update, ctx.seed, progress)
    else:
        ranked = rrhf_groups(groups, prompt_of)
        metrics = train_rrhf(
            model, tokenizer, ranked, update, update.rrhf_sft_weight, ctx.seed, progress
        )
    ctx.save_model(model, tokenizer, "policy", base=(0, PREPARE_PHASE, "base-policy"))
    return metrics


def evaluate(ctx: PhaseContext) -> dict[str, float]:
    eval_rm = Checkpoint(ctx.fetch_dir(0, PREPARE_PHASE, "eval-rm"), "reward")
    rm = Checkpoint(ctx.fetch_dir(ctx.round, "update-adversary", "rm"), "reward")
    metrics = _rm_accuracy(ctx, rm, "rm")
    rm.loaded = None
    policy = Checkpoint(ctx.fetch_dir(ctx.round, "update-policy", "policy"))
    rows, rewards = _scored_answers(ctx, eval_rm, *_greedy_answers(ctx, policy))
    previous = (
        ctx.read_jsonl(0, PREPARE_PHASE, "answers.jsonl")
        if ctx.round == 1
        else ctx.read_jsonl(ctx.round - 1, "evaluate", "answers.jsonl")
    )
    old = {r["id"]: r["reward"] for r in previous}
    metrics["reward_mean"] = statistics.fmean(rewards)
    metrics["win_rate"] = win_rate([r["reward"] for r in rows], [old[r["id"]] for r in rows])
    return metrics


PHASES = {
    PREPARE_PHASE: prepare,
    "sample": sample,
    "update-adversary": update_adversary,
    "score": score,
    "update-policy": update_policy,
    "evaluate": evaluate,
}
