"""The real Kubernetes control plane of the test bed (tests/harness) as the benchmarks use it.

* `bed()`: a `ControlPlane` (etcd, kube-apiserver, kube-controller-manager from the pinned
  release, plus the process kubelet when asked) under a work folder, the CRD, one namespace,
  and a kubeconfig for the chart's operator ServiceAccount under the chart's RBAC. That
  kubeconfig points straight at the API server: the tests route the operator through their fault
  proxy, but the proxy runs in this process and would add its own hop and CPU to every
  operator request being measured.
* `JobWatch`: a watch on the namespace's Jobs in a thread of this process (see its docstring
  for which clock each timestamp comes from), with an optional `on_create` callback.
* `audit()`: the API server's audit log with its microsecond timestamps, the request log of the
  operator (filtered by the ServiceAccount's username) and of Job creations.
* `OperatorProcess`: `python -m sparring_operator operator` as a child process with /metrics on
  a free port and psutil for its CPU time and RSS; `scrape()` reads /metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import ROOT, free_port

if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import kubernetes.client
import kubernetes.config
from harness import chartops  # tests/ is on sys.path from here on
from harness.cluster import AuditRecord, Kube, new_namespace, read_audit
from harness.controlplane import ControlPlane, write_kubeconfig
from harness.fixtures import RESTRICTED, install_crd
from harness.rawclient import wait_for
from kubernetes import watch

GAME_LABEL = "sparring.dev/game"


@dataclasses.dataclass
class Bed:
    plane: ControlPlane
    kube: Kube  # admin clients and the benchmark's namespace
    operator_kubeconfig: Path
    operator_user: str  # the ServiceAccount's username, as the audit log names it

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def pid(self, component: str) -> int:
        """The pid of "kube-apiserver", "etcd", "kube-controller-manager" or "kubelet"."""
        return int(self.plane.processes[component]["pid"])


@contextlib.contextmanager
def bed(workdir: Path, with_kubelet: bool, controller_qps: int | None = None) -> Iterator[Bed]:
    """A fresh control plane under `workdir`, stopped (every process it started) on exit."""
    plane = ControlPlane(workdir / "kube", with_kubelet=with_kubelet, controller_qps=controller_qps)
    kube = None
    try:
        plane.start()
        admin = kubernetes.config.new_client_from_config(
            config_file=str(plane.kubeconfig), persist_config=False
        )
        install_crd(admin)
        core = kubernetes.client.CoreV1Api(admin)
        if with_kubelet:
            wait_for(lambda: core.list_node().items, 60, message="the kubelet never registered")
        # The same restricted PodSecurity level as the tests: the phase pods must pass it.
        namespace = new_namespace(core, "bench", **RESTRICTED)
        # The Job controller's pods are refused until the namespace's default ServiceAccount
        # exists; waiting here keeps that start-up retry out of the first Jobs' timings.
        wait_for(
            lambda: (
                core.list_namespaced_service_account(
                    namespace, field_selector="metadata.name=default"
                ).items
            ),
            60,
            message="the namespace's default ServiceAccount never appeared",
        )
        admin.close()
        kube = Kube(plane, namespace, workdir)
        user, token = chartops.apply_identity(kube.client, namespace, f"op-{namespace}")
        kubeconfig = write_kubeconfig(
            workdir / "operator.kubeconfig", plane.server, plane.pki.ca_crt, None, None, token
        )
        yield Bed(plane, kube, kubeconfig, user)
    finally:
        if kube is not None:
            kube.close()
        plane.stop()


class JobWatch:
    """Every Job of one namespace as a watch in this process delivers it.

    ``seen[key]``: time.time() when the ADDED event arrived; ``finished[key]``: when the first
    event showing a Complete or Failed condition arrived; ``labels[key]``; `on_create(job)` is
    called on ADDED (in the watch thread: it must be quick).

    The watch gives completion and `on_create`. For *creation* the benchmarks use the audit
    log's stageTimestamp of the `create jobs` request instead (`job_creations`): the API
    server's own microsecond clock when it answered the operator, as the old in-server hook
    was, without the watch's delivery lag (watch cache, this process's GIL shared with the
    executor), which grows with load and is not the operator's. The audit log cannot give
    completion: at Metadata level it does not say which status write made a Job Complete.
    `seen - created` is the watch's lag, reported so that the error on `finished` is known."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        namespace: str,
        on_create: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.batch = kubernetes.client.BatchV1Api(client)
        self.namespace, self.on_create = namespace, on_create
        self.seen: dict[tuple[str, str], float] = {}
        self.finished: dict[tuple[str, str], float] = {}
        self.labels: dict[tuple[str, str], dict[str, str]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True, name="job-watch")
        self._version = ""

    def start(self) -> JobWatch:
        self._list()
        self._thread.start()
        return self

    def _list(self) -> None:
        # The watch starts from the list's resourceVersion: no Job created after start()
        # returns can be missed (nor, after a 410 Gone, after the new list).
        listed = self.batch.list_namespaced_job(self.namespace)
        self._version = listed.metadata.resource_version
        for job in listed.items:
            self._handle(self.batch.api_client.sanitize_for_serialization(job))

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()
        # The stream blocks until its next event or its 30 s server timeout; the thread is a
        # daemon and nothing it could still record is read after stop(), so do not wait.
        self._thread.join(timeout=1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # Raw JSON (deserialize=False): building V1Job models for every event would
                # cost this process's CPU, shared with what it times.
                for event in self._watch.stream(
                    self.batch.list_namespaced_job,
                    self.namespace,
                    resource_version=self._version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=30,
                    deserialize=False,
                ):
                    obj = event["object"]
                    self._version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._handle(obj)
                    if self._stop.is_set():
                        return
            except Exception as exc:  # a dropped connection: resume from the last version
                if self._stop.is_set():
                    return
                self.errors.append(repr(exc))
                time.sleep(0.2)
                if isinstance(exc, kubernetes.client.ApiException) and exc.status == 410:
                    self._list()

    def _handle(self, job: dict[str, Any]) -> None:
        now = time.time()
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"])
        new = False
        with self._lock:
            if key not in self.seen:
                self.seen[key], new = now, True
                self.labels[key] = dict(meta.get("labels") or {})
            conditions = (job.get("status") or {}).get("conditions") or []
            if any(
                c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                for c in conditions
            ):
                self.finished.setdefault(key, now)
        if new and self.on_create is not None:
            self.on_create(job)


# ---- the audit log ----------------------------------------------------------------------------
# The API server's own record, with its microsecond timestamps (tests/harness/cluster.py).
Request = AuditRecord


def audit(path: Path, user: str | None = None) -> list[Request]:
    return read_audit(path, user)


def between(requests: list[Request], since: float, until: float | None = None) -> list[Request]:
    """Requests received in [since, until]."""
    return [r for r in requests if r.received >= since and (until is None or r.received <= until)]


def job_creations(requests: list[Request]) -> dict[tuple[str, str], float]:
    """(namespace, name) -> when the API server answered the successful `create jobs`."""
    return {
        (r.namespace, r.name): r.answered
        for r in requests
        if r.verb == "create" and r.resource == "jobs" and r.code == 201
    }


def request_mix(requests: list[Request], top: int = 6) -> str:
    counts: dict[str, int] = {}
    for r in requests:
        key = f"{r.verb} {r.resource or r.uri.split('?')[0]}"
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v}" for k, v in ordered)


