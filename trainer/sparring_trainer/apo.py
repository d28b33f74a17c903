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
from sparring_trainer.apl_core import response_logprobs
from sparring_trainer.apo_eval import (
    gold_over_policy,
    margin_rows,
    pair_margins,
    policy_report,
    rm_report,
)
from sparring_trainer.apo_rows import (
    dpo_rows,
    human_reward_pairs,
    reward_pairs,
    rjs_examples,
    rrhf_groups,
)
from sparring_trainer.config import PREPARE_PHASE, AdversaryUpdateSpec, GameConfig, LoraSpec
from sparring_trainer.contract import PhaseContext
from sparring_trainer.data import APOSplits, Query, read_preferences, split_apo
from sparring_trainer.dpo import train_dpo
from sparring_trainer.generation import (
    Decoding,
    choose_engine,
    generate_transformers,
    generate_vllm,
)
from sparring_trainer.losses import ScoredGroup
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
from sparring_trainer.stats import BASE_MARGINS, RM_MARGINS, text_indicators
from sparring_trainer.training import (
    score_texts,
    train_reward_model,
    train_rrhf,
    train_sft,
)


@cache
def _splits_cached(game_json: str, ctx_storage_json: str, cache_dir: str) -> APOSplits:
    game = GameConfig.model_validate_json(game_json)
    from sparring_trainer.document import StorageSpec

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


SCORE_CHUNK = 64  # texts per progress report while scoring


def _rewards(
    ctx: PhaseContext, rm: Checkpoint, queries: list[Query], answers: list[list[str]]
) -> list[list[float]]:
    model, tokenizer = rm.get()
    texts = [
        render_conversation(tokenizer, q.prompt, a)
        for q, group in zip(queries, answers, strict=True)
        for a in group
    ]
    flat: list[float] = []
    for start in range(0, len(texts), SCORE_CHUNK):  # in chunks, to report progress
        chunk = texts[start : start + SCORE_CHUNK]
        flat += score_texts(model, tokenizer, chunk, ctx.game.adversary.update.max_length)
        ctx.progress(len(flat), len(texts), "answers scored")
    out, i = [], 0
    for group in answers:
        out.append(flat[i : i + len(group)])
        i += len(group)
    return out


def _greedy_answers(
    ctx: PhaseContext, policy: Checkpoint, logprobs: bool = False
) -> tuple[list[Query], list[str], list[float]]:
    """The held-out queries, the policy's greedy answer to each and (with `logprobs`) its
    log-probability of that answer; the policy is freed."""
    queries = splits(ctx).test_queries
    decoding = Decoding(n=1, max_new_tokens=ctx.game.evaluation.max_new_tokens, greedy=True)
    answers = [a[0] for a in _sample_answers(ctx, policy, queries, decoding)]
    logps = _answer_logprobs(ctx, policy, queries, answers) if logprobs else []
    policy.loaded = None  # free it before an RM loads
    return queries, answers, logps


def _answer_logprobs(
    ctx: PhaseContext, policy: Checkpoint, queries: list[Query], answers: list[str]
) -> list[float]:
    model, tokenizer = policy.get()
    prompts = [render_prompt(tokenizer, q.prompt) for q in queries]
    length = ctx.game.policy.update.max_length
    return response_logprobs(model, tokenizer, prompts, answers, length)


def _scored_answers(
    ctx: PhaseContext, eval_rm: Checkpoint, queries: list[Query], answers: list[str]
) -> list[dict[str, Any]]:
    """The answers' rewards under the judge, written to answers.jsonl."""
    rewards = [r[0] for r in _rewards(ctx, eval_rm, queries, [[a] for a in answers])]
    rows = [
        {"id": q.id, "prompt": list(q.prompt), "answer": a, "reward": r}
        for q, a, r in zip(queries, answers, rewards, strict=True)
    ]
    ctx.write_jsonl("answers.jsonl", rows)
    return rows


def _base_rm(ctx: PhaseContext, lora: LoraSpec | None) -> tuple[Any, Any]:
    """The base RM, loaded afresh, with a fresh adapter when `lora`. Its new head is drawn from
    the game's seed, so every load, on every rank, is the base-rm prepare saves (which under
    torchrun only rank 0 writes)."""
    storage = ctx.doc.spec.storage
    rm, tokenizer = load_reward_model(ctx.game.adversary, ctx.cache_dir, storage, seed=ctx.seed)
    rm = rm.to(compute_device())  # type: ignore[arg-type]  # where update-adversary trains
    return (rm if lora is None else add_lora(rm, lora, "reward", seed=ctx.seed)), tokenizer


