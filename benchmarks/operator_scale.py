"""Operator scale: many concurrent games whose phases finish instantly (or take a set time).

The operator (`sparring operator`, a child process with /metrics, authenticated as the chart's
ServiceAccount under the chart's RBAC) runs against a real control plane on 127.0.0.1 (etcd,
kube-apiserver, kube-controller-manager: tests/harness/controlplane.py) with no kubelet: the
Job controller creates each Job's pod, which stays Pending. An "instant executor" thread of
this process stands in for the phase pods instead, at the infrastructure level: for every Job
the operator creates (seen through a watch) it does what a successful phase leaves behind:

1. writes the phase's `metrics.json` ({"compute_seconds": 0}) and commits the prefix with the
   trainer's own `sparring_trainer.store.commit` (the `_SUCCESS` manifest) in a file:// store;
2. reports the Job's pod as exited 0 (`pods/status`: phase Succeeded, container terminated),
   which is what the kubelet writes when a phase's process ends after its commit. The operator
   sees that pod event (it watches its phase pods) and the real Job controller marks the Job
   Complete from it (about a second later: it batches pod updates).

With `--phase-seconds S`, the executor first reports the pod running and ready (as the kubelet
does once the container started) and does the two steps above after a seeded uniform draw in
[S/2, 3S/2] seconds: the games then hand off at different times, as on a cluster whose phases
last minutes, instead of all at once.

The operator's code is not mocked: it sees markers appearing and Job events exactly as on a
cluster whose phases take no time, so what is measured is the operator (and the API server it
waits on), including the `list pods` it makes once per finished Job for the pod's termination
message. For N = 10, 50, 100 games (each
`examples/apo-tiny.yaml`: 2 rounds, 11 phase Jobs), all created at once in one namespace:

* wall time until every game is Succeeded, and transitions (phase Jobs) per second;
* latency from a phase's commit to the creation of its game's next Job (median, p95, max);
  creation is the API server's audit-log timestamp of the operator's `create jobs`;
* operator CPU seconds (psutil, user + system) and peak RSS (sampled every 0.5 s), and the
  kube-apiserver's CPU over the same wall time;
* reconcile duration from the operator's own histogram `sparring_reconcile_duration_seconds`
  (count, mean, bucket-interpolated p50/p95);
* operator API requests per transition (the API server's audit log, the operator's
  ServiceAccount only).

Runtimes (`--runtimes`, each arm on its own fresh control plane, one after the other for each
N): `builtin`, the operator started with no default runtime, as the tests run it: it plays
each game on its built-in runtime and asks the API server for none. `cluster`, the operator as
the chart deploys it: the runtime CRDs are installed, the ClusterSparringRuntime the chart
renders (templates/default-runtime.yaml: the chart's trainer image, its phase ServiceAccount,
no store of its own, so a game's file:// store stays its own) is created, and the operator runs
with SPARRING_DEFAULT_RUNTIME naming it, so it reads it as on a cluster (one GET per pass
before 22cba17; since, one per RUNTIME_TTL_SECONDS, shared by the games). The chart's RBAC, which
the bed applies in both arms, grants that `get` (ClusterRole `<release>-sparring-runtimes`).
The games are the same in both arms; a game the runtime refuses (Stalled, RuntimeRefused or
RuntimeUnavailable) ends that scale point at once and is reported, since nothing here would
unblock it.

Commands:

    python benchmarks/operator_scale.py                    # 10, 50, 100 games (~3 min)
    python benchmarks/operator_scale.py --games 10 50      # a subset
    python benchmarks/operator_scale.py --quick            # 2 games, 1 round (the test)
    python benchmarks/operator_scale.py --resync 1         # the e2e tests' 1 s timer
    python benchmarks/operator_scale.py --games 100 --phase-seconds 10   # spread hand-offs
    python benchmarks/operator_scale.py --games 10 100 --runtimes builtin cluster  # both arms
"""

from __future__ import annotations

import json
import os
import queue
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, base_parser, log, median, percentile, report, table

