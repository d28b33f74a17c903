"""Smoke tests of benchmarks/: each script runs in its --quick mode (tiny-random models where it
has a choice) and prints its markdown table; --no-record keeps benchmarks/RESULTS.md untouched
and --cache-dir sends caches to a temporary directory.

On a 2-core machine operator_scale takes ~25-40 s (a control plane of its own for each of its
two arms, without and with a runtime),
apo_policy, apo_rm_repro and trainer_efficiency 7-11 s each (two to five times that under
load); overhead plays a game locally and on a control plane with the process kubelet (~90-110 s)
and is marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_benchmark(script: str, *args: str, tmp_path: Path, timeout: float = 600) -> str:
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(BENCH / script), "--quick", "--no-record"]
    cmd += ["--results", str(results), "--cache-dir", str(tmp_path / "cache"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert not results.exists(), "--no-record must not write a results file"
    out = done.stdout
    assert "- command: `python benchmarks/" in out and "- machine: " in out, out[-2000:]
    return out


def table_rows(out: str, first_header: str) -> list[list[str]]:
    """Cells of the markdown table whose header row starts with `first_header`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_operator_scale_quick(tmp_path: Path) -> None:
    out = run_benchmark("operator_scale.py", "--runtimes", "builtin", "cluster", tmp_path=tmp_path)
    rows = table_rows(out, "games")
    assert [(r[1], r[2]) for r in rows] == [("builtin", "2/2"), ("cluster", "2/2")], rows
    assert [int(r[3]) for r in rows] == [12, 12]  # 2 games x (prepare + 5 phases)
    # The cluster arm read the chart's default runtime, and no game was refused by it.
    assert "- 2 games, builtin: none; no game was ever Stalled" in out, out[-3000:]
    reads = [line for line in out.splitlines() if line.startswith("- 2 games, cluster: ")]
    assert any("answered 200" in r and "no game was ever Stalled" in r for r in reads), reads


def test_apo_rm_repro_quick_tiny(tmp_path: Path) -> None:
    out = run_benchmark("apo_rm_repro.py", "--tiny", tmp_path=tmp_path)
    rows = table_rows(out, "RM")
    names = [r[0] for r in rows]
    assert names == ["RM_init", "RM_base", "RM_APO r1", "RM_GAIL", "RM_base r2", "RM_APO r2"]
    assert "Direction vs the paper" in out
    assert list((tmp_path / "cache").glob("apo-samples-*.json")), "samples are cached"


def test_apo_policy_quick_tiny(tmp_path: Path) -> None:
    out = run_benchmark("apo_policy.py", "--tiny", tmp_path=tmp_path)
    rows = table_rows(out, "policy")
    assert [r[0] for r in rows] == ["SFT (initial policy)", "DPO vs RM_base", "DPO vs RM_APO"]


def test_trainer_efficiency_quick(tmp_path: Path) -> None:
    out = run_benchmark("trainer_efficiency.py", tmp_path=tmp_path)
    contenders = {r[1] for r in table_rows(out, "what")}
    assert {
        "train_reward_model",
        "plain torch BT loop",
        "train_dpo",
        "TRL DPOTrainer defaults",
        "generate_transformers (batch 8)",
        "boto3 upload_file",
    } <= contenders


@pytest.mark.slow
def test_overhead_quick(tmp_path: Path) -> None:
    out = run_benchmark("overhead.py", tmp_path=tmp_path)
    local = table_rows(out, "game")
    assert local[-1][0] == "**apo-tiny.yaml total**" and local[-1][2] == "6 phases", local
    harness = dict(table_rows(out, "measure"))
    assert harness["phase Jobs"] == "6"


def test_gpu_check_smoke_on_the_cpu(tmp_path: Path) -> None:
    """The GPU check's code paths (full and LoRA DPO, the RM update, sampling) on a tiny model
    in fp32, so the script a GPU session runs has not rotted; its bf16/CUDA part runs there."""
    out = run_benchmark("gpu_check.py", "--cpu", tmp_path=tmp_path)
    steps = [row[1] for row in table_rows(out, "model")]
    assert steps == ["DPO, full", "DPO, LoRA r=16", "RM update", "sampling"], steps


@pytest.mark.slow
def test_lora_footprint_quick_tiny(tmp_path: Path) -> None:
    """The adapters that LoRA writes are smaller than the full checkpoints (the tiny models'
    LoRA rank 16 adapter is about a quarter of the policy), and every phase reports its
    store bytes."""
    out = run_benchmark("lora_footprint.py", "--tiny", tmp_path=tmp_path)
    rows = {r[0]: r for r in table_rows(out, "phase")}
    assert list(rows)[:5] == ["sample", "update-adversary", "score", "update-policy", "evaluate"]
    for phase in ("update-adversary", "update-policy"):
        full_written, lora_written = float(rows[phase][3]), float(rows[phase][4])
        assert 0 < lora_written < full_written / 2, rows[phase]
    assert float(rows["sample"][1]) > 0  # it read the policy it sampled from


@pytest.mark.slow
def test_game_arms_quick_apo(tmp_path: Path) -> None:
    """Three real games of one seed (apo, then baseline and gail from its shared phases) and
    their paired comparison: every arm against APO on the same held-out items."""
    out = run_benchmark("game_arms.py", tmp_path=tmp_path)
    rows = table_rows(out, "seed")
    assert [(r[0], r[1]) for r in rows] == [("0", "apo"), ("0", "baseline"), ("0", "gail")]
    header = next(line for line in out.splitlines() if line.startswith("| seed |"))
    assert "| rm_accuracy | judge reward_mean |" in header, header
    assert "apo - this" not in rows[0][2] and "; apo - this " in rows[1][2], rows
    pooled = {r[0]: r for r in table_rows(out, "pooled over seeds")}
    assert list(pooled) == ["apo - baseline", "apo - gail"]
    assert pooled["apo - baseline"][1].endswith("(n=32)")  # the tiny game's held-out pairs


@pytest.mark.slow
def test_game_arms_quick_apl(tmp_path: Path) -> None:
    """The APL game with its attacker trained, and frozen from the same start."""
    out = run_benchmark("game_arms.py", "--kind", "apl", tmp_path=tmp_path)
    rows = table_rows(out, "seed")
    assert [(r[0], r[1]) for r in rows] == [("0", "apo"), ("0", "baseline")]
    pooled = {r[0]: r for r in table_rows(out, "pooled over seeds")}
    assert list(pooled) == ["apo - baseline"]
    assert pooled["apo - baseline"][1].endswith("(n=4)")  # apl-tiny's held-out seeds


@pytest.mark.slow
def test_model_cache_quick(tmp_path: Path) -> None:
    """With a shared cache no later phase reads a base checkpoint from the store again; from
    the models' own sources only prepare fetches, with or without one."""
    out = run_benchmark("model_cache.py", tmp_path=tmp_path)
    rows = {r[0]: [float(c.strip("*")) for c in r[1:]] for r in table_rows(out, "phase")}
    assert rows["prepare"][0] > 0 and rows["prepare"][0] == rows["prepare"][2]
    assert all(rows[p][0] == rows[p][2] == 0 for p in ("sample", "score", "evaluate"))
    # Its base comes from the cache: from the store it reads only its inputs (the scores,
    # a few KiB with their prompts), where without a cache it reads the base policy too.
    assert rows["update-policy"][3] < 0.05 < rows["update-policy"][1]
    assert rows["**total**"][3] < rows["**total**"][1]
