"""Training loops for the reward model (APO loss), RJS and RRHF, plus scoring helpers.

One optimiser loop (`_optimise`) serves all three; each method only says how a batch becomes a
loss. DPO goes through TRL's DPOTrainer instead (see dpo.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sparring_trainer.config import TrainSpec
from sparring_trainer.distributed import ranks, shard_fully
from sparring_trainer.losses import rrhf_loss, weighted_rank_loss
from sparring_trainer.tracking import StepLog, TokenRate

T = TypeVar("T")
ProgressFn = Callable[[int, int], None]
IGNORE = -100


@dataclass(frozen=True)
class WeightedPair:
    """A reward-model training pair: `good` should score above `bad`."""

    good: str  # full conversation text (prompt + answer)
    bad: str
    weight: float
    source: str  # "human" or "apo": for per-source metrics


@dataclass(frozen=True)
class RankedGroup:
    """One query's sampled answers and their rewards (RRHF)."""

    prompt: str
    responses: tuple[str, ...]
    rewards: tuple[float, ...]


# ---- encoding ------------------------------------------------------------------------------
def encode_for_reward(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, device: Any
) -> dict[str, torch.Tensor]:
    # Truncate from the left: the answer at the end is what the reward model must see.
    tokenizer.truncation_side = "left"
    enc = tokenizer(
        list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    return {k: v.to(device) for k, v in enc.items()}


def encode_for_lm(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    device: Any,
) -> dict[str, torch.Tensor]:
    """Prompt and response tokenised separately and joined, so the mask boundary is exact.

    Labels are -100 on prompt and padding; the response ends with EOS so the model learns to
    stop. Over-long rows lose prompt tokens from the left, never response tokens.
    """
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"][: max_length - 1]
        r_ids = [*r_ids, tokenizer.eos_token_id]
        p_ids = p_ids[max(0, len(p_ids) + len(r_ids) - max_length) :]
        rows.append((p_ids, r_ids))
    width = max(len(p) + len(r) for p, r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(rows):  # right padding: positions stay 0..len-1
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(r)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def sequence_logprobs(
    model: PreTrainedModel, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's response tokens and their count: (n,), (n,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()  # (n, T-1, V): position t predicts token t+1
    labels = batch["labels"][:, 1:]  # (n, T-1)
    mask = labels != IGNORE
    token_logp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(
        -1
    )  # (n, T-1)
    return (token_logp * mask).sum(-1), mask.sum(-1)


def rewards_of(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).logits.squeeze(-1).float()  # (n, 1) -> (n,)


@torch.no_grad()
def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 16,
) -> list[float]:
    """Reward of each conversation text under a sequence-classification reward model. Under
    torchrun each rank scores its shard and every rank returns them all."""
    model.eval()
    here = ranks()
    texts = here.shard(texts)
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = encode_for_reward(
            tokenizer, texts[start : start + batch_size], max_length, model.device
        )
        scores.extend(rewards_of(model, batch).tolist())
    return here.gather(scores)


# ---- the one optimiser loop ---------------------------------------------------------------
# (net, rows) -> (the loss as a mean over `units`, units, stats). `net` is the model to call
# (DDP-wrapped under torchrun); `units` is what the mean divides by (pairs, groups or tokens),
# so that the loop can renormalise by the global count across ranks.
BatchLoss = Callable[[Any, list[T]], tuple[torch.Tensor, float, dict[str, float]]]


def _optimise(
    model: PreTrainedModel,
    items: Sequence[T],
    spec: TrainSpec,
    seed: int,
    batch_loss: BatchLoss[T],
    progress: ProgressFn | None,
    name: str,
) -> dict[str, float]:
    """AdamW with linear decay and grad clipping over shuffled mini-batches of `items`; each
    step's scalars go to the phase's TensorBoard run `name` (`tracking`).

    Data parallel under torchrun: every rank draws the same shuffled global batches of
    `spec.batch_size` and takes its `shard` of each; DDP (through accelerate) or FSDP2
    (`parallelism: fsdp`, the model then left sharded: save it with `ctx.save_model`) averages
    the gradients. Each rank's loss is rescaled from a mean over its own units to its share of the
    mean over all ranks' units, so N ranks x b give the gradient of 1 rank x N*b exactly, also
    when ranks hold different numbers of tokens or the last batch does not split evenly.
    """
    from accelerate import Accelerator

    if not items:
        raise ValueError("no training examples for this round")
    here = ranks()
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(items) / spec.batch_size)
    total = steps_per_epoch * spec.epochs
    if spec.max_steps:
        total = min(total, spec.max_steps)
    if spec.gradient_checkpointing:
        # Non-reentrant: the reentrant variant marks DDP's parameters ready twice.
        model.gradient_checkpointing_enable({"use_reentrant": False})
        if hasattr(model, "peft_config"):
            # The frozen base's embeddings give no grad to checkpoint through: the adapter
            # under them would get none.
            model.enable_input_require_grads()
    model.train()
    # `pragma: no mutate` marks what only several ranks exercise: the two-rank equivalence tests
    # under torchrun (tests/test_data_parallel.py, with negative controls) pin those lines, and
    # the mutation gate runs one process.
    fsdp = spec.parallelism == "fsdp" and here.parallel  # pragma: no mutate
    if fsdp:  # before the optimiser: sharding replaces the parameters
        shard_fully(model)  # pragma: no mutate
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(1, total))
    # Mixed precision stays this loop's own autocast (spec.bf16), as without accelerate.
    accelerator = Accelerator(cpu=model.device.type == "cpu", mixed_precision="no")
    # FSDP2 averages gradients over ranks in its reduce-scatter, as DDP does in its all-reduce:
    # the loss scaling below is the same for both.
    if fsdp:  # pragma: no mutate
        net, prepared = model, optimizer  # pragma: no mutate
    else:
        net, prepared = accelerator.prepare(model, optimizer)  # pragma: no mutate
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    step = 0
    curves = StepLog(name)
    tokens = TokenRate(model)  # pragma: no mutate
    clock = time.monotonic()  # pragma: no mutate
    while step < total:
        order = list(range(len(items)))
        rng.shuffle(order)
        for start in range(0, len(order), spec.batch_size):
            if step >= total:
                break
            mine = here.shard([items[i] for i in order[start : start + spec.batch_size]])
            # A rank left without a row (a short last batch) still runs one, weighted 0: DDP's
            # gradient all-reduce needs every rank's backward.
            rows = mine or [items[order[start]]]
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=spec.bf16):
                loss, units, stats = batch_loss(net, rows)
            assert torch.isfinite(loss), f"non-finite loss at step {step}: {loss.item()}"
            units = units if mine else 0.0  # pragma: no mutate
            keys = ["loss", *stats]
            local = [units, *(units * v for v in [float(loss.detach()), *stats.values()])]
            summed = here.total(local)  # one all-reduce: global units, then unit-weighted sums
            prepared.zero_grad(set_to_none=True)  # pragma: no mutate
            scaled = loss * (units * here.world / summed[0])  # pragma: no mutate
            if fsdp:
                scaled.backward()  # pragma: no mutate
                # the norm over all shards
                norm = torch.nn.utils.clip_grad_norm_(params, 1.0)  # pragma: no mutate
            else:
                accelerator.backward(scaled)
                norm = accelerator.clip_grad_norm_(params, 1.0)
            learning_rate = scheduler.get_last_lr()[0]  # the rate this step used
            prepared.step()
            scheduler.step()
            step += 1
            # This step's unit-weighted means over all ranks. (keys and summed[1:] are both
            # 1 + len(stats) long by construction: zip's strictness cannot matter.)
            means = [v / summed[0] for v in summed[1:]]
            step_means = dict(zip(keys, means, strict=True))  # pragma: no mutate
            for key, value in step_means.items():
                sums[key] = sums.get(key, 0.0) + value
            # Throughput is wall-clock: no test can pin its value (tests never assert times).
            now = time.monotonic()  # pragma: no mutate
            rows_in_step = len(order[start : start + spec.batch_size])  # pragma: no mutate
            throughput = rows_in_step / max(now - clock, 1e-9)  # pragma: no mutate
            clock = now  # pragma: no mutate
            curves.log(step, {
                **step_means,
                "learning_rate": float(learning_rate),
                "grad_norm": float(norm),
                "rows_per_second": throughput,
                "tokens_per_second": tokens.take()[1],  # pragma: no mutate
            })  # fmt: skip
            if progress:
                progress(step, total)
    curves.close()
    tokens.close()  # pragma: no mutate
    model.eval()
    return {f"train_{k}": v / step for k, v in sums.items()} | {"train_steps": float(step)}


