"""Full fine-tuning vs LoRA on the smollm2-sized APO game: bytes moved through the store per
round and the peak RSS of each phase, measured side by side in one run.

Both arms play the same game (SmolLM2-135M-Instruct policy, all-MiniLM-L6-v2 reward model, a
smaller data split than `examples/apo-smollm2.yaml` so that a round takes minutes): the only
difference is `update.lora` on the policy and the RM. Each phase of round 1 runs as the
command a phase Job runs (`python -m sparring_trainer PHASE ...`), one process per phase;
its peak RSS is the process's `ru_maxrss` (os.wait4), and the bytes it read from and wrote to
the store are its own metrics (`store_read_bytes`, `store_written_bytes`: every input file it
read, counted once, and every output it wrote).

Commands:

    python benchmarks/lora_footprint.py            # default: ~10 min on 2 cores
    python benchmarks/lora_footprint.py --quick    # smaller split
    python benchmarks/lora_footprint.py --quick --tiny --no-record   # tiny-random (the test)
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
from _common import MINILM, ROOT, SMOLLM2, base_parser, log, model_cache, report, table

PHASES = ("sample", "update-adversary", "score", "update-policy", "evaluate")
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05}


def parse_args() -> Any:
    p = base_parser(__doc__)
    p.add_argument("--tiny", action="store_true", help="tiny-random models (smoke test)")
    return p.parse_args()


def game(name: str, store: Path, tiny: bool, quick: bool, lora: bool) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "apo-smollm2.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["storage"] = {"uri": f"file://{store}"}
    g = doc["spec"]["game"]
    g["policy"]["model"] = "tiny-random:1" if tiny else SMOLLM2
    g["adversary"]["model"] = "tiny-random:2" if tiny else MINILM
    small = quick or tiny
    g["data"].update(
        humanPairs=16 if small else 48, goldQueries=4 if small else 8,
        trainQueries=4 if small else 8, testPairs=16 if small else 32,
        testQueries=4 if small else 8,
    )  # fmt: skip
    g["sampling"]["maxNewTokens"] = g["evaluation"]["maxNewTokens"] = 16 if small else 32
    g["adversary"]["update"]["epochs"] = 1
    g["evaluation"]["evalRmTrain"]["epochs"] = 1
    if lora:
        g["policy"]["update"]["lora"] = dict(LORA)
        g["adversary"]["update"]["lora"] = dict(LORA)
    return dict(doc)


def run_phase(game_file: Path, phase: str, round: int) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of one phase process."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparring_trainer", phase, "--game", str(game_file),
         "--round", str(round)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{phase} round {round} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.monotonic() - started, usage.ru_maxrss


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    started = time.time()
    args = parse_args()
    model_cache()  # $SPARRING_CACHE for the phase processes
    arms: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sparring-footprint-") as tmp:
        for arm in ("full", "lora"):
            store = Path(tmp) / "store"
            doc = game(f"footprint-{arm}", store, args.tiny, args.quick, arm == "lora")
            game_file = Path(tmp) / f"{arm}.yaml"
            game_file.write_text(yaml.safe_dump(doc))
            log(f"{arm}: prepare")
            run_phase(game_file, "prepare", 0)
            phases: dict[str, dict[str, float]] = {}
            for phase in PHASES:
                log(f"{arm}: round 1 {phase}")
                seconds, rss = run_phase(game_file, phase, 1)
                out = store / "default" / f"footprint-{arm}" / "round-0001" / phase
                metrics = json.loads((out / "metrics.json").read_text())
                phases[phase] = {
                    "seconds": seconds,
                    "rss_mib": rss / 1024,
                    "read": metrics["store_read_bytes"],
                    "written": metrics["store_written_bytes"],
                }
            round1 = store / "default" / f"footprint-{arm}" / "round-0001"
            arms[arm] = {
                "phases": phases,
                "policy": dir_bytes(round1 / "update-policy" / "policy"),
                "rm": dir_bytes(round1 / "update-adversary" / "rm"),
            }

    mib = 1024 * 1024
    full, lora = arms["full"], arms["lora"]
    rows = []
    for phase in PHASES:
        f, lo = full["phases"][phase], lora["phases"][phase]
        rows.append([
            phase,
            f"{f['read'] / mib:.1f}", f"{lo['read'] / mib:.1f}",
            f"{f['written'] / mib:.2f}", f"{lo['written'] / mib:.2f}",
            f"{f['rss_mib']:.0f}", f"{lo['rss_mib']:.0f}", f"{lo['rss_mib'] / f['rss_mib']:.2f}",
        ])  # fmt: skip
    total = {
        arm: sum(p["read"] + p["written"] for p in arms[arm]["phases"].values()) for arm in arms
    }
    rows.append([
        "**round 1, all phases**",
        f"{sum(p['read'] for p in full['phases'].values()) / mib:.1f}",
        f"{sum(p['read'] for p in lora['phases'].values()) / mib:.1f}",
        f"{sum(p['written'] for p in full['phases'].values()) / mib:.2f}",
        f"{sum(p['written'] for p in lora['phases'].values()) / mib:.2f}",
        "", "", "",
    ])  # fmt: skip
    body = table(
        ["phase", "read MiB full", "read MiB LoRA", "written MiB full", "written MiB LoRA",
         "peak RSS MiB full", "peak RSS MiB LoRA", "RSS LoRA/full"],
        rows,
    )  # fmt: skip
    models = "tiny-random" if args.tiny else "SmolLM2-135M-Instruct policy, all-MiniLM-L6-v2 RM"
    body += (
        f"\n\nModels: {models}; LoRA rank {LORA['rank']}, alpha {LORA['alpha']}, all-linear, "
        "on the policy and the RM (the RM's score head in full).\n"
        f"Round 1 checkpoints in the store: policy {full['policy'] / mib:.1f} MiB full vs "
        f"{lora['policy'] / mib:.2f} MiB LoRA; RM {full['rm'] / mib:.1f} MiB vs "
        f"{lora['rm'] / mib:.2f} MiB. Bytes through the store in round 1: "
        f"{total['full'] / mib:.1f} MiB full vs {total['lora'] / mib:.1f} MiB LoRA "
        f"(ratio {total['lora'] / total['full']:.3f}). Reads count every input a phase checks "
        "against its manifest: an adapter's base model is read too (a file:// store reads it in "
        "place, an s3:// store downloads it), so LoRA saves on what each round writes and on "
        "the next rounds' reads of it, not on the base.\n"
    )
    report(args, "Full fine-tuning vs LoRA: store bytes and peak RSS per phase "
           "(benchmarks/lora_footprint.py)", body, [0], started)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