def _trained_rm(
    ctx: PhaseContext,
    model: Any,
    tokenizer: Any,
    update: AdversaryUpdateSpec,
    samples: dict[str, list[str]],
) -> dict[str, float]:
    """`model` trained as a round's reward model, on the rows `update.mode` builds."""
    data = splits(ctx)
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
    apo = sum(p.weight for p in pairs if p.source == "apo")
    return metrics | {
        "rm_pairs_human": float(sum(p.source == "human" for p in pairs)),
        "rm_pairs_apo": float(sum(p.source == "apo" for p in pairs)),
        # The APO term's share of the RM loss (a weighted mean over all pairs); 0 when every
        # weight is (humanWeight 0 with no APO pairs, as RM_Base's).
        "apo_term_share": apo / total if (total := sum(p.weight for p in pairs)) else 0.0,
    }


# ---- phases ----------------------------------------------------------------------------------
def prepare(ctx: PhaseContext) -> dict[str, float]:
    """The base checkpoints, and round 0's measurements: the base policy's answers and RM_Base,
    the paper's baseline (the base RM trained on D_P alone, as a round's RM is trained).
    Models stay in memory after they are saved (under torchrun only rank 0 writes them), one at
    a time: the policy goes before the reward models load."""
    game, storage = ctx.game, ctx.doc.spec.storage
    data = splits(ctx)  # fail early on bad data, before any model work
    policy = load_causal_lm(game.policy, ctx.cache_dir, storage, seed=ctx.seed)
    save_checkpoint(*policy, base_policy := ctx.new_dir("base-policy"))
    ctx.upload_dir(base_policy, "base-policy")
    # The round-0 baseline's answers now, so that the policy is gone before the RMs load.
    queries, answers, _ = _greedy_answers(ctx, Checkpoint(base_policy, loaded=policy))
    del policy
    rm, rm_tok = load_reward_model(game.adversary, ctx.cache_dir, storage, seed=ctx.seed)
    save_checkpoint(rm, rm_tok, base_rm := ctx.new_dir("base-rm"))
    ctx.upload_dir(base_rm, "base-rm")
    del rm
    # Data-parallel as ddp even when the adversary's update shards: it is scored right after,
    # which a sharded model cannot be here.
    recipe = game.adversary.update.model_copy(update={"mode": "baseline", "parallelism": "ddp"})
    model, tokenizer = _base_rm(ctx, recipe.lora)
    train_metrics = _trained_rm(ctx, model, tokenizer, recipe, {})
    metrics: dict[str, float] = {f"rm_base_{k}": v for k, v in train_metrics.items()}
    rm_base = Checkpoint(base_rm, "reward", (model, tokenizer))
    del model
    margins = pair_margins(ctx, rm_base, data.test_pairs)
    ctx.write_jsonl(BASE_MARGINS, margin_rows(data.test_pairs, margins))
    metrics |= rm_report(margins, game.evaluation.ece_bins, ctx.seed)
    metrics |= gold_over_policy(ctx, rm_base, queries, answers)
    rm_base.loaded = None
    eval_rm = _judge(ctx, metrics)
    metrics |= rm_report(
        pair_margins(ctx, eval_rm, data.test_pairs), game.evaluation.ece_bins, ctx.seed, "eval_rm"
    )
    metrics |= policy_report(ctx.seed, _scored_answers(ctx, eval_rm, queries, answers), None, None)
    return metrics | text_indicators(answers) | {"log_ratio_mean": 0.0}