# ---- the three methods ----------------------------------------------------------------------
def train_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[WeightedPair],
    spec: TrainSpec,
    seed: int,
    progress: ProgressFn | None = None,
) -> dict[str, float]:
    """APO RM training: weighted ranking loss over human and gold-vs-sample pairs."""

    def batch_loss(
        net: Any, batch: list[WeightedPair]
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        enc = encode_for_reward(
            tokenizer,
            [p.good for p in batch] + [p.bad for p in batch],
            spec.max_length,
            model.device,
        )
        rewards = rewards_of(net, enc)  # (2n,): goods then bads
        good, bad = rewards[: len(batch)], rewards[len(batch) :]
        weights = torch.tensor([p.weight for p in batch], device=rewards.device)
        loss = weighted_rank_loss(good, bad, weights)  # a mean over the batch's pairs
        return loss, float(len(batch)), {"accuracy": float((good > bad).float().mean())}

    return _optimise(model, pairs, spec, seed, batch_loss, progress, "reward-model")


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[str, str]],
    spec: TrainSpec,
    seed: int,
    progress: ProgressFn | None = None,
) -> dict[str, float]:
    """RJS: supervised fine-tuning on (prompt, best answer) pairs (token-mean NLL)."""

    def batch_loss(
        net: Any, batch: list[tuple[str, str]]
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        enc = encode_for_lm(
            tokenizer, [p for p, _ in batch], [r for _, r in batch], spec.max_length, model.device
        )
        logp, count = sequence_logprobs(net, enc)
        tokens = count.sum().clamp(min=1)  # a token mean: ranks hold different token counts
        return -(logp.sum() / tokens), float(tokens), {}

    return _optimise(model, examples, spec, seed, batch_loss, progress, "sft")


def train_rrhf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    groups: Sequence[RankedGroup],
    spec: TrainSpec,
    sft_weight: float,
    seed: int,
    progress: ProgressFn | None = None,
) -> dict[str, float]:
    """RRHF: ranking hinge on length-normalised log-probs ordered by reward, plus SFT on best."""

    def batch_loss(
        net: Any, batch: list[RankedGroup]
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        # One forward for the whole batch: DDP needs the same forwards on every rank per step,
        # and ranks may hold different numbers of groups.
        enc = encode_for_lm(
            tokenizer,
            [g.prompt for g in batch for _ in g.responses],
            [r for g in batch for r in g.responses],
            spec.max_length,
            model.device,
        )
        all_logp, all_count = sequence_logprobs(net, enc)  # (sum of k,)
        losses, start = [], 0
        for group in batch:
            k = len(group.responses)
            logp, count = all_logp[start : start + k], all_count[start : start + k]
            start += k
            rewards = torch.tensor(group.rewards, device=logp.device)
            best = int(torch.argmax(rewards))
            best_nll = -logp[best] / count[best].clamp(min=1)
            losses.append(rrhf_loss(logp / count.clamp(min=1), rewards, best_nll, sft_weight))
        return torch.stack(losses).mean(), float(len(batch)), {}

    return _optimise(model, groups, spec, seed, batch_loss, progress, "rrhf")
