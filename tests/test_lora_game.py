"""The tiny games with LoRA on every trainable role (issue "Train what users train", 1 and 5):
they play to the end, every round's trained checkpoint in the store is an adapter naming its
base, the adapters change from round to round, and a round's model exports as one folder that
`AutoModelForCausalLM` loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("sample", "update-adversary", "score", "update-policy", "evaluate")


def sparring(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparring_operator", *args],
        cwd=cwd, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def play(example: str, work: Path) -> tuple[Path, dict[str, Any]]:
    result = sparring(
        "run", str(ROOT / "examples" / example), "--store", f"file://{work}/store", "-o", "json",
        cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "store", json.loads(result.stdout)


@pytest.fixture(scope="module")
def apo_lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return play("apo-tiny-lora.yaml", tmp_path_factory.mktemp("apo-lora"))


def _adapter(folder: Path, base: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    names = {p.name for p in folder.iterdir()}
    assert "adapter_config.json" in names and "model.safetensors" not in names, names
    ref = json.loads((folder / "sparring-base.json").read_text())
    assert ref == {"round": 0, "phase": "prepare", "name": base}
    return load_file(str(folder / "adapter_model.safetensors"))


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k in b)


def test_apo_with_lora_stores_adapters_that_keep_training(
    apo_lora: tuple[Path, dict[str, Any]],
) -> None:
    store, status = apo_lora
    assert status["phase"] == "Succeeded" and status["completedRounds"] == 2
    game = store / "default" / "apo-tiny-lora"
    policy = [_adapter(game / f"round-000{r}/update-policy/policy", "base-policy") for r in (1, 2)]
    rm = [_adapter(game / f"round-000{r}/update-adversary/rm", "base-rm") for r in (1, 2)]
    assert any("lora_B" in k for k in policy[0]) and _differ(*policy)
    assert any("score" in k for k in rm[0]), "the RM adapter must carry its score head"
    assert _differ(*rm)
    eval_rm = {p.name for p in (game / "round-0000/prepare/eval-rm").iterdir()}
    assert "model.safetensors" in eval_rm and "adapter_config.json" not in eval_rm  # merged
    full = (game / "round-0000/prepare/base-policy/model.safetensors").stat().st_size
    size = (game / "round-0001/update-policy/policy/adapter_model.safetensors").stat().st_size
    assert size < full / 5


def test_a_lora_round_exports_as_one_transformers_folder(
    apo_lora: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from sparring_trainer.contract import make_context
    from sparring_trainer.document import GameDocument
    from sparring_trainer.models import load_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store, _ = apo_lora
    game_file = ROOT / "examples" / "apo-tiny-lora.yaml"
    result = sparring(
        "export", str(game_file), "--round", "2", "--out", str(tmp_path / "out"),
        "--store", f"file://{store}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    doc = yaml.safe_load(game_file.read_text())
    doc["spec"]["storage"] = {"uri": f"file://{store}"}
    ctx = make_context(GameDocument.model_validate(doc), 2, "check", tmp_path / "scratch")
    played, _ = load_checkpoint(ctx.fetch_dir(2, "update-policy", "policy"), "causal")
    ids = dict(tokenizer(["Human: hello\n\nAssistant:"], return_tensors="pt"))
    with torch.no_grad():
        torch.testing.assert_close(exported(**ids).logits, played(**ids).logits)
    again = sparring("export", str(game_file), "--round", "2", "--out", str(tmp_path / "out"),
                     "--store", f"file://{store}", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 3 and "already exists" in again.stderr


@pytest.mark.parametrize("method", ["rjs", "rrhf"])
def test_rjs_and_rrhf_train_the_adapter(
    apo_lora: tuple[Path, dict[str, Any]], tmp_path: Path, method: str
) -> None:
    """Round 1's update-policy replayed with another method on a copy of the store."""
    store, _ = apo_lora
    src, copy = store / "default/apo-tiny-lora", tmp_path / "store/default/apo-tiny-lora"
    shutil.copytree(src / "round-0000", copy / "round-0000")
    for phase in ("sample", "update-adversary", "score"):
        shutil.copytree(src / "round-0001" / phase, copy / "round-0001" / phase)
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny-lora.yaml").read_text())
    doc["spec"]["storage"]["uri"] = f"file://{tmp_path / 'store'}"
    doc["spec"]["game"]["policy"]["update"]["method"] = method
    (tmp_path / "game.yaml").write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "sparring_trainer", "update-policy",
         "--game", str(tmp_path / "game.yaml"), "--round", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    adapter = _adapter(copy / "round-0001/update-policy/policy", "base-policy")
    assert any(float(t.abs().max()) > 0 for k, t in adapter.items() if "lora_B" in k)


def test_apl_with_lora_stores_adapters(tmp_path: Path) -> None:
    store, status = play("apl-tiny-lora.yaml", tmp_path)
    assert status["phase"] == "Succeeded" and status["completedRounds"] == 2
    game = store / "default" / "apl-tiny-lora"
    for r in (1, 2):
        _adapter(game / f"round-000{r}/update-policy/policy", "base-policy")
        _adapter(game / f"round-000{r}/update-adversary/attacker", "base-attacker")


@pytest.mark.parametrize("example", ["apo-llama-8b-lora.yaml", "apl-mistral-7b-lora.yaml"])
def test_the_paper_scale_examples_can_split_their_data(example: str, tmp_path: Path) -> None:
    """Not played here (8B models, GPUs), but everything before the models is checked: the
    file is valid (test_validate) and its counts fit the data it names."""
    from sparring_trainer import apl, apo
    from sparring_trainer.contract import make_context
    from sparring_trainer.document import GameDocument

    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path / 'store'}"}
    game = GameDocument.model_validate(doc)
    assert game.spec.game.policy.update.lora is not None
    assert game.spec.game.adversary.update.lora is not None
    ctx = make_context(game, 0, "prepare", tmp_path / "scratch")
    split = (apo if game.spec.game.kind == "apo" else apl).splits(ctx)
    assert all(len(part) > 0 for part in vars(split).values())
