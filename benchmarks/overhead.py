"""Orchestration overhead: wall time of a game vs the compute its phases report.

Two parts:

1. Local (`sparring run`): plays `examples/apo-tiny.yaml` (and `examples/apo-smollm2.yaml`
   with `--full`) into a fresh store and compares each phase's wall time (the child process,
   as `sparring run` reports it) with the `compute_seconds` the phase itself wrote into its
   metrics.json (the phase function only: model loading is inside, interpreter start, imports,
   the commit and interpreter exit are outside). The fixed cost of a phase process is measured
   beside it: `python -c pass` and `python -c "import sparring_trainer.apo"`.
2. Operator on the real control plane (tests/harness/controlplane.py: etcd, kube-apiserver,
   kube-controller-manager and the process kubelet, which runs each pod's command as a local
   process; moto_server for S3; `sparring operator` as a child process under the chart's
   ServiceAccount and RBAC, with SPARRING_RESYNC_SECONDS=1 as in the e2e tests): the time from
   a phase's commit, and from its Job's completion (the Job controller's status write, as a
   watch in this process sees it), to the creation of the game's next Job (the API server's
   audit-log timestamp), and the operator's API requests (the audit log, filtered by the
   operator's ServiceAccount).

Commands:

    python benchmarks/overhead.py                 # apo-tiny locally and on the cluster, ~5 min
    python benchmarks/overhead.py --full          # + apo-smollm2 locally (~10 min more)
    python benchmarks/overhead.py --quick         # 1-round apo-tiny, both parts (the test)
    python benchmarks/overhead.py --skip-cluster  # the local part only
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
    # --skip-harness: the name RESULTS.md's older runs were recorded with.
    p.add_argument("--skip-cluster", "--skip-harness", action="store_true", help="local part only")
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


# ---- part 2: the operator on the real control plane -------------------------------------------
def cluster_part(args: Any, workdir: Path) -> tuple[list[list[str]], str]:
    import boto3
    import psutil
    from _harness import (
        JobWatch,
        OperatorProcess,
        audit,
        bed,
        between,
        game_phases,
        job_creations,
        request_mix,
        successions,
    )
    from harness.gameops import create_secret
    from kubernetes import client as k8s
    from sparring_operator.jobs import LABEL_PHASE, LABEL_ROUND
    from sparring_trainer.document import StorageSpec
    from sparring_trainer.store import open_store, phase_prefix

    moto, endpoint = start_moto(workdir)
    # The kubelet's phase processes inherit this process's environment (PYTHONPATH, the model
    # cache), as `sparring run`'s children do in part 1.
    os.environ.update(child_env())
    try:
        with bed(workdir / "cluster", with_kubelet=True) as kube_bed:
            kube, ns = kube_bed.kube, kube_bed.namespace
            jobs = JobWatch(kube.new_client("bench-job-watch"), ns).start()
            operator = OperatorProcess(
                kube_bed.operator_kubeconfig, workdir / "operator.log", args.resync, ns
            )
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
                    Bucket="bench"
                )
                create_secret(kube, "s3-credentials", "testing", "testing")
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
                log(f"operator pid {operator.pid}; creating game apo-tiny in namespace {ns}")
                t0 = time.time()
                k8s.CustomObjectsApi(kube.client).create_namespaced_custom_object(
                    "sparring.dev", "v1alpha1", ns, "adversarialgames", doc
                )
                deadline = time.monotonic() + 900
                while (phase := game_phases(kube).get("apo-tiny")) not in ("Succeeded", "Failed"):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"game did not finish:\n{operator.tail()}")
                    time.sleep(0.1)
                t1 = time.time()
                if phase != "Succeeded":
                    raise RuntimeError(f"game failed:\n{operator.tail()}")
                cpu = sum(proc.cpu_times()[:2]) - cpu0
                rss = proc.memory_info().rss / 2**20
            finally:
                operator.stop()
                jobs.stop()
            requests = audit(kube_bed.plane.audit_log)
        # The store lives in moto: read what the phases wrote before it stops.
        store = open_store(StorageSpec.model_validate(storage | {"secretRef": None}))
        compute, committed_at = 0.0, {}
        for key in store.list(f"{ns}/apo-tiny/"):
            if key.endswith("/metrics.json"):
                compute += float(json.loads(store.get_bytes(key))["compute_seconds"])
            elif key.endswith("/_SUCCESS"):
                manifest = json.loads(store.get_bytes(key))
                committed_at[key] = datetime.fromisoformat(manifest["committed_at"]).timestamp()
    finally:
        stop_process(moto)
    created = job_creations(between(requests, t0))
    ours = [r for r in requests if r.user == kube_bed.operator_user]
    game_requests = between(ours, t0, t1)
    job_walls = [jobs.finished[k] - c for k, c in created.items() if k in jobs.finished]
    from_commit, from_complete, windows = [], [], []
    for key, labels, next_created in successions(created, jobs.labels):
        prefix = phase_prefix(ns, "apo-tiny", int(labels[LABEL_ROUND]), labels[LABEL_PHASE])
        committed = committed_at[prefix + "_SUCCESS"]
        from_commit.append(next_created - committed)
        if key in jobs.finished:
            from_complete.append(next_created - jobs.finished[key])
        windows.append(len(between(ours, committed, next_created)))
    gaps = from_commit
    wall = t1 - t0
    rows = [
        ["phase Jobs", f"{len(created)}"],
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
            f"{len(game_requests) / len(created):.1f} ({len(game_requests)} in all)",
        ],
        [
            "operator API requests, _SUCCESS -> next Job created (median / max)",
            f"{median(windows):.0f} / {max(windows)}",
        ],
        ["operator request mix (whole game)", request_mix(game_requests)],
        [
            "operator CPU during the game / RSS at the end",
            f"{cpu:.1f} s ({100 * cpu / wall:.1f}% of one core) / {rss:.0f} MiB",
        ],
    ]
    before = "*before*" if median(from_complete) < 0 else "after"
    summary = (
        f"Control plane (operator, resync {args.resync:g} s): a phase's _SUCCESS commit is "
        f"followed by the next Job after {median(gaps):.2f} s (median; p95 "
        f"{percentile(gaps, 95):.2f} s), {abs(median(from_complete)):.2f} s (median) {before} "
        "the Job controller marks the finished Job Complete. The game took "
        f"{wall:.1f} s for {compute:.1f} s of phase compute."
    )
    return rows, summary


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
        if not args.skip_cluster:
            rows, summary = cluster_part(args, tmp)
            summaries.append(summary)
            sections += [
                "### Operator on the real control plane (kube-apiserver + Job controller + "
                "process kubelet + moto S3)",
                "",
                table(["measure", "value"], rows),
                "",
                "Transition latency runs from the phase's own `committed_at` in its `_SUCCESS` "
                "manifest to the API server's audit-log timestamp of the next Job's creation "
                "(one clock: all on this machine). The operator decides from store markers, so "
                "it can create the next Job while the finished pod is still exiting, before the "
                "Job controller marks the Job Complete (second row: that status write as the "
                "benchmark's Job watch received it, a few ms late). Requests per phase include "
                "the 1 s resync timer's reconciles while a phase runs, so they grow with phase "
                "duration. The control plane, the kubelet's phase processes, moto and the "
                "operator all share this machine's cores.",
                "",
            ]
    body = "\n".join(sections + summaries)
    report(args, "Orchestration overhead (benchmarks/overhead.py)", body, "-", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
