"""Orchestration overhead: wall time of a game vs the compute its phases report.

Two parts:

1. Local (`sparring run`): plays `examples/apo-tiny.yaml` (and `examples/apo-smollm2.yaml`
   with `--full`) into a fresh store and compares each phase's wall time (the child process,
   as `sparring run` reports it) with the `compute_seconds` the phase itself wrote into its
   metrics.json (the phase function only: model loading is inside, interpreter start, imports,
   the commit and interpreter exit are outside). The fixed cost of a phase process is measured
   beside it: `python -c pass` and `python -c "import sparring_trainer.apo"`.
2. Operator on the test harness (tests/harness: the kmock-based API server in this process,
   the LocalKubelet running each Job's command as a local process, moto_server for S3, and
   `sparring operator` as a child process with SPARRING_RESYNC_SECONDS=1, as in the e2e
   tests): the time from a Job's completion (the status write that makes it Complete,
   timestamped inside the API server) to the creation of the game's next Job (median, p95),
   and the operator's API requests (its request log: every client that is not the harness).

Commands:

    python benchmarks/overhead.py                 # apo-tiny locally and on the harness, ~5 min
    python benchmarks/overhead.py --full          # + apo-smollm2 locally (~10 min more)
    python benchmarks/overhead.py --quick         # 1-round apo-tiny, both parts (the test)
    python benchmarks/overhead.py --skip-harness  # the local part only
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from _common import (
    ROOT,
    base_parser,
    log,
    median,
    model_cache,
    percentile,
    report,
    start_moto,
    stop_process,
    table,
)

DONE_LINE = re.compile(r"✓ round (\d+) ([\w-]+)\s+([\d.]+) s")


def parse_args() -> Any:
    p = base_parser(__doc__)
    p.add_argument("--full", action="store_true", help="also play apo-smollm2 locally")
    p.add_argument("--rounds", type=int, default=None, help="override the examples' rounds")
    p.add_argument("--skip-harness", action="store_true")
    p.add_argument("--skip-local", action="store_true")
    p.add_argument("--resync", type=float, default=1.0, help="operator SPARRING_RESYNC_SECONDS")
    args = p.parse_args()
    if args.quick and args.rounds is None:
        args.rounds = 1
    return args


def game_doc(example: str, rounds: int | None) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    if rounds is not None:
        doc["spec"]["rounds"] = rounds
    return dict(doc)


def child_env() -> dict[str, str]:
    model_cache()  # sets SPARRING_CACHE to the checkout's model cache when there is one
    paths = [str(ROOT / "trainer"), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def startup_costs(repeats: int = 3) -> dict[str, float]:
    """Median seconds of a bare interpreter and of one importing what a phase imports."""
    out = {}
    for label, code in (
        ("python -c pass", "pass"),
        ("import sparring_trainer.apo", "import sparring_trainer.apo"),
    ):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=child_env(), check=True)
            times.append(time.perf_counter() - t0)
        out[label] = median(times)
    return out


def metrics_by_phase(store_root: Path) -> dict[tuple[int, str], dict[str, float]]:
    found = {}
    for path in store_root.rglob("metrics.json"):
        phase, rnd = path.parent.name, path.parent.parent.name
        if rnd.startswith("round-"):
            found[(int(rnd[len("round-") :]), phase)] = json.loads(path.read_text())
    return found


# ---- part 1: sparring run ---------------------------------------------------------------------
def local_part(example: str, rounds: int | None, workdir: Path) -> tuple[list[list[str]], str]:
    doc = game_doc(example, rounds)
    game_file = workdir / f"{example}"
    game_file.write_text(yaml.safe_dump(doc))
    store = workdir / f"store-{Path(example).stem}"
    cmd = [sys.executable, "-m", "sparring_operator", "run", str(game_file)]
    cmd += ["--store", f"file://{store}"]
    log(f"sparring run {example} ({doc['spec']['rounds']} rounds)")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"sparring run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    phase_wall = {(int(m[1]), m[2]): float(m[3]) for m in DONE_LINE.finditer(done.stderr)}
    metrics = metrics_by_phase(store)
    rows = []
    total_wall = total_compute = 0.0
    for (rnd, phase), seconds in sorted(phase_wall.items()):
        compute = float(metrics[(rnd, phase)]["compute_seconds"])
        total_wall += seconds
        total_compute += compute
        rows.append(
            [
                example,
                str(rnd),
                phase,
                f"{seconds:.1f}",
                f"{compute:.1f}",
                f"{seconds - compute:.1f}",
                f"{100 * (seconds - compute) / seconds:.0f}%",
            ]
        )
    overhead = wall - total_compute
    rows.append(
        [
            f"**{example} total**",
            "",
            f"{len(phase_wall)} phases",
            f"{wall:.1f} (phases {total_wall:.1f})",
            f"{total_compute:.1f}",
            f"{overhead:.1f}",
            f"{100 * overhead / wall:.0f}%",
        ]
    )
    summary = (
        f"{example}: `sparring run` took {wall:.1f} s for {len(phase_wall)} phases whose own "
        f"compute_seconds sum to {total_compute:.1f} s: {100 * overhead / wall:.0f}% overhead, "
        f"{overhead / max(1, len(phase_wall)):.1f} s per phase."
    )
    return rows, summary


# ---- part 2: the operator on the harness ------------------------------------------------------
def harness_part(args: Any, workdir: Path) -> tuple[list[list[str]], str]:
    import boto3
    import psutil
    from _harness import JobClock, OperatorProcess, operator_requests, request_mix, start_api
    from harness import LocalKubelet
    from kubernetes import client as k8s
    from sparring_operator.jobs import LABEL_PHASE, LABEL_ROUND
    from sparring_trainer.config import StorageSpec
    from sparring_trainer.store import open_store, phase_prefix

    moto, endpoint = start_moto(workdir)
    api = start_api(workdir / "kube-api")
    clock = JobClock(api)
    kubelet = LocalKubelet(api.kubeconfig, workdir / "kubelet", extra_env=None).start()
    operator = OperatorProcess(api.kubeconfig, workdir / "operator.log", args.resync)
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="bench"
        )
        core = k8s.CoreV1Api(api.client)
        core.create_namespaced_secret(
            "default",
            {
                "metadata": {"name": "s3-credentials"},
                "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
            },
        )
        doc = game_doc("apo-tiny.yaml", args.rounds)
        storage = {
            "uri": "s3://bench/games",
            "endpoint": endpoint,
            "pathStyle": True,
            "secretRef": {"name": "s3-credentials"},
        }
        doc["spec"]["storage"] = storage
        operator.start()
        proc = psutil.Process(operator.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        log(f"operator pid {operator.pid}; creating game apo-tiny on the harness")
        t0 = time.time()
        k8s.CustomObjectsApi(api.client).create_namespaced_custom_object(
            "sparring.dev", "v1alpha1", "default", "adversarialgames", doc
        )
        deadline = time.monotonic() + 900
        while True:
            obj = api.get("adversarialgames", "apo-tiny") or {}
            phase = (obj.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"game did not finish:\n{operator.tail()}")
            time.sleep(0.1)
        t1 = time.time()
        if phase != "Succeeded":
            raise RuntimeError(f"game failed: {obj['status'].get('message')}\n{operator.tail()}")
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        rss = proc.memory_info().rss / 2**20
        store = open_store(StorageSpec.model_validate(storage | {"secretRef": None}))
        compute = 0.0
        for key in store.list("default/apo-tiny/"):
            if key.endswith("/metrics.json"):
                compute += float(json.loads(store.get_bytes(key))["compute_seconds"])
        jobs = sorted(clock.created.items(), key=lambda kv: kv[1])
        job_walls = [clock.finished[k] - c for k, c in jobs if k in clock.finished]
        requests = operator_requests(api, t0, t1)
        from_commit, from_complete, windows = [], [], []
        for key, labels, next_created in clock.successions():
            prefix = phase_prefix(
                "default", "apo-tiny", int(labels[LABEL_ROUND]), labels[LABEL_PHASE]
            )
            manifest = json.loads(store.get_bytes(prefix + "_SUCCESS"))
            committed = datetime.fromisoformat(manifest["committed_at"]).timestamp()
            from_commit.append(next_created - committed)
            from_complete.append(next_created - clock.finished[key])
            windows.append(len(operator_requests(api, committed, next_created + 0.05)))
        gaps = from_commit
        wall = t1 - t0
        rows = [
            ["phase Jobs", f"{len(jobs)}"],
            ["game wall time (create -> Succeeded)", f"{wall:.1f} s"],
            ["sum of Job wall times (created -> Complete)", f"{sum(job_walls):.1f} s"],
            ["sum of phases' compute_seconds", f"{compute:.1f} s"],
            ["overhead vs compute", f"{100 * (wall - compute) / wall:.0f}%"],
            [
                "_SUCCESS committed -> next Job created: median / p95 / max",
                f"{median(gaps):.2f} / {percentile(gaps, 95):.2f} / {max(gaps):.2f} s",
            ],
            [
                "Job Complete -> next Job created: median / p95 (negative: before)",
                f"{median(from_complete):.2f} / {percentile(from_complete, 95):.2f} s",
            ],
            [
                "operator API requests per phase (whole game / Jobs)",
                f"{len(requests) / len(jobs):.1f} ({len(requests)} in all)",
            ],
            [
                "operator API requests, _SUCCESS -> next Job created (median / max)",
                f"{median(windows):.0f} / {max(windows)}",
            ],
            ["operator request mix (whole game)", request_mix(requests)],
            [
                "operator CPU during the game / RSS at the end",
                f"{cpu:.1f} s ({100 * cpu / wall:.1f}% of one core) / {rss:.0f} MiB",
            ],
        ]
        summary = (
            f"Harness (operator, resync {args.resync:g} s): a phase's _SUCCESS commit is "
            f"followed by the next Job after {median(gaps):.2f} s (median; p95 "
            f"{percentile(gaps, 95):.2f} s), {-median(from_complete):.2f} s (median) *before* "
            "the kubelet reports the finished Job Complete: the operator moves on from the "
            f"store marker, not the Job status. The game took {wall:.1f} s for {compute:.1f} s "
            "of phase compute."
        )
        return rows, summary
    finally:
        operator.stop()
        kubelet.stop()
        api.stop()
        stop_process(moto)


def main() -> int:
    started = time.time()
    args = parse_args()
    sections: list[str] = []
    summaries: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_local:
            costs = startup_costs(1 if args.quick else 3)
            rows: list[list[str]] = []
            examples = ["apo-tiny.yaml"] + (["apo-smollm2.yaml"] if args.full else [])
            for example in examples:
                example_rows, summary = local_part(example, args.rounds, tmp)
                rows += example_rows
                summaries.append(summary)
            headers = [
                "game",
                "round",
                "phase",
                "wall s",
                "compute_seconds",
                "overhead s",
                "overhead %",
            ]
            sections += [
                "### Local: `sparring run`",
                "",
                table(headers, rows),
                "",
                "Fixed cost of a phase process on this machine (median): "
                + ", ".join(f"`{k}` {v:.1f} s" for k, v in costs.items())
                + ". For tiny models this start-up (interpreter, torch/transformers imports), "
                "not the orchestration logic, is nearly all of the overhead; model loading "
                "counts as compute (it happens inside the phase function).",
                "",
            ]
        if not args.skip_harness:
            rows, summary = harness_part(args, tmp)
            summaries.append(summary)
            sections += [
                "### Operator on the test harness (kmock API + LocalKubelet + moto S3)",
                "",
                table(["measure", "value"], rows),
                "",
                "Transition latency runs from the phase's own `committed_at` in its `_SUCCESS` "
                "manifest to the API server's timestamp of the next Job's creation (one clock: "
                "all on this machine). The operator decides from store markers, so it usually "
                "creates the next Job while the finished pod is still exiting, before the Job "
                "is Complete (second row; the kubelet reaps processes every 0.1 s). Requests "
                "per phase include the 1 s resync timer's "
                "reconciles while a phase runs, so they grow with phase duration. The API "
                "server runs inside this benchmark process and shares the 2 cores with the "
                "operator, the kubelet's phase processes and moto.",
                "",
            ]
    body = "\n".join(sections + summaries)
    report(args, "Orchestration overhead (benchmarks/overhead.py)", body, "-", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
