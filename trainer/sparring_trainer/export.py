"""A round's trained model as one plain transformers folder: an adapter checkpoint is merged
into its base, so `AutoModelForCausalLM.from_pretrained` (or vLLM, or TGI) loads it directly.

    sparring export game.yaml --round 2 --out ./policy-r2            # the policy
    sparring export game.yaml --round 2 --role adversary --out ./rm  # the RM (APL: attacker)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from sparring_trainer.config import PREPARE_PHASE
from sparring_trainer.contract import make_context
from sparring_trainer.document import GameDocument
from sparring_trainer.models import load_checkpoint, save_checkpoint

Role = Literal["policy", "adversary"]


def checkpoint_of(kind: str, role: Role, round: int) -> tuple[int, str, str]:
    """Where a role's model after `round` is stored: (round, phase, output name)."""
    if role == "policy":
        return (
            (0, PREPARE_PHASE, "base-policy") if round == 0 else (round, "update-policy", "policy")
        )
    base, trained = ("base-attacker", "attacker") if kind == "apl" else ("base-rm", "rm")
    return (0, PREPARE_PHASE, base) if round == 0 else (round, "update-adversary", trained)


def export_model(doc: GameDocument, round: int, role: Role, out: Path) -> Path:
    """Write the merged model of `role` after `round` to `out` (which must not exist)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; export writes a new folder")
    where = checkpoint_of(doc.spec.game.kind, role, round)
    with tempfile.TemporaryDirectory(prefix="sparring-export-") as scratch:
        ctx = make_context(doc, round, "export", Path(scratch))
        reward = role == "adversary" and doc.spec.game.kind == "apo"
        model, tokenizer = load_checkpoint(ctx.fetch_dir(*where), "reward" if reward else "causal")
        save_checkpoint(model, tokenizer, out)
    return out