RECONCILE = "sparring_reconcile_duration_seconds"
WORKERS = 8  # instant executor threads
RUNTIMES = ("builtin", "cluster")
GROUP, VERSION = "sparring.dev", "v1alpha1"
CLUSTER_RUNTIMES = "clustersparringruntimes"
RUNTIME_CRDS = [
    ROOT / "crds" / f"{plural}.sparring.dev.yaml"
    for plural in ("sparringruntimes", CLUSTER_RUNTIMES)
]
# Stalls that nothing in the bed would lift: the scale point ends at once instead of at --timeout.
RUNTIME_STALLS = ("RuntimeRefused", "RuntimeUnavailable")


def parse_args() -> Any:
    p = base_parser(__doc__)
    p.add_argument("--games", type=int, nargs="+", default=None, help="[10 50 100]")
    p.add_argument("--rounds", type=int, default=None, help="rounds per game [2]")
    p.add_argument("--resync", type=float, default=30.0, help="SPARRING_RESYNC_SECONDS")
    p.add_argument("--timeout", type=float, default=1800.0, help="per scale point, seconds")
    p.add_argument(
        "--phase-seconds",
        type=float,
        default=0.0,
        help="mean phase duration: each Job is held for a seeded uniform draw in [0.5, 1.5] x "
        "this before its commit [0: instant, every game hands off at once]",
    )
    p.add_argument(
        "--controller-qps",
        type=int,
        default=200,
        help="kube-controller-manager --kube-api-qps (its default, 20, caps the Job controller "
        "near 3 Jobs/s: the benchmark would measure that limit, not the operator)",
    )
    p.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=["builtin"],
        help="arms, each measured at every --games point: builtin (no default runtime, no "
        "runtime GET) and/or cluster (the chart's default ClusterSparringRuntime, read as the "
        "operator reads it: one GET per RUNTIME_TTL_SECONDS)",
    )
    args = p.parse_args()
    if args.games is None:
        args.games = [2] if args.quick else [10, 50, 100]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    return args


class InstantExecutor:
    """Completes each new phase Job's work at once: store commit, then its pod's exit."""

    def __init__(self, client: Any, store_root: Path, phase_seconds: float = 0.0) -> None:
        from harness.rawclient import MERGE_PATCH, request_json
        from sparring_trainer.store import FileStore

        self.client, self.store = client, FileStore(store_root)
        # Phases that take time spread the games' hand-offs out, as on a real cluster (phases
        # last minutes); 0 makes every game hand off at once, the control plane's worst case.
        self.phase_seconds, self._rng = phase_seconds, random.Random(0)
        self._request, self._merge = request_json, MERGE_PATCH
        self.jobs: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.committed: dict[tuple[str, str], float] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        # Several workers, as phases of many games end independently: one would hold every
        # Job behind the wait for the previous Job's pod to be created.
        self._threads = [
            threading.Thread(target=self._run, daemon=True, name=f"instant-executor-{i}")
            for i in range(WORKERS)
        ]

    def start(self) -> InstantExecutor:
        for thread in self._threads:
            thread.start()
        return self

    def submit(self, job: dict[str, Any]) -> None:
        """A new phase Job: its work is done at once, or, with a phase duration, its pod is
        reported running (ready, as the kubelet does once the container started) and the work
        is done after that duration."""
        self.jobs.put(("start" if self.phase_seconds > 0 else "finish", job))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        from sparring_operator.jobs import LABEL_GAME, LABEL_PHASE, LABEL_ROUND
        from sparring_trainer.store import commit, phase_prefix

        while not self._stop.is_set():
            try:
                step, job = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            meta = job["metadata"]
            labels = meta.get("labels") or {}
            if step == "start":
                try:
                    self._running(meta["namespace"], self._pod_of(meta["namespace"], meta["name"]))
                except Exception as exc:  # keep going; reported at the end
                    self.errors.append(f"{meta.get('name')}: {exc!r}")
                delay = self.phase_seconds * self._rng.uniform(0.5, 1.5)
                timer = threading.Timer(delay, self.jobs.put, (("finish", job),))
                timer.daemon = True
                timer.start()
                continue
            try:
                prefix = phase_prefix(
                    meta["namespace"],
                    labels[LABEL_GAME],
                    int(labels[LABEL_ROUND]),
                    labels[LABEL_PHASE],
                )
                pod = self._pod_of(meta["namespace"], meta["name"])
                self.store.put_bytes(prefix + "metrics.json", b'{"compute_seconds": 0.0}')
                commit(self.store, prefix)
                self.committed[(meta["namespace"], meta["name"])] = time.time()
                self._exit(meta["namespace"], pod)
            except Exception as exc:  # keep going; reported at the end
                self.errors.append(f"{meta.get('name')}: {exc!r}")

    def _pod_of(self, namespace: str, job: str) -> str:
        """The pod the real Job controller created for `job` (it appears within moments)."""
        path = f"/api/v1/namespaces/{namespace}/pods"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pods = self._request(
                self.client, "GET", path, query={"labelSelector": f"job-name={job}"}
            )
            if pods["items"]:
                return str(pods["items"][0]["metadata"]["name"])
            time.sleep(0.02)  # polling the API for a pod that is being created
        raise TimeoutError(f"no pod of Job {job} after 60 s")

    def _running(self, namespace: str, pod: str) -> None:
        """Report the pod's container as running and ready, as the kubelet does once it started
        (the Job controller then counts it in the Job's `ready`)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        container = {
            "name": "phase", "image": "sparring-trainer", "imageID": "", "ready": True,
            "restartCount": 0, "started": True, "state": {"running": {"startedAt": now}},
        }  # fmt: skip
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": now}
        body = {
            "status": {
                "phase": "Running", "startTime": now, "conditions": [ready],
                "containerStatuses": [container],
            }
        }  # fmt: skip
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/status"
        self._request(self.client, "PATCH", path, body, self._merge)

    def _exit(self, namespace: str, pod: str) -> None:
        """Report the pod's container as exited 0, as the kubelet does when a phase ends."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
        container = {
            "name": "phase", "image": "sparring-trainer", "imageID": "", "ready": False,
            "restartCount": 0, "started": False, "state": {"terminated": terminated},
        }  # fmt: skip
        body = {"status": {"phase": "Succeeded", "containerStatuses": [container]}}
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/status"
        self._request(self.client, "PATCH", path, body, self._merge)


