"""The Kubernetes test harness (tests/harness) as the benchmarks use it.

* `start_api()`: the harness API server (kmock-based, in this process) with `JobClock`
  attached: it timestamps, inside the server, every Job creation and the first status write
  that makes a Job Complete (or Failed), so transition latencies need no polling.
* `OperatorProcess`: `python -m sparring_operator operator` as a child process (as in
  tests/e2e/gameops.py), with /metrics on a free port and psutil for its CPU time and RSS.
* `scrape()` / `histogram()`: the operator's Prometheus text, parsed.
* `operator_requests()`: the request log restricted to the operator (every client whose
  User-Agent does not start with the harness's own "harness-" prefix).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ROOT, free_port

if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from harness import KubeApi  # tests/ is on sys.path from here on
from harness.kubeapi import HARNESS_USER_AGENT_PREFIX

GAMES = "sparring.dev/v1alpha1/adversarialgames"


class JobClock:
    """Wraps the harness store's create/patch to record, with time.time():
    ``created[(ns, name)]`` for every Job and ``finished[(ns, name)]`` for the first write
    after which the Job has a Complete or Failed condition. Optional `on_create` callback
    (called outside the store lock's critical work: it must be quick)."""

    def __init__(self, api: KubeApi, on_create: Callable[[dict[str, Any]], None] | None = None):
        self.created: dict[tuple[str, str], float] = {}
        self.finished: dict[tuple[str, str], float] = {}
        self.labels: dict[tuple[str, str], dict[str, str]] = {}
        self.on_create = on_create
        self._lock = threading.Lock()
        store = api.store
        create, patch = store.create, store.patch

        def timed_create(rdef: Any, namespace: Any, body: Any) -> Any:
            obj = create(rdef, namespace, body)
            if rdef.plural == "jobs":
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                with self._lock:
                    self.created.setdefault(key, time.time())
                    self.labels[key] = dict(obj["metadata"].get("labels") or {})
                if self.on_create is not None:
                    self.on_create(obj)
            return obj

        def timed_patch(rdef: Any, namespace: Any, name: Any, *rest: Any) -> Any:
            obj = patch(rdef, namespace, name, *rest)
            if rdef.plural == "jobs":
                conditions = (obj.get("status") or {}).get("conditions") or []
                if any(
                    c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                    for c in conditions
                ):
                    with self._lock:
                        self.finished.setdefault((namespace, name), time.time())
            return obj

        store.create = timed_create  # type: ignore[method-assign]
        store.patch = timed_patch  # type: ignore[method-assign]

    def successions(self) -> list[tuple[tuple[str, str], dict[str, str], float]]:
        """(Job key, its labels, when its game's *next* Job was created), per game in order."""
        by_game: dict[tuple[str, str], list[tuple[float, tuple[str, str]]]] = {}
        with self._lock:
            for key, created in self.created.items():
                game = self.labels[key].get("sparring.dev/game", "?")
                by_game.setdefault((key[0], game), []).append((created, key))
            out = []
            for jobs in by_game.values():
                jobs.sort()
                for (_, key), (next_created, _) in itertools.pairwise(jobs):
                    out.append((key, self.labels[key], next_created))
        return out


def start_api(workdir: Path, **kwargs: Any) -> KubeApi:
    return KubeApi(workdir, **kwargs).start()


class OperatorProcess:
    """The operator as a child process (its own process group), /metrics on a free port."""

    def __init__(self, kubeconfig: Path, log: Path, resync_seconds: float) -> None:
        self.kubeconfig, self.log, self.resync = kubeconfig, log, resync_seconds
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "SPARRING_RESYNC_SECONDS": str(self.resync),
        }
        cmd = [sys.executable, "-m", "sparring_operator", "operator", "--namespace", "default"]
        cmd += ["--metrics-port", str(self.metrics_port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # /metrics answers once the operator has started
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited:\n{self.tail()}")
            try:
                scrape(self.metrics_port)
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"operator /metrics never answered:\n{self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def scrape(port: int) -> dict[str, float]:
    """``{'name{labels}': value}`` of the operator's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                samples[key] = float(value)
            except ValueError:
                continue
    return samples


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


def operator_requests(api: KubeApi, since: float = 0.0, until: float | None = None) -> list[Any]:
    return [
        r
        for r in api.requests
        if not r.user_agent.startswith(HARNESS_USER_AGENT_PREFIX)
        and r.time >= since
        and (until is None or r.time <= until)
    ]


def request_mix(requests: list[Any], top: int = 6) -> str:
    counts: dict[str, int] = {}
    for r in requests:
        key = f"{r.verb} {r.resource or r.path}"
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v}" for k, v in ordered)


def games_in_phase(api: KubeApi, names: set[str], phase: str) -> set[str]:
    return {
        g["metadata"]["name"]
        for g in api.list(GAMES, "default")
        if g["metadata"]["name"] in names and (g.get("status") or {}).get("phase") == phase
    }
