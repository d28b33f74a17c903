"""The container runtime of the process kubelet: a pod's container is a local process group,
and the pod status shapes the kubelet writes for it.

Each process runs in a session (so a process group) of its own: signals reach everything it
started, and when its main process exits the rest of the group is SIGKILLed, as a runtime
kills a container's cgroup. Mounts that programs read by a fixed path (podspec's ``binds``: the
ServiceAccount credentials) are bind-mounted in a private mount namespace (``unshare -m``,
which needs root); the namespace dies with the process and nothing shows on the host except
the empty directories created as mount points. Every process runs as the kubelet's own user
(root here): ``securityContext`` (runAsUser, capabilities, seccomp, ...) is not applied.

Files under ``{root}/pods/{namespace}_{pod}/``: ``pid`` (the process group id, while it runs;
``pod_pid()`` reads it), ``pid.start`` (its start time, to never signal a recycled pid),
``uid`` (the pod's), ``volumes/``, ``home/``, ``work/`` and ``termination-log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .podspec import Prepared

TERMINATION_MESSAGE_MAX = 4096  # bytes of a termination message file, as the kubelet reads
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # FallbackToLogsOnError, as the kubelet's
LOST_MESSAGE = "The container could not be located when the pod was terminated"


def stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_dir(root: Path, namespace: str, pod: str) -> Path:
    return Path(root) / "pods" / f"{namespace}_{pod}"


def log_path(root: Path, namespace: str, pod: str) -> Path:
    return Path(root) / "logs" / f"{namespace}_{pod}.log"


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pod_pid(root: Path, namespace: str, pod: str) -> int | None:
    """The process group id of the pod's running container, or None when none runs."""
    directory = pod_dir(root, namespace, pod)
    try:
        pid = int((directory / "pid").read_text())
        started = (directory / "pid.start").read_text()
    except (OSError, ValueError):
        return None
    return pid if _start_time(pid) == started else None


def pods_running(root: Path) -> list[tuple[str, str]]:
    """(namespace, pod) of every pod whose container process runs now."""
    result = []
    for pid_file in sorted((Path(root) / "pods").glob("*/pid")):
        namespace, _, pod = pid_file.parent.name.partition("_")
        if pod_pid(root, namespace, pod) is not None:
            result.append((namespace, pod))
    return result


@functools.cache
def can_bind_mount() -> bool:
    """Whether ``unshare -m`` works here (root, or a user namespace allowed to mount)."""
    try:
        probe = ["unshare", "-m", "--propagation", "private", "true"]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _with_binds(argv: list[str], binds: dict[str, tuple[Path, bool]]) -> list[str]:
    if not binds or not can_bind_mount():
        return argv
    steps = []
    for target, (source, read_only) in sorted(binds.items()):
        t, s = shlex.quote(target), shlex.quote(str(source))
        # A file (the pod's /etc/hosts) binds over the node's file; a folder may need creating.
        make = "" if source.is_file() else f"mkdir -p {t} && "
        steps.append(f"{make}mount --bind {s} {t}")
        if read_only:
            steps.append(f"mount -o remount,bind,ro {t}")
    # `exec`: the container's program keeps the pid, so the process group and exit code are its.
    script = " && ".join([*steps, 'exec "$@"'])
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv]


@dataclasses.dataclass
class Process:
    popen: subprocess.Popen[bytes]
    directory: Path
    started_at: str  # RFC 3339, for the container status
    t0: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def exit_code(self) -> int | None:
        """None while the main process runs; then its exit code (128+N for signal N), once
        the rest of its group is killed and the main process is reaped."""
        if self.popen.returncode is None:
            # WNOWAIT: the zombie keeps the group id reserved until the group is killed.
            try:
                flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
                if os.waitid(os.P_PID, self.pid, flags) is None:
                    return None
            except ChildProcessError:  # reaped already: Popen knows its status
                pass
            self.signal(signal.SIGKILL)
            self.popen.wait()
            for name in ("pid", "pid.start"):
                (self.directory / name).unlink(missing_ok=True)
        code = self.popen.returncode
        return code if code >= 0 else 128 - code


