"""Fresh weights drawn from the game's seed alone.

A new scalar head on a pretrained encoder, or a new LoRA adapter, is drawn from torch's global
random state. What consumed random numbers before the draw depends on more than the game: a cold
model cache dequantises a GGUF file or builds a model that a warm cache reads back ready, so the
same game and seed gave different heads, and different metrics, depending on the cache. Every
such draw runs inside `seeded`, which starts from the seed and leaves the caller's state as it
was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    import torch

    # Weights are initialised on the CPU (from_pretrained, peft) and only then moved, so the
    # CPU generator is the one to fix (and restore); torch.manual_seed would reseed the CUDA
    # generators too, which fork_rng(devices=[]) does not restore.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