def default_runtime(kube: Any, release: str) -> str:
    """Install the runtime CRDs and the ClusterSparringRuntime the chart renders for `release`
    (its default runtime, as `helm install` creates it); returns the runtime's name."""
    from harness import chartops  # tests/ is on sys.path once _harness is imported
    from harness.fixtures import install_crd
    from kubernetes import client as k8s

    for crd in RUNTIME_CRDS:
        install_crd(kube.client, crd)
    rendered = chartops.render(chartops.namespaced_values(kube.namespace), release, kube.namespace)
    runtime = next(o for o in rendered if o["kind"] == "ClusterSparringRuntime")
    # The Helm hook annotations mean nothing outside Helm; the spec is the chart's, unchanged.
    body = {
        "apiVersion": runtime["apiVersion"],
        "kind": runtime["kind"],
        "metadata": {"name": runtime["metadata"]["name"]},
        "spec": runtime["spec"],
    }
    k8s.CustomObjectsApi(kube.client).create_cluster_custom_object(
        GROUP, VERSION, CLUSTER_RUNTIMES, body
    )
    return str(body["metadata"]["name"])


def game_states(kube: Any) -> dict[str, tuple[str, str]]:
    """name -> (status.phase, the Stalled condition's reason or "") of every game, in one list."""
    from kubernetes import client as k8s

    listed = k8s.CustomObjectsApi(kube.client).list_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, "adversarialgames"
    )
    states = {}
    for game in listed["items"]:
        status = game.get("status") or {}
        stalled = next(
            (
                c.get("reason") or "?"
                for c in status.get("conditions") or []
                if c.get("type") == "Stalled" and c.get("status") == "True"
            ),
            "",
        )
        states[game["metadata"]["name"]] = (status.get("phase") or "", stalled)
    return states


