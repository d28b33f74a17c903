"""Loading and saving models: the policy and reward models a game's references name
(resolved to local paths by `modelrefs`), the ``tiny-random[:SEED]`` models built here (a small
random Llama with a byte-level BPE tokenizer trained on the packaged HH text, built in well
under a second; for tests and smoke runs), checkpoints and chat rendering.

GGUF files are dequantised by transformers at load time; the quantizer marker it leaves on the
model is removed so that the model trains and saves as a plain model.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sparring_trainer.adapters import add_lora, is_adapter, is_peft, load_adapter, save_adapter
from sparring_trainer.config import LoraSpec, ModelSpec
from sparring_trainer.document import StorageSpec
from sparring_trainer.modelrefs import ModelLoadError, resolve_model_ref, tiny_seed
from sparring_trainer.seeding import seeded
from sparring_trainer.stages import stage

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY_CHAT_TEMPLATE = (  # newlines as expressions: transformers renders with trim_blocks
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ '</s>' }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
_TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
_HH_ROLES = {"user": "Human", "assistant": "Assistant"}


# ----------------------------------------------------------------------------- tiny-random


@functools.cache
def _tiny_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from sparring_trainer.tables import builtin_resource

    with builtin_resource("hh-rlhf-harmless").open("rb") as raw, gzip.open(raw, "rt") as f:
        texts = [json.loads(line)["chosen"] for line in itertools.islice(f, 800)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=_TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return str(tokenizer.to_str())


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The deterministic tiny-random tokenizer (a fresh object each call; training is cached)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=_TINY_SPECIALS[3:],
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=1024,
    )


def _tiny_model(ref: str, kind: Literal["causal", "reward"], tokenizer: Any) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, **ids,
    )  # fmt: skip
    config.num_labels = 1
    cls = LlamaForCausalLM if kind == "causal" else LlamaForSequenceClassification
    with seeded(tiny_seed(ref)):
        model = cls(config)
    model.config._name_or_path = ref
    return model.eval()


# ----------------------------------------------------------------------------- loading


def _gguf(path: Path) -> tuple[Path, str] | None:
    """(folder, file name) when `path` is a .gguf file or a folder holding just one, no config."""
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return path, found[0].name
    return None


def _dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def drop_quantization_marker(model: PreTrainedModel) -> PreTrainedModel:
    """Forget that the weights came from a (dequantised) GGUF file, so they train and save."""
    for module in model.modules():
        attributes = vars(module)
        if "hf_quantizer" in attributes:
            attributes["hf_quantizer"] = None
        attributes.pop("quantization_method", None)
        if "is_quantized" in attributes:
            attributes["is_quantized"] = False
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            if "quantization_config" in vars(config):
                del config.quantization_config
            if getattr(config, "_is_quantized", False):
                config._is_quantized = False
    return model


def _load_tokenizer(ref: str, path: Path | str) -> PreTrainedTokenizerBase:
    if isinstance(path, str):
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    gguf = _gguf(path)
    try:
        if gguf:
            return AutoTokenizer.from_pretrained(str(gguf[0]), gguf_file=gguf[1])
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as error:
        raise ModelLoadError(
            f"cannot load a tokenizer from {ref!r} ({path}): {type(error).__name__}: {error}. "
            "Point the reference at a transformers model folder or a .gguf file"
        ) from error


def _finish(model: PreTrainedModel, tokenizer: Any, ref: str) -> None:
    """Eos and pad tokens on the tokenizer and the model (BERT: eos = [SEP]; causal: pad = eos)."""
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer of {ref!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    drop_quantization_marker(model)


def _load(
    spec: ModelSpec,
    cache_dir: Path,
    storage: StorageSpec | None,
    kind: Literal["causal", "reward"],
    seed: int,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = resolve_model_ref(spec.model, cache_dir, storage)
    tok_path = (
        path if spec.tokenizer is None else resolve_model_ref(spec.tokenizer, cache_dir, storage)
    )
    tokenizer = _load_tokenizer(spec.tokenizer or spec.model, tok_path)
    if isinstance(path, str):
        model = _tiny_model(path, kind, tokenizer)
        if spec.dtype not in ("auto", "float32"):
            model = model.to(_dtype(spec.dtype))
    else:
        with seeded(seed):  # a new score head (or any weight missing from the checkpoint)
            model = _from_pretrained(spec.model, path, kind, spec.dtype)
    _finish(model, tokenizer, spec.model)
    return model, tokenizer


def _from_pretrained(ref: str, path: Path, kind: Literal["causal", "reward"], dtype: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GgufConfig

    kwargs: dict[str, Any] = {"dtype": _dtype(dtype)}
    if kind == "reward":
        kwargs.update(num_labels=1, ignore_mismatched_sizes=True)
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    gguf = _gguf(path)
    if gguf:
        kwargs.update(gguf_file=gguf[1], quantization_config=GgufConfig(dequantize=True))
    try:
        return auto.from_pretrained(str(gguf[0] if gguf else path), **kwargs)
    except Exception as error:
        raise ModelLoadError(
            f"cannot load a {'causal LM' if kind == 'causal' else 'reward model'} from {ref!r} "
            f"({path}): {type(error).__name__}: {error}. Point the reference at a transformers "
            "model folder (config.json + weights) or a .gguf file"
        ) from error


def load_causal_lm(
    spec: ModelSpec, cache_dir: Path, storage: StorageSpec | None = None, *, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer (pad token set; pad = eos when the tokenizer has none).
    Weights the checkpoint lacks are drawn from `seed`."""
    return _load(spec, Path(cache_dir), storage, "causal", seed)


