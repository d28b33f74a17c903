"""LoRA adapters (peft) as round checkpoints.

With `update.lora` set, a role's update trains a low-rank adapter on a frozen base and its
checkpoint is that adapter only (a few MB instead of the whole model), plus `sparring-base.json`
naming the full checkpoint it adapts: prepare's copy of the base model in the store, by
(round, phase, name), never a local path, so any pod can resolve it. The next round loads the
same base and keeps training the adapter; consumers (sampling, scoring, evaluation, export)
merge it into the base on load.

`PhaseContext.fetch_dir` resolves the reference: for an adapter it returns a scratch folder of
links to the adapter's files with `base/` linking to the fetched base, which is what
`load_adapter` reads. A reward model's adapter keeps its score head in full (peft's
`modules_to_save` for SEQ_CLS models): the head is trained from scratch and is not low-rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sparring_trainer.config import LoraSpec
from sparring_trainer.seeding import seeded

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_CONFIG = "adapter_config.json"
BASE_REF = "sparring-base.json"  # {"round": 0, "phase": "prepare", "name": "base-policy"}
BASE_LINK = "base"  # in fetch_dir's view of an adapter: the fetched base checkpoint


def is_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def read_base_ref(path: Path) -> tuple[int, str, str]:
    ref = json.loads((Path(path) / BASE_REF).read_text())
    return int(ref["round"]), str(ref["phase"]), str(ref["name"])


def lora_config(spec: LoraSpec, kind: Literal["causal", "reward"]) -> Any:
    from peft import LoraConfig, TaskType

    targets = list(spec.target_modules)
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        # SEQ_CLS makes peft train and save the (new) score head in full beside the adapter.
        task_type=TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_CLS,
    )


def add_lora(
    model: PreTrainedModel, spec: LoraSpec, kind: Literal["causal", "reward"], *, seed: int = 0
) -> Any:
    """A fresh adapter on `model` (the base is frozen; the adapter starts as a no-op), its
    random half (and a reward model's new head) drawn from `seed`."""
    from peft import get_peft_model

    if spec.quantization != "none":
        # Validation refuses it (QLoRA is not implemented yet): reaching here means a game file
        # was not validated.
        raise ValueError(f"lora.quantization: {spec.quantization!r} is not implemented yet")
    try:
        with seeded(seed):
            return get_peft_model(model, lora_config(spec, kind))
    except ValueError as error:  # e.g. a target module the architecture does not have
        raise ValueError(f"lora.targetModules: {error}") from None


def load_adapter(
    path: Path,
    kind: Literal["causal", "reward"],
    base_loader: Any,
    trainable: bool,
) -> tuple[Any, PreTrainedTokenizerBase]:
    """An adapter checkpoint on its base: trainable (the next round keeps training it) or
    merged into the base (a plain transformers model, for every consumer)."""
    from peft import PeftModel

    path = Path(path)
    base_dir = path / BASE_LINK
    if not base_dir.is_dir():
        raise FileNotFoundError(
            f"adapter checkpoint {str(path)!r} has no {BASE_LINK}/: read it through "
            "PhaseContext.fetch_dir, which fetches the base model it names in " + BASE_REF
        )
    base, tokenizer = base_loader(base_dir, kind)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
    if not trainable:
        model = model.merge_and_unload()
    return model, tokenizer


def save_adapter(
    model: Any, tokenizer: PreTrainedTokenizerBase, out: Path, base: tuple[int, str, str]
) -> None:
    """The adapter's weights and config, the tokenizer, and the reference to its base."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    round_, phase, name = base
    (out / BASE_REF).write_text(json.dumps({"round": round_, "phase": phase, "name": name}))


def merged(model: Any) -> Any:
    """The full model an adapter amounts to, merged in place (`model` is spent)."""
    return model.merge_and_unload() if is_peft(model) else model