def _judge(ctx: PhaseContext, metrics: dict[str, float]) -> Checkpoint:
    """The fixed evaluation RM, saved whole as eval-rm: the one the user names, or the base RM
    trained once on the judge's own pairs (disjoint from every other split)."""
    game, storage = ctx.game, ctx.doc.spec.storage
    if game.evaluation.reward_model is not None:
        rm, rm_tok = load_reward_model(
            game.evaluation.reward_model, ctx.cache_dir, storage, seed=ctx.seed
        )
    else:
        train = game.evaluation.eval_rm_train
        rm, rm_tok = _base_rm(ctx, train.lora)
        train_metrics = train_reward_model(
            rm,
            rm_tok,
            human_reward_pairs(rm_tok, splits(ctx).judge_pairs),
            train,
            ctx.seed,
            progress=lambda s, t: ctx.progress(s, t, "eval-rm steps"),
        )
        metrics |= {f"eval_rm_{k}": v for k, v in train_metrics.items()}
    # Saved whole (an adapter is merged): the evaluation RM is fixed and read every round. It
    # stays loaded: under torchrun only rank 0 writes the folder.
    save_checkpoint(rm := merged(rm), rm_tok, eval_rm_dir := ctx.new_dir("eval-rm"))
    ctx.upload_dir(eval_rm_dir, "eval-rm")
    return Checkpoint(eval_rm_dir, "reward", (rm, rm_tok))


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
            {
                "id": q.id,
                "split": "gold" if q.id in gold_ids else "train",
                "prompt": list(q.prompt),
                "responses": a,
            }
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
    update = ctx.game.adversary.update
    if update.init == "continue" and ctx.round > 1:
        init_dir = ctx.fetch_dir(ctx.round - 1, "update-adversary", "rm")
    else:  # the paper: re-initialising from the base RM each round calibrates better
        init_dir = ctx.fetch_dir(0, PREPARE_PHASE, "base-rm")
    samples: dict[str, list[str]] = {}
    if update.mode != "baseline":
        rows = ctx.read_jsonl(ctx.round, "sample", "samples.jsonl")
        samples = {row["id"]: row["responses"] for row in rows}
    model, tokenizer = load_for_update(init_dir, "reward", update.lora, seed=ctx.seed)
    metrics = _trained_rm(ctx, model, tokenizer, update, samples)
    ctx.save_model(model, tokenizer, "rm", base=(0, PREPARE_PHASE, "base-rm"))
    return metrics


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
            {"id": q.id, "prompt": list(q.prompt), "responses": a, "rewards": r}
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
    model, tokenizer = load_for_update(policy_dir, "causal", update.lora, seed=ctx.seed)
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
    """The round's RM against RM_Base, and its policy against the base policy's answers and
    the previous round's, judged by the fixed evaluation RM (see apo_eval)."""
    game, data = ctx.game, splits(ctx)
    policy = Checkpoint(ctx.fetch_dir(ctx.round, "update-policy", "policy"))
    queries, answers, logps = _greedy_answers(ctx, policy, logprobs=True)
    base_policy = Checkpoint(ctx.fetch_dir(0, PREPARE_PHASE, "base-policy"))
    base_logps = _answer_logprobs(ctx, base_policy, queries, answers)
    base_policy.loaded = None
    rm = Checkpoint(ctx.fetch_dir(ctx.round, "update-adversary", "rm"), "reward")
    base = [r["margin"] for r in ctx.read_jsonl(0, PREPARE_PHASE, BASE_MARGINS)]
    margins = pair_margins(ctx, rm, data.test_pairs)
    ctx.write_jsonl(RM_MARGINS, margin_rows(data.test_pairs, margins))
    metrics = rm_report(margins, game.evaluation.ece_bins, ctx.seed, base=base)
    metrics |= gold_over_policy(ctx, rm, queries, answers)
    rm.loaded = None
    eval_rm = Checkpoint(ctx.fetch_dir(0, PREPARE_PHASE, "eval-rm"), "reward")
    rows = _scored_answers(ctx, eval_rm, queries, answers)
    first = ctx.read_jsonl(0, PREPARE_PHASE, "answers.jsonl")
    previous = (
        first if ctx.round == 1 else ctx.read_jsonl(ctx.round - 1, "evaluate", "answers.jsonl")
    )
    metrics |= policy_report(ctx.seed, rows, first, previous)
    ratio = [a - b for a, b in zip(logps, base_logps, strict=True)]
    return metrics | text_indicators(answers) | {"log_ratio_mean": statistics.fmean(ratio)}


PHASES = {
    PREPARE_PHASE: prepare,
    "sample": sample,
    "update-adversary": update_adversary,
    "score": score,
    "update-policy": update_policy,
    "evaluate": evaluate,
}