def successions(
    created: dict[tuple[str, str], float], labels: dict[tuple[str, str], dict[str, str]]
) -> list[tuple[tuple[str, str], dict[str, str], float]]:
    """(Job key, its labels, when its game's *next* Job was created), per game in order."""
    by_game: dict[tuple[str, str], list[tuple[float, tuple[str, str]]]] = {}
    for key, when in created.items():
        game = labels.get(key, {}).get(GAME_LABEL, "?")
        by_game.setdefault((key[0], game), []).append((when, key))
    out = []
    for jobs in by_game.values():
        jobs.sort()
        for (_, key), (next_created, _) in itertools.pairwise(jobs):
            out.append((key, labels.get(key, {}), next_created))
    return out


# ---- the operator -----------------------------------------------------------------------------
class OperatorProcess:
    """The operator as a child process (its own process group), /metrics on a free port.

    Not `harness.gameops.Operator`: that one fixes the resync timer at the tests' 1 s and does
    not wait for the operator to be up, and both matter to what is timed here."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        resync_seconds: float,
        namespace: str,
        env: dict[str, str] | None = None,
    ):
        self.kubeconfig, self.log, self.resync = kubeconfig, log, resync_seconds
        self.namespace, self.env = namespace, env or {}
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "SPARRING_RESYNC_SECONDS": str(self.resync),
            **self.env,
        }
        cmd = [sys.executable, "-m", "sparring_operator", "operator"]
        cmd += ["--namespace", self.namespace, "--metrics-port", str(self.metrics_port)]
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


def game_phases(kube: Kube) -> dict[str, str]:
    """name -> status.phase ("" before the first status) of every game in the namespace."""
    listed = kubernetes.client.CustomObjectsApi(kube.client).list_namespaced_custom_object(
        "sparring.dev", "v1alpha1", kube.namespace, "adversarialgames"
    )
    return {
        g["metadata"]["name"]: (g.get("status") or {}).get("phase") or "" for g in listed["items"]
    }