def scale_point(args: Any, n_games: int, runtime: str, workdir: Path) -> dict[str, Any]:
    import psutil
    from _harness import (
        JobWatch,
        OperatorProcess,
        audit,
        bed,
        between,
        job_creations,
        request_mix,
        scrape,
        successions,
    )
    from kubernetes import client as k8s

    store_root = workdir / "store"
    with bed(workdir, with_kubelet=False, controller_qps=args.controller_qps) as kube_bed:
        kube, ns = kube_bed.kube, kube_bed.namespace
        # Its own clients: the executor's writes and the watch are the admin's, never counted
        # as the operator's (the audit log is filtered by the operator's ServiceAccount).
        executor = InstantExecutor(
            kube.new_client("bench-executor"), store_root, args.phase_seconds
        )
        jobs = JobWatch(kube.new_client("bench-job-watch"), ns, on_create=executor.submit)
        # The operator refuses a file:// store on a cluster unless told that every pod runs on
        # this one machine, which is the case here (the "phases" are this process).
        env = {"SPARRING_ALLOW_FILE_STORE": "1"}
        if runtime == "cluster":
            # The bed's ServiceAccount and RBAC are the chart's for release "op-<namespace>".
            env["SPARRING_DEFAULT_RUNTIME"] = default_runtime(kube, f"op-{ns}")
        operator = OperatorProcess(
            kube_bed.operator_kubeconfig, workdir / "operator.log", args.resync, ns, env=env
        )
        rss_peak = [0.0]
        sampling = threading.Event()
        try:
            executor.start()
            jobs.start()
            operator.start()
            proc = psutil.Process(operator.pid)

            def sample_rss() -> None:
                while not sampling.wait(0.5):
                    rss_peak[0] = max(rss_peak[0], proc.memory_info().rss / 2**20)

            threading.Thread(target=sample_rss, daemon=True).start()
            idle = histogram(scrape(operator.metrics_port), RECONCILE)
            template = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
            template["spec"]["rounds"] = args.rounds
            template["spec"]["storage"] = {"uri": f"file://{store_root}"}
            custom = k8s.CustomObjectsApi(kube.client)
            names = {f"game-{i:03d}" for i in range(n_games)}
            pids = {
                "operator": operator.pid,
                "kube-apiserver": kube_bed.pid("kube-apiserver"),
                "etcd": kube_bed.pid("etcd"),
                "kube-controller-manager": kube_bed.pid("kube-controller-manager"),
                "this benchmark (executor, watch)": os.getpid(),
            }
            cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
            log(f"{n_games} games, {runtime} runtime: creating")
            t0 = time.time()
            for name in sorted(names):
                doc = {**template, "metadata": {"name": name}}
                custom.create_namespaced_custom_object(
                    "sparring.dev", "v1alpha1", ns, "adversarialgames", doc
                )
            deadline = time.monotonic() + args.timeout
            last_log = time.monotonic()
            stalls: dict[str, str] = {}  # every game that was ever Stalled: its reason
            while True:
                states = game_states(kube)
                phases = {n: phase for n, (phase, _) in states.items()}
                stalls.update({n: why for n, (_, why) in states.items() if why})
                done = {n for n, p in phases.items() if p in ("Succeeded", "Failed")}
                refused = any(why in RUNTIME_STALLS for why in stalls.values())
                if done >= names or refused or time.monotonic() > deadline:
                    break
                if time.monotonic() - last_log > 30:
                    log(f"{n_games} games: {len(done)} finished, {len(jobs.seen)} Jobs so far")
                    last_log = time.monotonic()
                time.sleep(0.2)
            t1 = time.time()
            cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
            samples = scrape(operator.metrics_port)
        finally:
            sampling.set()
            operator.stop()
            jobs.stop()
            executor.stop()
        requests = audit(kube_bed.plane.audit_log)
    created = job_creations(between(requests, t0))
    ours = between([r for r in requests if r.user == kube_bed.operator_user], t0, t1)
    # Server-side time of the operator's calls (watches excluded: they last minutes).
    latency = [r.answered - r.received for r in ours if r.verb != "watch"]
    lag = [jobs.seen[k] - c for k, c in created.items() if k in jobs.seen]
    reconcile = histogram(samples, RECONCILE)
    gaps = [
        next_created - executor.committed[key]
        for key, _labels, next_created in successions(created, jobs.labels)
        if key in executor.committed
    ]
    wall = t1 - t0
    nan = float("nan")
    # The runtime reads, by the answer's status code (200, or 403/404 if RBAC or the object
    # were missing): the builtin arm must have none.
    runtime_gets: dict[int, int] = {}
    for r in ours:
        if r.resource == CLUSTER_RUNTIMES and r.verb == "get":
            runtime_gets[r.code] = runtime_gets.get(r.code, 0) + 1
    return {
        "games": n_games,
        "runtime": runtime,
        "finished": len(done & names),
        "failed": sum(1 for n in names if phases.get(n) == "Failed"),
        "jobs": len(created),
        "wall": wall,
        "rate": len(created) / wall,
        "gap": (median(gaps), percentile(gaps, 95), max(gaps)) if gaps else (nan,) * 3,
        "cpu": cpu["operator"],
        "cpu_pct": {k: 100 * v / wall for k, v in cpu.items()},
        "rss": rss_peak[0],
        "reconciles": reconcile["count"] - idle["count"],
        "rec": (reconcile["mean"], reconcile["p50"], reconcile["p95"]),
        "requests": len(ours),
        "req_per_job": len(ours) / max(1, len(created)),
        "latency_ms": (1000 * median(latency), 1000 * percentile(latency, 95))
        if latency
        else (nan, nan),
        "watch_lag_ms": 1000 * median(lag) if lag else nan,
        "mix": request_mix(ours, 5),
        "runtime_gets": runtime_gets,
        "stalls": stalls,
        "errors": (executor.errors + jobs.errors)[:3],
        "timed_out": not done >= names,
    }


