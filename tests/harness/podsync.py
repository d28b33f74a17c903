"""The per-pod state machine of the process kubelet: start the container (``podspec`` +
``podrun``), report it, restart it by the pod's restartPolicy, and carry out its deletion.

A pod the kubelet meets for the first time is either new (its directory and log are reset),
already finished (left alone, but finalized if deleted), or one a previous kubelet ran: that
one counts as exited with 137, reason ContainerStatusUnknown, as a real kubelet reports a
container it can no longer find.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes.client

from . import podnames, podrun, podspec

TERMINAL = ("Succeeded", "Failed")
MAX_BACKOFF = 10.0
CONFIG_RETRY = 1.0  # seconds between tries to start a container that waits for a Secret etc.
StatusWriter = Callable[[dict[str, Any], dict[str, Any]], None]  # (pod, status)
Caller = Callable[..., Any]


@dataclasses.dataclass
class Run:
    """What the kubelet knows of one pod (by uid) bound to it."""

    uid: str
    namespace: str
    name: str
    directory: Path
    log: Path
    grace: float = 30.0  # terminationGracePeriodSeconds, capped
    proc: podrun.Process | None = None
    pid: int | None = None  # of the last process: the container's id
    prepared: podspec.Prepared | None = None
    restarts: int = 0
    last: dict[str, Any] | None = None  # lastState.terminated
    backoff: float = 0.0
    not_before: float = 0.0  # the next start attempt
    waiting: tuple[str, str] | None = None  # the waiting state last written
    lost: bool = False  # a previous kubelet ran it
    finished: bool = False  # a terminal status is written
    term_sent: float | None = None
    deleted: bool = False  # the final delete is sent


class PodSync:
    def __init__(
        self,
        root: Path,
        call: Caller,
        write_status: StatusWriter,
        sources: podspec.Sources,
        pod_env: dict[str, str],
        node: podspec.Node,
        max_grace: float,
    ) -> None:
        self.root, self.call, self.write_status = root, call, write_status
        self.sources, self.pod_env, self.node, self.max_grace = sources, pod_env, node, max_grace
        self.runs: dict[str, Run] = {}
        # namespace -> names its headless Services publish (podnames.records), set by the
        # kubelet before each pass, written into each pod's /etc/hosts.
        self.published: dict[str, list[str]] = {}
        self.node_hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""

    def sync(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        run = self.runs.get(uid) or self._adopt(pod)
        if pod["metadata"].get("deletionTimestamp"):
            self._terminate(run, pod)
        elif run.finished:
            return
        elif run.lost:
            run.lost = False
            self._exited(run, pod, 137, "ContainerStatusUnknown", podrun.LOST_MESSAGE)
        elif run.proc is not None:
            code = run.proc.exit_code()
            if code is not None:
                self._exited(run, pod, code)
            else:  # names published since it started resolve from now on
                podnames.write_hosts(podnames.hosts_path(run.directory), self._hosts(pod))
        elif time.monotonic() >= run.not_before:
            self._start(run, pod)

    def orphan(self, uid: str) -> None:
        """The pod is gone from the API: stop its process (SIGTERM, SIGKILL after its grace),
        then forget it."""
        run = self.runs[uid]
        if run.proc is not None and run.proc.exit_code() is None:
            if run.term_sent is None:
                run.term_sent = time.monotonic()
                run.proc.signal(signal.SIGTERM)
            elif time.monotonic() - run.term_sent >= run.grace:
                run.proc.signal(signal.SIGKILL)
            return
        del self.runs[uid]

    def _hosts(self, pod: dict[str, Any]) -> str:
        published = self.published.get(pod["metadata"]["namespace"], [])
        return podnames.hosts_text(pod, published, self.node_hosts)

    def processes(self) -> list[podrun.Process]:
        return [run.proc for run in self.runs.values() if run.proc is not None]

    # -- steps ------------------------------------------------------------------------------
    def _adopt(self, pod: dict[str, Any]) -> Run:
        meta, status = pod["metadata"], pod.get("status") or {}
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        directory = podrun.pod_dir(self.root, namespace, name)
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        run = Run(uid, namespace, name, directory, podrun.log_path(self.root, namespace, name))
        run.grace = min(grace, self.max_grace)
        statuses = status.get("containerStatuses") or [{}]
        uid_file = directory / "uid"
        if status.get("phase") in TERMINAL:
            run.finished = True
            self.runs[uid] = run
            return run
        if uid_file.exists() and uid_file.read_text() == uid:
            podrun.kill_leftover(directory)  # a previous kubelet's, which was killed
        else:
            shutil.rmtree(directory, ignore_errors=True)  # a former pod of the same name
            run.log.unlink(missing_ok=True)
            directory.mkdir(parents=True)
            uid_file.write_text(uid)
        # What the status says is the truth: a container reported running is lost now.
        run.restarts = int(statuses[0].get("restartCount") or 0)
        run.last = (statuses[0].get("lastState") or {}).get("terminated")
        run.lost = "running" in (statuses[0].get("state") or {})
        self.runs[uid] = run
        return run

    def _container_status(
        self, run: Run, pod: dict[str, Any], state: dict[str, Any]
    ) -> dict[str, Any]:
        return podrun.container_status(pod, state, run.restarts, run.last, run.pid)

    def _start(self, run: Run, pod: dict[str, Any]) -> None:
        try:
            prepared = podspec.prepare(
                pod,
                run.directory,
                self.root / "shared",
                self.sources,
                self.pod_env,
                self.node,
                self._hosts(pod),
            )
        except podspec.NotReady as e:
            run.not_before = time.monotonic() + CONFIG_RETRY
            if run.waiting != (e.reason, e.message):
                state = {"waiting": {"reason": e.reason, "message": e.message}}
                status = {
                    **podrun.not_ready(pod),
                    "containerStatuses": [self._container_status(run, pod, state)],
                }
                self.write_status(pod, status)
                run.waiting = (e.reason, e.message)
            return
        except ValueError as e:  # it cannot run here at all: as a runtime's failed start
            self._start_error(run, pod, str(e))
            return
        try:
            run.proc = podrun.spawn(prepared, run.directory, run.log)
        except OSError as e:
            self._start_error(run, pod, f'exec: "{prepared.argv[0]}": {e.strerror}')
            return
        run.prepared, run.waiting, run.term_sent, run.pid = prepared, None, None, run.proc.pid
        state = {"running": {"startedAt": run.proc.started_at}}
        status = {
            **podrun.running(pod),
            "containerStatuses": [self._container_status(run, pod, state)],
        }
        self.write_status(pod, status)

    def _start_error(self, run: Run, pod: dict[str, Any], message: str) -> None:
        with open(run.log, "a") as f:
            f.write(f"process kubelet: {message}\n")
        self._exited(run, pod, 128, "StartError", message)

    def _exited(
        self, run: Run, pod: dict[str, Any], code: int, reason: str = "", message: str | None = None
    ) -> None:
        """Report the container's end; finish the pod or schedule its restart."""
        container = pod["spec"]["containers"][0]
        if message is None:
            path = run.prepared.termination_path if run.prepared is not None else None
            message = podrun.termination_message(container, code, path, run.log)
        started = run.proc.started_at if run.proc is not None else None
        ran = time.monotonic() - (run.proc.t0 if run.proc is not None else time.monotonic())
        term = podrun.terminated(code, started, message, reason)
        run.proc = None
        policy = pod["spec"].get("restartPolicy") or "Always"
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            self._finish(run, pod, term)
            return
        # As CrashLoopBackOff: doubling delays, back to the first after a long healthy run.
        run.backoff = 1.0 if ran > 60 or not run.backoff else min(run.backoff * 2, MAX_BACKOFF)
        run.restarts += 1
        run.last = term
        run.not_before = time.monotonic() + run.backoff
        meta = pod["metadata"]
        waiting = {
            "reason": "CrashLoopBackOff",
            "message": f"back-off {run.backoff:g}s restarting failed container={container['name']}"
            f" pod={meta['name']}_{meta['namespace']}({meta['uid']})",
        }
        status = {
            **podrun.not_ready(pod),
            "phase": "Running",
            "containerStatuses": [self._container_status(run, pod, {"waiting": waiting})],
        }
        self.write_status(pod, status)

    def _finish(self, run: Run, pod: dict[str, Any], term: dict[str, Any]) -> None:
        phase = "Succeeded" if term["exitCode"] == 0 else "Failed"
        state = {"terminated": term}
        status = {
            **podrun.finished(pod, phase),
            "containerStatuses": [self._container_status(run, pod, state)],
        }
        self.write_status(pod, status)
        run.finished = True

    def _terminate(self, run: Run, pod: dict[str, Any]) -> None:
        """The pod is being deleted: stop the container within the deletion's grace period,
        report it, then delete the pod for good (grace 0), as the kubelet does."""
        if run.deleted:
            return  # the object waits for its finalizers (the Job controller's)
        if run.proc is not None:
            grace = min(
                float(pod["metadata"].get("deletionGracePeriodSeconds") or 0), self.max_grace
            )
            if run.term_sent is None:
                run.term_sent = time.monotonic()
                run.proc.signal(signal.SIGTERM)
            code = run.proc.exit_code()
            if code is None:
                if time.monotonic() - run.term_sent >= grace:
                    run.proc.signal(signal.SIGKILL)
                return
            path = run.prepared.termination_path if run.prepared is not None else None
            message = podrun.termination_message(pod["spec"]["containers"][0], code, path, run.log)
            started = run.proc.started_at
            run.proc = None
            self._finish(run, pod, podrun.terminated(code, started, message))
        elif not run.finished and not run.lost and run.last is not None:  # backing off
            self._finish(run, pod, run.last)
        elif not run.finished:  # never started, or lost with a previous kubelet
            self._finish(
                run,
                pod,
                podrun.terminated(137, None, podrun.LOST_MESSAGE, "ContainerStatusUnknown"),
            )
        meta = pod["metadata"]
        pod_path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            self.call("DELETE", pod_path, options)
        except kubernetes.client.ApiException as e:
            if e.status not in (404, 409):
                raise
        run.deleted = True
