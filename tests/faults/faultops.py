"""Helpers and fixtures of the fault and security tests (tests/faults, tests/security).

The fixtures `operator` and `s3_game` and the game helpers come from tests/harness (registered
for every test); tests/faults/conftest.py makes `s3_game` a one-round game for these tests.

What the fault tests assert over and over:
* `Watchdog`: sampled every 50 ms during a game: never two unfinished Jobs, and never two live
  phase processes (pods the process kubelet runs), of one (game, round, phase) at once;
* `store_manifests`/`assert_store_intact`: every phase of the game is committed and verifies
  (size + sha256 of every object against its `_SUCCESS` manifest), and manifests captured
  earlier are unchanged (nothing committed was lost or rewritten);
* `attempts`: the Job names of each (round, phase), to pin down how many attempts it took.
"""

from __future__ import annotations

import collections
import contextlib
import re
import socket
import threading
import time
from typing import Any

from harness.nodeview import job_finished
from sparring_operator.machine import phase_sequence
from sparring_trainer.store import ArtifactStore, phase_prefix, require_committed

GAME = "apo-tiny"
JOB_NAME = re.compile(r"^(?P<game>.+)-r(?P<round>\d{4})-(?P<phase>[a-z-]+)-a(?P<attempt>\d+)$")
Marker = tuple[str, int, str]  # (game, round, phase)


# ---- what a game left behind ------------------------------------------------------------


def attempts(api: Any, game: str = GAME) -> dict[tuple[int, str], list[str]]:
    """Job names of each (round, phase) now in the API, sorted."""
    found: dict[tuple[int, str], list[str]] = collections.defaultdict(list)
    for job in api.list("batch/v1/jobs", None, f"sparring.dev/game={game}"):
        m = JOB_NAME.match(job["metadata"]["name"])
        assert m is not None, job["metadata"]["name"]
        found[(int(m["round"]), m["phase"])].append(job["metadata"]["name"])
    return {k: sorted(v) for k, v in sorted(found.items())}


def store_manifests(
    store: ArtifactStore, namespace: str, game: str = GAME, rounds: int = 1
) -> dict:
    """The verified manifest of every committed phase, in play order (stops at the first one
    that is not committed)."""
    manifests = {}
    for marker in phase_sequence("apo", rounds):
        prefix = phase_prefix(namespace, game, *marker)
        if not store.exists(prefix + "_SUCCESS"):
            break
        manifests[marker] = require_committed(store, prefix, verify=True)
    return manifests


def assert_store_intact(
    store: ArtifactStore,
    namespace: str,
    earlier: dict | None = None,
    game: str = GAME,
    rounds: int = 1,
) -> dict:
    """Every phase committed and verified; manifests seen `earlier` are unchanged."""
    now = store_manifests(store, namespace, game, rounds)
    assert list(now) == phase_sequence("apo", rounds), f"committed: {list(now)}"
    for marker, manifest in (earlier or {}).items():
        assert now[marker] == manifest, f"{marker} was re-committed or changed"
    return now


# ---- watching for two of one phase at once --------------------------------------------------


class Watchdog:
    """Samples the cluster every `interval` s in a thread and records each moment at which one
    (game, round, phase) had two unfinished Jobs in the API, or two live phase processes on the
    node (a Job's pod being killed counts as live until its process is gone)."""

    def __init__(self, api: Any, kubelet: Any, interval: float = 0.05) -> None:
        self.api, self.kubelet, self.interval = api, kubelet, interval
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="watchdog")

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as exc:  # the API may be faulty on purpose: sample again
                self.errors.append(repr(exc))

    def sample(self) -> None:
        jobs: dict[Marker, list[str]] = collections.defaultdict(list)
        for job in self.api.list("batch/v1/jobs"):
            m = JOB_NAME.match(job["metadata"]["name"])
            if m is None or job_finished(job) or job["metadata"].get("deletionTimestamp"):
                continue
            jobs[(m["game"], int(m["round"]), m["phase"])].append(job["metadata"]["name"])
        procs: dict[Marker, list[str]] = collections.defaultdict(list)
        for pod, job_name in self.kubelet.live_processes().items():
            m = JOB_NAME.match(job_name)
            if m is not None:
                procs[(m["game"], int(m["round"]), m["phase"])].append(pod)
        for what, seen in (("Jobs", jobs), ("phase processes", procs)):
            for marker, names in seen.items():
                if len(names) > 1:
                    self.violations.append(f"two live {what} of {marker}: {sorted(names)}")
        self.samples += 1

    def check(self) -> None:
        assert self.samples > 10, f"the watchdog hardly ran: {self.errors[-3:]}"
        assert not self.violations, self.violations[:5]


# ---- an S3 endpoint that can be taken away and given back ----------------------------------


class TcpGate:
    """A TCP proxy on 127.0.0.1 in front of `target` (host, port). `close()` makes the endpoint
    unreachable (the port refuses connections, open connections are cut); `open()` listens on
    the same port again, so clients configured with the endpoint URL just work again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.connections = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> TcpGate:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(100):  # the port may linger for a moment after close()
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.05)
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # closed meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {}
    )


def pod_messages(api: Any, job: str) -> list[str]:
    """Termination messages of a Job's pods (as the operator reads them)."""
    messages = []
    for pod in api.list("v1/pods", None, f"job-name={job}"):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated:
                messages.append(str(terminated.get("message") or ""))
    return messages