def arm(r: dict[str, Any]) -> str:
    return f"{r['games']} games, {r['runtime']}"


def ratios(results: list[dict[str, Any]]) -> str:
    """cluster / builtin at each N where both arms ran: what the runtime GET costs."""
    by = {(r["games"], r["runtime"]): r for r in results}
    lines = []
    for n in dict.fromkeys(r["games"] for r in results):
        if (n, "builtin") not in by or (n, "cluster") not in by:
            continue
        b, c = by[(n, "builtin")], by[(n, "cluster")]
        pairs = {
            "API requests per Job": (c["req_per_job"], b["req_per_job"]),
            "wall": (c["wall"], b["wall"]),
            "reconcile mean": (c["rec"][0], b["rec"][0]),
            "commit -> next Job median": (c["gap"][0], b["gap"][0]),
            "operator CPU": (c["cpu"], b["cpu"]),
        }
        lines.append(
            f"- {n} games: " + ", ".join(f"{k} {x / y:.2f}" for k, (x, y) in pairs.items())
        )
    return "\n".join(lines)


def histogram(samples: dict[str, float], name: str) -> dict[str, float]:
    """count, sum, mean and bucket-interpolated p50/p95 of a (label-free) histogram."""
    count = samples.get(f"{name}_count", 0.0)
    total = samples.get(f"{name}_sum", 0.0)
    buckets = []
    for key, value in samples.items():
        if key.startswith(f"{name}_bucket{{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), value))
    buckets.sort()

    def quantile(q: float) -> float:
        if not count:
            return float("nan")
        rank, lower, below = q * count, 0.0, 0.0
        for le, cumulative in buckets:
            if cumulative >= rank:
                if le == float("inf"):
                    return lower
                share = (rank - below) / max(cumulative - below, 1e-12)
                return lower + (le - lower) * share
            lower, below = le, cumulative
        return lower

    return {
        "count": count,
        "sum": total,
        "mean": total / count if count else float("nan"),
        "p50": quantile(0.5),
        "p95": quantile(0.95),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (not its children)."""
    import psutil

    try:
        return float(sum(psutil.Process(pid).cpu_times()[:2]))
    except psutil.NoSuchProcess:
        return float("nan")


def main() -> int:
    started = time.time()
    args = parse_args()
    results = []
    for n in args.games:
        # The arms of one N back to back, each on a fresh control plane: same machine, nearly
        # the same moment, so their ratio is less exposed to the machine's load drifting.
        for runtime in args.runtimes:
            with tempfile.TemporaryDirectory(prefix=f"bench-scale-{n}-{runtime}-") as tmp:
                result = scale_point(args, n, runtime, Path(tmp))
            results.append(result)
            log(json.dumps({k: v for k, v in result.items() if k != "mix"}, default=str))
    rows = [
        [
            r["games"],
            r["runtime"],
            f"{r['finished']}/{r['games']}"
            + (" (timed out)" if r["timed_out"] else "")
            + (f", {r['failed']} Failed" if r["failed"] else "")
            + (f", {len(r['stalls'])} ever Stalled" if r["stalls"] else ""),
            r["jobs"],
            f"{r['wall']:.1f}",
            f"{r['rate']:.1f}",
            " / ".join(f"{x:.2f}" for x in r["gap"]),
            f"{r['cpu']:.1f} ({r['cpu_pct']['operator']:.0f}%)",
            f"{r['cpu_pct']['kube-apiserver']:.0f}%",
            f"{r['rss']:.0f}",
            f"{r['reconciles']:.0f}",
            " / ".join(f"{1000 * x:.0f}" for x in r["rec"]),
            f"{r['req_per_job']:.1f}",
        ]
        for r in results
    ]
    headers = [
        "games",
        "runtime",
        "finished",
        "phase Jobs",
        "wall s",
        "Jobs/s",
        "commit -> next Job s (median / p95 / max)",
        "operator CPU s (% of wall)",
        "kube-apiserver CPU (% of wall)",
        "peak RSS MiB",
        "reconciles",
        "reconcile ms (mean / p50 / p95)",
        "API requests per Job",
    ]
    mixes = "\n".join(f"- {arm(r)}: {r['mix']}" for r in results)
    others = "\n".join(
        f"- {arm(r)}: "
        + ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu_pct"].items() if k != "operator")
        + "; the operator's requests took {:.0f} / {:.0f} ms (median / p95) in the API "
        "server; the Job watch ran {:.1f} ms (median) behind it".format(
            *r["latency_ms"], r["watch_lag_ms"]
        )
        for r in results
    )
    reads = "\n".join(
        f"- {arm(r)}: "
        + (
            ", ".join(f"{count} answered {code}" for code, count in sorted(gets.items()))
            + f" ({sum(gets.values()) / max(1.0, r['reconciles']):.2f} per reconcile)"
            if (gets := r["runtime_gets"])
            else "none"
        )
        + (
            "; Stalled: " + ", ".join(sorted(set(r["stalls"].values())))
            if r["stalls"]
            else "; no game was ever Stalled"
        )
        for r in results
    )
    errors = [e for r in results for e in r["errors"]]
    body = "\n".join(
        [
            table(headers, rows),
            "",
            f"Each game: examples/apo-tiny.yaml with {args.rounds} round(s) "
            f"({1 + 5 * args.rounds} phase Jobs), a file:// store; all games created at once "
            f"in one namespace; operator resync timer {args.resync:g} s; kube-controller-manager "
            f"--kube-api-qps={args.controller_qps} (its default of 20 caps the Job controller "
            "near 3 Jobs/s on this bed). "
            + (
                f"Each phase lasts a seeded uniform draw in [{args.phase_seconds / 2:g}, "
                f"{1.5 * args.phase_seconds:g}] s, so the games hand off at different times; "
                "its pod is reported running and ready when it starts, as the kubelet would. "
                if args.phase_seconds > 0
                else "Phases are instant (see the script's docstring), so every game hands "
                "off at once: the numbers are the operator's own cost plus its waits on the "
                "API server, under the control plane's worst burst. "
            )
            + "Runtime builtin: the operator has no default runtime and asks for none; "
            "cluster: it runs with SPARRING_DEFAULT_RUNTIME naming the chart's default "
            "ClusterSparringRuntime and reads it as the operator does (since 22cba17 one "
            "GET per RUNTIME_TTL_SECONDS, shared by the games; before, one per pass). "
            + "The control plane is real (kube-apiserver, etcd, "
            "kube-controller-manager; no kubelet: the executor reports each phase pod's exit "
            "right after its commit, as the kubelet would) and shares this machine's cores "
            "with the operator and with this benchmark's process (instant executor, Job "
            "watch). Commit -> next Job runs from the executor's commit to the "
            "API server's audit-log timestamp of the operator's `create jobs`. Reconcile "
            "percentiles are interpolated within the histogram's buckets (0.01, 0.05, 0.1, "
            "0.25, 0.5, 1, 2.5 s, ...). The handler starts that timer before "
            "`asyncio.to_thread`, so a reconcile's duration includes its wait for one of the "
            "operator's reconcile threads (6, SPARRING_RECONCILE_THREADS): under a burst it "
            "measures queueing, not work.",
            "",
            "CPU over the same wall time (% of one core), and API latency:",
            others,
            "",
            "Operator `get clustersparringruntimes` by answer (audit log), and stalls:",
            reads,
            *(["", "Cluster / builtin, same N:", ratios(results)] if ratios(results) else []),
            "",
            "Operator requests by kind (top 5, whole run; audit log):",
            mixes,
            *([f"\nExecutor or watch errors: {errors}"] if errors else []),
        ]
    )
    report(args, "Operator scale (benchmarks/operator_scale.py)", body, "-", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
