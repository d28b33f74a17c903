"""One data-parallel equivalence run: trains every update method on fixed tiny data and saves
the trained weights, so that a test can compare N ranks x b against 1 rank x N*b.

    python tests/harness/dp_worker.py OUT                       # one process, global batch 4
    torchrun --nproc-per-node 2 tests/harness/dp_worker.py OUT  # 2 ranks x 2
    torchrun --nproc-per-node 2 tests/harness/dp_worker.py OUT --control

`--fsdp` trains the methods of Sparring's own loop with FSDP2 instead of DDP (TRL's DPO runs
DDP only). `--control` is the negative control: ranks normalised the naive way (each rank's
loss a mean over its own rows, as if every rank held as many; TRL given the whole global batch
per rank). The comparison must catch it.

The data is built so that a wrong normalisation shows: 7 rows with a global batch of 4 (the
last batch splits 2/1), answers of different lengths (ranks hold different token counts) and
pair weights that differ. TRL's DPO gets 8 pairs: accelerate tops up a last batch that does not
fill every rank with repeated pairs, which is exact only when batches divide.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from sparring_trainer import distributed
from sparring_trainer.adapters import add_lora
from sparring_trainer.apl_core import DefenderPair, train_weighted_dpo
from sparring_trainer.config import LoraSpec, ModelSpec, PolicyUpdateSpec, TrainSpec
from sparring_trainer.distributed import Ranks
from sparring_trainer.dpo import train_dpo
from sparring_trainer.models import load_causal_lm, load_reward_model
from sparring_trainer.training import (
    RankedGroup,
    WeightedPair,
    train_reward_model,
    train_rrhf,
    train_sft,
)

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "warm",
    "mat",
    "while",
    "rain",
    "fell",
    "over",
    "quiet",
    "hills",
    "and",
    "rivers",
]
SEED = 7


class EqualShares(Ranks):
    """Wrong on purpose: assumes every rank holds as many loss units as this one (the naive
    mean of means), and lets every rank take the whole global batch into TRL."""

    def total(self, values: list[float]) -> list[float]:  # type: ignore[override]
        return [float(v) * self.world for v in values]

    def per_rank(self, batch: int) -> int:
        return batch


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(n))


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters, whole (an FSDP-sharded model's gathered: every rank calls)."""
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    whole = distributed.full_state_dict(model)
    if whole is not None:
        return {k: whole[k].clone() for k in names} if whole else {}
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if k in names}


def main(out: Path, control: bool, fsdp: bool) -> None:
    here = distributed.ranks()
    if control:
        distributed.use(EqualShares(here.rank, here.world, here.local_rank))
    cache = Path(tempfile.mkdtemp())
    how = "fsdp" if fsdp else "ddp"
    spec = TrainSpec(learning_rate=1e-3, epochs=2, batch_size=4, max_length=64, parallelism=how)
    dpo = PolicyUpdateSpec(
        learning_rate=1e-3, epochs=2, batch_size=4, max_length=64, beta=0.5, parallelism=how
    )
    lora = LoraSpec(rank=4, alpha=8, dropout=0.0)
    results: dict[str, dict[str, torch.Tensor]] = {}

    def causal() -> tuple[torch.nn.Module, object]:
        model, tok = load_causal_lm(ModelSpec(model=f"tiny-random:{SEED}"), cache)
        tok.padding_side = "right"
        return model.train(), tok

    rm, tok = load_reward_model(ModelSpec(model=f"tiny-random:{SEED + 1}"), cache)
    pairs = [
        WeightedPair(text(i, 4 + i), text(i + 5, 2 + 2 * i), 0.25 + i / 4, "human")
        for i in range(7)
    ]
    train_reward_model(rm, tok, pairs, spec, SEED)
    results["rm"] = trainable(rm)

    model, tok = causal()
    examples = [(text(i, 3), text(i + 1, 1 + 3 * i)) for i in range(7)]
    train_sft(model, tok, examples, spec, SEED)
    results["rjs"] = trainable(model)

    model, tok = causal()
    groups = [
        RankedGroup(text(i, 3), tuple(text(i + k, 2 + i + k) for k in range(3)), (0.1, i, -1.0))
        for i in range(7)
    ]
    train_rrhf(model, tok, groups, spec, 1.0, SEED)
    results["rrhf"] = trainable(model)

    rows = [
        {"prompt": text(i, 3), "chosen": text(i + 2, 2 + i), "rejected": text(i + 4, 5)}
        for i in range(8)
    ]
    for name, use_lora in () if fsdp else (("dpo", False), ("dpo-lora", True)):
        model, tok = causal()
        torch.manual_seed(SEED)  # the fresh adapter's initial weights, the same on every rank
        model = add_lora(model, lora, "causal") if use_lora else model
        ref = None if use_lora else causal()[0].eval()
        with tempfile.TemporaryDirectory() as work:
            train_dpo(model, ref, tok, rows, dpo, SEED, Path(work))
        results[name] = trainable(model)

    model, tok = causal()
    defender = [
        DefenderPair(text(i, 4), text(i + 1, 2 + i), text(i + 3, 6), 0.5 + i / 3, "harm")
        for i in range(7)
    ]
    train_weighted_dpo(model, tok, defender, dpo, SEED)
    results["defender"] = trainable(model)

    if here.main:
        torch.save(results, out)
    distributed.finish()


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--control" in sys.argv[2:], "--fsdp" in sys.argv[2:])
    distributed.exit_process(0)