def spawn(prepared: Prepared, directory: Path, log: Path) -> Process:
    """Start the container's process; raises OSError when its program cannot be executed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            _with_binds(prepared.argv, prepared.binds),
            env=prepared.env,
            cwd=prepared.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: signalled and killed as a whole
        )
    (directory / "pid.start").write_text(_start_time(popen.pid) or "")
    (directory / "pid").write_text(str(popen.pid))
    return Process(popen, directory, stamp())


def kill_leftover(directory: Path) -> None:
    """SIGKILL the process group a previous kubelet left (it was SIGKILLed itself)."""
    try:
        pid = int((directory / "pid").read_text())
        started = (directory / "pid.start").read_text()
    except (OSError, ValueError):
        return
    if _start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def termination_message(
    container: dict[str, Any], exit_code: int, message_file: Path | None, log: Path
) -> str:
    """The file's content; with FallbackToLogsOnError, a failure with no message gets the tail
    of the log (the last 80 lines, at most 2048 bytes)."""
    message = ""
    if message_file is not None and message_file.exists():
        with open(message_file, "rb") as f:
            message = f.read(TERMINATION_MESSAGE_MAX).decode(errors="replace")
    policy = container.get("terminationMessagePolicy")
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError" and log.exists():
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = f.read()
        message = b"".join(tail.splitlines(keepends=True)[-LOG_TAIL_LINES:]).decode(
            errors="replace"
        )
    return message


# -- status shapes -----------------------------------------------------------------------------
def conditions(pod: dict[str, Any], **wanted: tuple[bool, str]) -> list[dict[str, Any]]:
    """Conditions ``type=(status, reason)``; lastTransitionTime kept when the status is not new.
    Sent as a strategic merge patch (merge key ``type``): the other conditions (PodScheduled,
    DisruptionTarget from the eviction API) stay as they are."""
    current = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
    container = pod["spec"]["containers"][0]["name"]
    result = []
    for ctype, (ok, reason) in wanted.items():
        status = "True" if ok else "False"
        old = current.get(ctype) or {}
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": old.get("lastTransitionTime")
            if old.get("status") == status
            else stamp(),
            "reason": reason or None,
            "message": f"containers with unready status: [{container}]"
            if reason == "ContainersNotReady"
            else None,
        }
        result.append(cond)
    return result


def container_status(
    pod: dict[str, Any],
    state: dict[str, Any],
    restarts: int,
    last: dict[str, Any] | None,
    pid: int | None = None,
) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    running = "running" in state
    status: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": running,
        "started": running,
        "restartCount": restarts,
        "state": state,
        "lastState": {"terminated": last} if last else {},
    }
    if pid is not None:
        status["containerID"] = f"process://{pid}"
    return status


def terminated(
    exit_code: int, started_at: str | None, message: str, reason: str = ""
) -> dict[str, Any]:
    return {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "message": message or None,
        "startedAt": started_at,
        "finishedAt": stamp(),
    }


def base_status(pod: dict[str, Any]) -> dict[str, Any]:
    """What the kubelet reports once the pod's "sandbox" exists."""
    status = pod.get("status") or {}
    return {
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": status.get("startTime") or stamp(),
    }


def not_ready(pod: dict[str, Any], sandbox: bool = True) -> dict[str, Any]:
    return {
        **base_status(pod),
        "conditions": conditions(
            pod,
            PodReadyToStartContainers=(sandbox, ""),
            Initialized=(True, ""),
            Ready=(False, "ContainersNotReady"),
            ContainersReady=(False, "ContainersNotReady"),
        ),
    }


def running(pod: dict[str, Any]) -> dict[str, Any]:
    ready = (True, "")
    return {
        **base_status(pod),
        "phase": "Running",
        "conditions": conditions(
            pod,
            PodReadyToStartContainers=ready,
            Initialized=ready,
            Ready=ready,
            ContainersReady=ready,
            PodScheduled=ready,
        ),
    }


def finished(pod: dict[str, Any], phase: str) -> dict[str, Any]:
    reason = "PodCompleted" if phase == "Succeeded" else "ContainersNotReady"
    return {
        **base_status(pod),
        "phase": phase,
        "conditions": conditions(
            pod,
            PodReadyToStartContainers=(False, ""),
            Initialized=(True, "PodCompleted" if phase == "Succeeded" else ""),
            Ready=(False, reason),
            ContainersReady=(False, reason),
        ),
    }
