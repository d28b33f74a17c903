"""GPU check: the trainer's GPU paths on one device, in minutes, with nothing to download.

Run it whenever a CUDA machine is available (one H100/H200 takes well under 10 minutes):

    python benchmarks/gpu_check.py                 # 0.1B and 0.5B random Llamas, bf16, CUDA
    python benchmarks/gpu_check.py --sizes 0.1b    # one size
    python benchmarks/gpu_check.py --quick --cpu   # the smoke test: tiny model, fp32, CPU

Each model is a randomly initialised Llama built from a config (0.1B: hidden 768, 12 layers;
0.5B: hidden 1536, 16 layers) with the trainer's own tiny tokenizer, so the check carries no
weights and reaches no network. Random weights say nothing about quality; they exercise the
same code at the same sizes. Per size, with the trainer's own functions:

* a full-fine-tuning DPO update (`dpo.train_dpo`, TRL) and a LoRA one (`adapters.add_lora`,
  the reference being TRL's frozen copy of the adapter), bf16;
* the reward-model update (`training.train_reward_model`) on weighted pairs, bf16 autocast;
* batched sampling (`generation.generate_transformers`), 4 samples per prompt.

For each: wall seconds, throughput and the peak GPU memory (torch.cuda.max_memory_allocated).
The table is appended to RESULTS.md; until it has run there, the README says "not run".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import base_parser, log, report, table

SIZES = {  # name -> (hidden, layers, heads, kv heads, mlp)
    "tiny": (64, 2, 4, 2, 128),
    "0.1b": (768, 12, 12, 4, 2048),
    "0.5b": (1536, 16, 12, 4, 4096),
}
PAIRS, PROMPTS, SAMPLES = 32, 16, 4


def parse_args() -> argparse.Namespace:
    p = base_parser(__doc__)
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=None)
    p.add_argument("--cpu", action="store_true", help="run on the CPU in fp32 (the smoke test)")
    args = p.parse_args()
    if args.sizes is None:
        args.sizes = ["tiny"] if args.quick else ["0.1b", "0.5b"]
    return args


def build(size: str, kind: str, tokenizer: Any, device: str, bf16: bool) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    hidden, layers, heads, kv, mlp = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    cls = LlamaForCausalLM if kind == "causal" else LlamaForSequenceClassification
    model = cls(config).to(device)
    return model.to(torch.bfloat16) if bf16 else model


class Measure:
    """Wall time and peak device memory of one step."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> Measure:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_: Any) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.peak_gib = float("nan")
        self.seconds = time.perf_counter() - self.start


def check_size(size: str, device: str, bf16: bool) -> list[list[str]]:
    from sparring_trainer.adapters import add_lora
    from sparring_trainer.apo_rows import human_reward_pairs
    from sparring_trainer.config import (
        AdversaryUpdateSpec,
        LoraSpec,
        PolicyUpdateSpec,
        PreferenceSource,
    )
    from sparring_trainer.data import read_preferences
    from sparring_trainer.dpo import train_dpo
    from sparring_trainer.generation import Decoding, generate_transformers
    from sparring_trainer.models import render_prompt, tiny_tokenizer
    from sparring_trainer.training import train_reward_model

    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "right"
    prefs = read_preferences(PreferenceSource(path="builtin:hh-rlhf-harmless"))[:PAIRS]
    prompts = [render_prompt(tokenizer, p.prompt) for p in prefs]
    dpo_rows = [
        {"prompt": q, "chosen": p.chosen, "rejected": p.rejected}
        for q, p in zip(prompts, prefs, strict=True)
    ]
    steps = 2 if size == "tiny" else 8
    policy_spec = PolicyUpdateSpec(batch_size=4, max_length=512, max_steps=steps, bf16=bf16)
    out: list[list[str]] = []

    def record(what: str, m: Measure, amount: float, unit: str) -> None:
        peak = "-" if m.peak_gib != m.peak_gib else f"{m.peak_gib:.2f}"
        out.append([size, what, f"{m.seconds:.1f}", f"{amount / m.seconds:.1f} {unit}", peak])
        log(f"{size} {what}: {m.seconds:.1f} s")

    with tempfile.TemporaryDirectory() as work:
        for lora in (False, True):
            model = build(size, "causal", tokenizer, device, bf16)
            if lora:
                model = add_lora(model, LoraSpec(rank=16, alpha=32, dropout=0.0), "causal")
            ref = None if lora else build(size, "causal", tokenizer, device, bf16).eval()
            with Measure(device) as m:
                metrics = train_dpo(
                    model, ref, tokenizer, dpo_rows, policy_spec, 0, Path(work) / str(lora)
                )
            pairs = metrics["train_steps"] * policy_spec.batch_size
            record("DPO, LoRA r=16" if lora else "DPO, full", m, pairs, "pairs/s")
            del model, ref
        rm = build(size, "reward", tokenizer, "cpu", False).to(device)  # fp32 weights, autocast
        pairs_rm = human_reward_pairs(tokenizer, prefs)
        rm_spec = AdversaryUpdateSpec(batch_size=8, max_length=512, max_steps=steps, bf16=bf16)
        with Measure(device) as m:
            metrics = train_reward_model(rm, tokenizer, pairs_rm, rm_spec, 0)
        record("RM update", m, metrics["train_steps"] * rm_spec.batch_size, "pairs/s")
        del rm
        policy = build(size, "causal", tokenizer, device, bf16).eval()
        tokenizer.padding_side = "left"
        decoding = Decoding(n=SAMPLES, max_new_tokens=64, temperature=1.0)
        with Measure(device) as m:
            answers = generate_transformers(
                policy, tokenizer, prompts[:PROMPTS], decoding, PROMPTS * SAMPLES, 0
            )
        record("sampling", m, sum(len(a) for a in answers), "samples/s")
    return out


def main() -> int:
    started = time.time()
    args = parse_args()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: not run: no CUDA device (use --cpu for the smoke test)", file=sys.stderr)
        return 2
    device, bf16 = ("cpu", False) if args.cpu else ("cuda", True)
    results: list[list[str]] = []
    for size in args.sizes:
        results += check_size(size, device, bf16)
    body = table(["model", "step", "seconds", "throughput", "peak GPU GiB"], results)
    body += (
        f"\n\nRandom-weight Llamas built from a config ({', '.join(args.sizes)}), "
        f"{'bf16 on CUDA' if bf16 else 'fp32 on the CPU (smoke test)'}; DPO and the RM update "
        "run a fixed number of optimiser steps on HH-harmless pairs; sampling draws "
        f"{SAMPLES} samples for each of {PROMPTS} prompts, 64 new tokens at most. "
        "Wall time includes the first step's warm-up."
    )
    report(args, "GPU check (benchmarks/gpu_check.py)", body, [0], started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
