"""The same game and seed give the same results, whatever state the model cache is in.

The reward model here is a pretrained encoder without a score head, fetched from S3 (moto) into
the model cache: its scalar head is new in `prepare`. Before heads were drawn from the game's
seed alone, they depended on what had drawn random numbers before them, and a game played
with a cold cache and again with the warm cache it left gave different metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sparring_trainer.document import StorageSpec

ROOT = Path(__file__).resolve().parents[1]
# Wall-clock and traffic figures differ between any two runs; everything else must not.
UNREPEATABLE = ("seconds", "_bytes")


def upload_encoder(storage: StorageSpec, tmp_path: Path) -> str:
    """A small BERT encoder (no classification head) with the tiny-random tokenizer, as a
    model folder under s3://BUCKET/models/encoder/."""
    import boto3
    import torch
    from sparring_trainer.models import tiny_tokenizer
    from transformers import BertConfig, BertModel

    folder = tmp_path / "encoder"
    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    bucket = storage.uri.removeprefix("s3://").split("/")[0]
    client = boto3.client("s3", endpoint_url=storage.endpoint, region_name="us-east-1")
    for path in folder.iterdir():
        client.upload_file(str(path), bucket, f"models/encoder/{path.name}")
    return f"s3://{bucket}/models/encoder"


def play(game: dict[str, Any], store: str, cache: Path, work: Path) -> dict[str, Any]:
    path = work / f"{store.rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(game))
    env = {**os.environ, "SPARRING_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sparring_operator", "run", str(path), "--store", store, "-o",
         "json"],
        cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def repeatable(status: dict[str, Any]) -> dict[int, dict[str, float]]:
    return {
        r["round"]: {k: v for k, v in r["metrics"].items() if not k.endswith(UNREPEATABLE)}
        for r in status["rounds"]
    }


@pytest.mark.slow
def test_same_seed_same_metrics_from_a_cold_and_a_warm_model_cache(
    s3_storage: StorageSpec, tmp_path: Path
) -> None:
    game = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    game["spec"]["rounds"] = 1
    game["spec"]["game"]["adversary"]["model"] = upload_encoder(s3_storage, tmp_path)
    game["spec"]["storage"] = {"uri": s3_storage.uri, "endpoint": s3_storage.endpoint,
                               "pathStyle": True}  # fmt: skip
    cache = tmp_path / "cache"
    first = play(game, f"{s3_storage.uri}/first", cache, tmp_path)
    # The first play filled the cache: the second reads the encoder from it, not from S3.
    fetched = [p for p in cache.rglob("config.json") if "encoder" in str(p)]
    assert fetched, f"the encoder was not cached under {cache}"
    second = play(game, f"{s3_storage.uri}/second", cache, tmp_path)

    once, again = repeatable(first), repeatable(second)
    assert sorted(once) == [0, 1]
    assert "rm_accuracy" in once[0] and "rm_accuracy_vs_base" in once[1]
    assert once == again