def load_reward_model(
    spec: ModelSpec, cache_dir: Path, storage: StorageSpec | None = None, *, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier with one output (a new scalar head, drawn from `seed`, when the
    checkpoint has none)."""
    return _load(spec, Path(cache_dir), storage, "reward", seed)


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    base: tuple[int, str, str] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Safetensors weights, config, generation config and tokenizer files in `out_dir`; for a
    LoRA-trained model the adapter only, with `base` (round, phase, name) naming the full
    checkpoint in the store that it adapts (see adapters.py). `state_dict`: the weights to
    write when the model's own are sharded (FSDP2, gathered by `distributed.full_state_dict`)."""
    out_dir = Path(out_dir)
    if is_peft(model):
        if base is None:
            raise ValueError("an adapter checkpoint needs the reference to its base model")
        save_adapter(model, tokenizer, out_dir, base)
        return
    drop_quantization_marker(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), state_dict=state_dict)
    tokenizer.save_pretrained(str(out_dir))


def load_checkpoint(
    path: Path, kind: Literal["causal", "reward"], trainable_adapter: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Reload a folder written by `save_checkpoint` in the dtype it was saved in. An adapter
    is merged into its base, unless `trainable_adapter` keeps it apart for more training."""
    path = Path(path)
    stage(f"loading {path.name}")
    if is_adapter(path):
        model, tokenizer = load_adapter(path, kind, _load_full, trainable_adapter)
        return model.to(compute_device()), tokenizer
    model, tokenizer = _load_full(path, kind)
    return model.to(compute_device()), tokenizer


def _load_full(
    path: Path, kind: Literal["causal", "reward"]
) -> tuple[Any, PreTrainedTokenizerBase]:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"checkpoint {str(path)!r} has no config.json (not a saved checkpoint?)"
        )
    tokenizer = _load_tokenizer(str(path), path)
    model = _from_pretrained(str(path), path, kind, "auto")
    _finish(model, tokenizer, str(path))
    return model, tokenizer


def full_checkpoint_dir(path: Path) -> Path:
    """A folder of full weights for readers that cannot apply our adapters (vLLM: it refuses
    adapters with modules_to_save, and ours name their base by store reference): the checkpoint
    itself, or its adapter merged once into a folder beside it."""
    path = Path(path)
    if not is_adapter(path):
        return path
    out = path.with_name(path.name + "-merged")
    if not (out / "config.json").is_file():
        model, tokenizer = load_checkpoint(path, "causal")
        save_checkpoint(model, tokenizer, out)
    return out


@dataclass
class Checkpoint:
    """A checkpoint folder, loaded on first use; or a model already in memory beside the folder
    it was saved to (prepare keeps what it saved: under torchrun only rank 0 writes the folder,
    and vLLM, which runs in one-GPU phases only, reads the folder)."""

    path: Path
    kind: Literal["causal", "reward"] = "causal"
    loaded: tuple[Any, Any] | None = None
    dtype: str = "auto"  # what vLLM loads it in (the role's spec dtype)

    def get(self) -> tuple[Any, Any]:
        if self.loaded is None:
            self.loaded = load_checkpoint(self.path, self.kind)
        return self.loaded


def load_for_update(
    path: Path, kind: Literal["causal", "reward"], lora: LoraSpec | None, *, seed: int
) -> tuple[Any, PreTrainedTokenizerBase]:
    """The model a role's update trains: the whole checkpoint (full fine-tuning), the last
    round's adapter on its base (LoRA, continued), or a fresh adapter (drawn from `seed`) on a
    full checkpoint."""
    if lora is None:
        return load_checkpoint(path, kind)
    if is_adapter(path):
        return load_checkpoint(path, kind, trainable_adapter=True)
    model, tokenizer = load_checkpoint(path, kind)
    return add_lora(model, lora, kind, seed=seed), tokenizer


def compute_device() -> str:
    """Where phases compute: SPARRING_DEVICE if set, else the GPU when there is one."""
    import os

    import torch

    if os.environ.get("SPARRING_DEVICE"):
        return os.environ["SPARRING_DEVICE"]
    if not torch.cuda.is_available():
        return "cpu"
    # Under torchrun each rank owns the GPU of its local rank.
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"


# ----------------------------------------------------------------------------- rendering


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The text the model continues: its chat template, or an HH transcript ending "Assistant:"."""
    if tokenizer is None:  # the HH fallback is for tokenizers without a template, not for none
        raise TypeError("render_prompt needs the model's tokenizer")
    if _has_template(tokenizer):
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
        )
        return str(text)
    parts = []
    for message in messages:
        role = _HH_ROLES.get(message["role"])
        parts.append(f"\n\n{role}: {message['content']}" if role else message["content"])
    return "".join(parts) + "\n\nAssistant:"


def render_conversation(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], response: str
) -> str:
    """Prompt + response; `render_prompt(...)` is always an exact prefix of the result.

    Chat templates: the response is followed by the eos token. HH transcripts: " response"
    (an encoder's tokenizer adds its own [SEP] when the text is tokenised).
    """
    prompt = render_prompt(tokenizer, messages)
    if _has_template(tokenizer):
        return prompt + response + (tokenizer.eos_token or "")
    return f"{prompt} {response}"
