"""Batched answer generation: transformers on any device, vLLM on a GPU when installed.

Prompts are batched (left-padded) and each generate() call draws all S samples of a batch at
once (num_return_sequences), which is what makes sampling fast on CPU and GPU alike.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sparring_trainer.distributed import ranks

ProgressFn = Callable[[int, int], None]


class EngineUnavailable(RuntimeError):
    """The spec asked for an engine this machine cannot run."""


@dataclass(frozen=True)
class Decoding:
    n: int  # samples per prompt
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False


def choose_engine(requested: str) -> str:
    """auto picks vLLM only where it can run: installed and a CUDA device present."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if ranks().parallel:
        # One vLLM engine per torchrun rank is not supported yet (`sparring validate` refuses
        # an explicit vllm with gpu > 1); auto shards transformers' generate() instead.
        if requested == "vllm":
            raise EngineUnavailable(
                "spec.game.sampling.engine: 'vllm' runs in a one-GPU phase only; "
                "use 'auto' or 'transformers' for phases with gpu > 1"
            )
        return "transformers"
    if requested == "vllm":
        if not (has_vllm and torch.cuda.is_available()):
            raise EngineUnavailable(
                "spec.game.sampling.engine: 'vllm' needs the vllm extra "
                "(pip install 'sparring[vllm]') and a CUDA GPU; use 'auto' or 'transformers'"
            )
        return "vllm"
    if requested == "auto" and has_vllm and torch.cuda.is_available():
        return "vllm"
    return "transformers"


@torch.no_grad()
def generate_transformers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    decoding: Decoding,
    batch_size: int,
    seed: int,
    progress: ProgressFn | None = None,
) -> list[list[str]]:
    """Returns, for each prompt, ``decoding.n`` completions (prompt text excluded).

    Under torchrun each rank answers its shard of the prompts, with its own seed (ranks must
    not draw the same noise), and every rank returns all the answers in prompt order."""
    here = ranks()
    prompts = here.shard(prompts)
    torch.manual_seed(seed + 1_000_003 * here.rank)
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only models must be left-padded to generate
    results: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        out = model.generate(  # type: ignore[operator]
            **enc,
            do_sample=not decoding.greedy,
            temperature=None if decoding.greedy else decoding.temperature,
            top_p=None if decoding.greedy else decoding.top_p,
            top_k=None if decoding.greedy else 0,
            max_new_tokens=decoding.max_new_tokens,
            num_return_sequences=decoding.n,
            pad_token_id=tokenizer.pad_token_id,
        )  # (batch * n, prompt_len + new_len)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i in range(len(batch)):
            results.append([t.strip() for t in texts[i * decoding.n : (i + 1) * decoding.n]])
        if progress:
            progress(len(results), len(prompts))
    return here.gather(results)


def generate_vllm(
    model_dir: Path, prompts: Sequence[str], decoding: Decoding, seed: int, dtype: str
) -> list[list[str]]:
    """vLLM sampling from a saved checkpoint directory (GPU only)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), seed=seed, dtype=dtype if dtype != "float32" else "auto")
    params = SamplingParams(
        n=decoding.n,
        temperature=0.0 if decoding.greedy else decoding.temperature,
        top_p=1.0 if decoding.greedy else decoding.top_p,
        max_tokens=decoding.max_new_tokens,
        seed=seed,
    )
    outputs = llm.generate(list(prompts), params)
    return [[c.text.strip() for c in o.outputs] for o in outputs]
