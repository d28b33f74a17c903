"""Bytes each phase fetches with and without a model cache, measured side by side in one run.

A LoRA APO game whose base models are `s3://` references on a moto S3 server, its store on the
same server. Every phase runs as the command a phase Job runs (`python -m sparring_trainer
PHASE ...`), one process per phase, as one pod each:

- without a cache, each phase gets a fresh, empty `SPARRING_CACHE` (a pod's own scratch);
- with one, every phase shares one `SPARRING_CACHE` and `SPARRING_CHECKPOINT_CACHE` (what
  `spec.modelCache` mounts into every pod).

Per phase: `model_fetch_bytes` (fetched from the models' own sources) and `store_read_bytes`
(read from the store; a base checkpoint found in the cache is not read again), both the phase's
own metrics. That two pods starting at once fetch a model once is `tests/test_modelcache.py`.

Commands:

    python benchmarks/model_cache.py            # SmolLM2 + MiniLM as the base models
    python benchmarks/model_cache.py --quick    # tiny-random models (the test)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import MINILM, ROOT, SMOLLM2, base_parser, log, report, start_moto, stop_process
from _common import table as md_table

PHASES = ("sample", "update-adversary", "score", "update-policy", "evaluate")
LORA = {"rank": 8, "alpha": 16, "dropout": 0.0}


def _upload_base_models(endpoint: str, bucket: str, quick: bool, work: Path) -> dict[str, str]:
    """The two base models as s3:// folders, from tiny-random or the real pip:// models."""
    from sparring_trainer.config import ModelSpec
    from sparring_trainer.document import StorageSpec
    from sparring_trainer.models import load_causal_lm, load_reward_model, save_checkpoint
    from sparring_trainer.store import open_store

    storage = StorageSpec(uri=f"s3://{bucket}", endpoint=endpoint, path_style=True)
    store = open_store(storage)
    refs = {}
    sources = {"policy": "tiny-random:1" if quick else SMOLLM2,
               "rm": "tiny-random:2" if quick else MINILM}  # fmt: skip
    for role, source in sources.items():
        load = load_causal_lm if role == "policy" else load_reward_model
        model, tok = load(ModelSpec(model=source), work / "build")
        save_checkpoint(model, tok, work / role)
        store.upload_tree(work / role, f"models/{role}")
        refs[role] = f"s3://{bucket}/models/{role}"
    return refs


def _game(name: str, endpoint: str, bucket: str, refs: dict[str, str]) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny-lora.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["rounds"] = 1
    storage = {"uri": f"s3://{bucket}/games", "endpoint": endpoint, "pathStyle": True}
    doc["spec"]["storage"] = storage
    g = doc["spec"]["game"]
    g["policy"]["model"], g["adversary"]["model"] = refs["policy"], refs["rm"]
    g["policy"]["update"]["lora"] = dict(LORA)
    g["adversary"]["update"]["lora"] = dict(LORA)
    return dict(doc)


def _play(game_file: Path, env: dict[str, str]) -> None:
    for round, phase in [(0, "prepare"), *((1, p) for p in PHASES)]:
        cmd = [sys.executable, "-m", "sparring_trainer", phase, "--game", str(game_file),
               "--round", str(round)]  # fmt: skip
        done = subprocess.run(cmd, env=env() if callable(env) else env, capture_output=True,
                              text=True, check=False)  # fmt: skip
        if done.returncode:
            raise SystemExit(f"{phase} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def main() -> None:
    args = base_parser(__doc__).parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="model-cache-"))
    moto, endpoint = start_moto(work)
    try:
        import boto3

        bucket = "bench"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        log("uploading the base models")
        refs = _upload_base_models(endpoint, bucket, args.quick, work)
        base_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        base_env.setdefault("OMP_NUM_THREADS", "2")
        shared = work / "shared-cache"
        arms = {
            # A fresh cache per phase process: a pod's own scratch.
            "without": lambda: base_env | {"SPARRING_CACHE": tempfile.mkdtemp(dir=work)},
            "with": lambda: base_env | {"SPARRING_CACHE": str(shared),
                                        "SPARRING_CHECKPOINT_CACHE": str(shared / "ckpt")},
        }  # fmt: skip
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        from sparring_trainer.document import StorageSpec
        from sparring_trainer.store import open_store, phase_prefix

        store = open_store(StorageSpec(uri=f"s3://{bucket}/games", endpoint=endpoint,
                                       path_style=True))  # fmt: skip
        for arm, env in arms.items():
            log(f"playing the game {arm} a model cache")
            name = f"cache-{arm}"
            game_file = work / f"{name}.yaml"
            game_file.write_text(yaml.safe_dump(_game(name, endpoint, bucket, refs)))
            _play(game_file, env)  # type: ignore[arg-type]
            metrics[arm] = {
                phase: json.loads(store.get_bytes(
                    phase_prefix("default", name, round, phase) + "metrics.json"))
                for round, phase in [(0, "prepare"), *((1, p) for p in PHASES)]
            }  # fmt: skip
    finally:
        stop_process(moto)
    rows = []
    totals = {k: 0.0 for k in ("wm", "ws", "cm", "cs")}
    for phase in metrics["without"]:
        w, c = metrics["without"][phase], metrics["with"][phase]
        cells = (w["model_fetch_bytes"], w["store_read_bytes"], c["model_fetch_bytes"],
                 c["store_read_bytes"])  # fmt: skip
        for key, value in zip(totals, cells, strict=True):
            totals[key] += value
        rows.append([phase, *(f"{v / 2**20:.2f}" for v in cells)])
    rows.append(["**total**", *(f"**{v / 2**20:.2f}**" for v in totals.values())])
    body = "\n\n".join([
        md_table(["phase", "no cache: from model source, MiB", "no cache: from store, MiB",
                  "cache: from model source, MiB", "cache: from store, MiB"], rows),
        "Setup: `examples/apo-tiny-lora.yaml`, 1 round, LoRA rank 8 on both models, base models "
        f"{'tiny-random' if args.quick else 'SmolLM2-135M-Instruct and all-MiniLM-L6-v2'} as "
        "s3:// folders on moto; each phase one process, as one pod. With LoRA every phase reads "
        "the base checkpoints prepare committed; with a cache only the first phase to need "
        "each one reads it from the store.",
    ])  # fmt: skip
    report(args, "Model cache: bytes fetched per phase (benchmarks/model_cache.py)", body,
           "-", started)  # fmt: skip


if __name__ == "__main__":
    main()
