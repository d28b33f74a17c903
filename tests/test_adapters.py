"""LoRA adapters as round checkpoints (issue "Train what users train", 1): the checkpoint is
the adapter and a reference to its base in the store; read back through a phase's context it
merges into exactly the model that was trained, or keeps training; a reward model's score head
is saved with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from sparring_trainer.adapters import ADAPTER_CONFIG, BASE_REF, add_lora, is_peft
from sparring_trainer.config import PREPARE_PHASE, LoraSpec, ModelSpec
from sparring_trainer.contract import make_context
from sparring_trainer.document import GameDocument
from sparring_trainer.models import (
    load_causal_lm,
    load_checkpoint,
    load_for_update,
    load_reward_model,
    save_checkpoint,
)
from sparring_trainer.store import commit, open_store, phase_prefix

ROOT = Path(__file__).resolve().parents[1]
LORA = LoraSpec(rank=4, alpha=8, dropout=0.0)


def _game(tmp_path: Path) -> GameDocument:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path / 'store'}"}
    return GameDocument.model_validate(doc)


def _publish(game: GameDocument, round_: int, phase: str, name: str, local: Path) -> None:
    """Upload a checkpoint folder as phase (round_, phase)'s output `name` and commit it."""
    store = open_store(game.spec.storage)
    prefix = phase_prefix(game.metadata.namespace, game.metadata.name, round_, phase)
    store.upload_tree(local, prefix + name + "/")
    store.put_bytes(prefix + "metrics.json", b"{}")
    commit(store, prefix)


def _perturb_adapter(model: Any, seed: int) -> None:
    """Stand-in for a round of training: every trainable tensor moves (LoRA's B starts at 0,
    so an untrained adapter would be a no-op and prove nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def _ids(tokenizer: Any) -> dict[str, torch.Tensor]:
    return dict(tokenizer(["Human: hi\n\nAssistant: hello there"], return_tensors="pt"))


def test_a_policy_adapter_is_saved_alone_and_read_back_merged_or_trainable(
    tmp_path: Path,
) -> None:
    game = _game(tmp_path)
    base, tokenizer = load_causal_lm(ModelSpec(model="tiny-random:1"), tmp_path / "cache")
    save_checkpoint(base, tokenizer, tmp_path / "base-policy")
    _publish(game, 0, PREPARE_PHASE, "base-policy", tmp_path / "base-policy")

    trained = add_lora(base, LORA, "causal")
    _perturb_adapter(trained, seed=1)
    out = tmp_path / "policy"
    save_checkpoint(trained, tokenizer, out, base=(0, PREPARE_PHASE, "base-policy"))
    saved = {p.name for p in out.iterdir()}
    assert {ADAPTER_CONFIG, "adapter_model.safetensors", BASE_REF} <= saved
    assert "model.safetensors" not in saved  # the adapter only, not the whole model
    base_bytes = (tmp_path / "base-policy" / "model.safetensors").stat().st_size
    assert (out / "adapter_model.safetensors").stat().st_size < base_bytes / 5
    _publish(game, 1, "update-policy", "policy", out)

    reader = make_context(game, 2, "sample", tmp_path / "scratch")
    view = reader.fetch_dir(1, "update-policy", "policy")
    ids = _ids(tokenizer)
    with torch.no_grad():
        expected = trained.eval()(**ids).logits
        merged, _ = load_checkpoint(view, "causal")
        assert not is_peft(merged)  # consumers get a plain transformers model
        torch.testing.assert_close(merged(**ids).logits, expected, atol=1e-5, rtol=1e-5)
        plain, _ = load_checkpoint(reader.fetch_dir(0, PREPARE_PHASE, "base-policy"), "causal")
        assert (plain(**ids).logits - expected).abs().max() > 1e-3  # the adapter matters

    # The next round's update continues this adapter: the same weights, and only they train.
    again, _ = load_for_update(view, "causal", LORA, seed=0)
    assert is_peft(again)
    trainable = {n for n, p in again.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(again(**ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_a_reward_adapter_keeps_its_trained_score_head(tmp_path: Path) -> None:
    game = _game(tmp_path)
    base, tokenizer = load_reward_model(ModelSpec(model="tiny-random:2"), tmp_path / "cache")
    save_checkpoint(base, tokenizer, tmp_path / "base-rm")
    _publish(game, 0, PREPARE_PHASE, "base-rm", tmp_path / "base-rm")

    trained = add_lora(base, LORA, "reward")
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable), "the score head must train with the adapter"
    _perturb_adapter(trained, seed=2)
    save_checkpoint(trained, tokenizer, tmp_path / "rm", base=(0, PREPARE_PHASE, "base-rm"))
    _publish(game, 1, "update-adversary", "rm", tmp_path / "rm")

    reader = make_context(game, 1, "score", tmp_path / "scratch")
    merged, _ = load_checkpoint(reader.fetch_dir(1, "update-adversary", "rm"), "reward")
    ids = _ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**ids).logits, trained.eval()(**ids).logits, atol=1e-5, rtol=1e-5
        )


def test_a_full_checkpoint_cannot_be_saved_as_an_adapter_without_its_base(tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(ModelSpec(model="tiny-random:1"), tmp_path / "cache")
    with pytest.raises(ValueError, match="reference to its base"):
        save_checkpoint(add_lora(model, LORA, "causal"), tokenizer, tmp_path / "out")


def test_a_target_module_the_model_lacks_names_the_field(tmp_path: Path) -> None:
    model, _ = load_causal_lm(ModelSpec(model="tiny-random:1"), tmp_path / "cache")
    with pytest.raises(ValueError, match=r"lora\.targetModules"):
        add_lora(model, LoraSpec(target_modules=("no_such_proj",)), "causal")
