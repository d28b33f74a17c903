"""What a test sees of the node: a Job's running pod and its process, crashes, evictions.

The process kubelet (``kubelet.py``) writes each running pod's process-group id to
``{root}/pods/{namespace}_{pod}/pid``; a test kills that process to crash a container, or uses
the eviction API to preempt a pod as a scheduler would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.rest import ApiException

from .rawclient import wait_for


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclasses.dataclass
class RunningPod:
    namespace: str
    name: str
    job_name: str
    pid: int  # the container's process group
    conditions: dict[str, str] = dataclasses.field(default_factory=dict)  # type -> reason

    def alive(self) -> bool:
        return _pid_alive(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Crash the container (SIGKILL: exit code 137, as an OOM kill shows)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)


class NodeView:
    def __init__(self, kube: Any, root: Path) -> None:
        self.kube, self.root = kube, root
        self.core = kubernetes.client.CoreV1Api(kube.client)
        self.batch = kubernetes.client.BatchV1Api(kube.client)

    def _pid(self, namespace: str, pod: str) -> int | None:
        try:
            pid = int((self.root / "pods" / f"{namespace}_{pod}" / "pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def running(self, job_name: str, namespace: str | None = None) -> RunningPod | None:
        """The live process of `job_name`'s pod, if one runs now."""
        ns = namespace or self.kube.namespace
        for pod in self.core.list_namespaced_pod(ns, label_selector=f"job-name={job_name}").items:
            if pod.metadata.deletion_timestamp is not None:
                continue
            pid = self._pid(ns, pod.metadata.name)
            if pid is not None:
                return RunningPod(ns, pod.metadata.name, job_name, pid)
        return None

    def live_processes(self, namespace: str | None = None) -> dict[str, str]:
        """pod name -> Job name of every pod in the namespace whose process is alive."""
        ns = namespace or self.kube.namespace
        live = {}
        for pod in self.core.list_namespaced_pod(ns).items:
            if self._pid(ns, pod.metadata.name) is not None:
                live[pod.metadata.name] = (pod.metadata.labels or {}).get("job-name", "")
        return live

    def preempt(self, job_name: str, timeout: float = 60.0) -> RunningPod:
        """Evict the Job's running pod through the eviction API (what a preempting scheduler
        or a node drain does); returns once its process has exited, with the conditions the
        API server put on the pod (DisruptionTarget) before the pod went away."""
        run = wait_for(lambda: self.running(job_name), timeout, message=f"{job_name} never ran")
        self.core.create_namespaced_pod_eviction(
            run.name,
            run.namespace,
            {"metadata": {"name": run.name, "namespace": run.namespace}},
        )
        with contextlib.suppress(ApiException):  # already gone: no conditions to read
            pod = self.core.read_namespaced_pod(run.name, run.namespace)
            run.conditions = {
                c.type: c.reason or "" for c in pod.status.conditions or [] if c.status == "True"
            }
        wait_for(lambda: not run.alive(), timeout, message=f"{run.name} outlived its eviction")
        return run

    def wait_job(self, job_name: str, timeout: float = 120.0) -> dict[str, Any]:
        """The Job once the Job controller has marked it Complete or Failed."""

        def done() -> dict[str, Any] | None:
            try:
                job = self.kube.get("batch/v1/jobs", job_name)
            except ApiException:
                return None
            return job if job is not None and job_finished(job) else None

        return wait_for(done, timeout, message=f"Job {job_name} never finished")


def job_finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)
