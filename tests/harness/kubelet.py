"""``LocalKubelet``: the kubelet and the Job controller of the harness, in one polling thread.

It talks to the API server only over HTTP with the ``kubernetes`` client (User-Agent
``harness-kubelet``), like the real ones, so what the operator sees is what it would see on a
cluster. Each tick (``poll_interval``) it lists Jobs and, per Job that is neither finished nor
suspended, runs one pod at a time:

* creates the Pod (``{job}-{5 chars}``, the Job's labels, a controller ownerReference);
* runs the first container's command as a local process group (see ``podspec.py``), stdout and
  stderr to ``{root}/logs/{namespace}_{pod}.log`` (also served as ``pods/log``);
* on exit reports the Pod (phase, ``state.terminated`` with the termination message) and the
  Job as the Job controller does: Complete, or a retry until ``backoffLimit`` is exceeded
  (then Failed/BackoffLimitExceeded); ``podFailurePolicy`` rules (Ignore, FailJob, Count on
  exit codes and pod conditions); ``activeDeadlineSeconds`` (Failed/DeadlineExceeded);
  ``suspend`` (the pod is killed and deleted, condition Suspended).

A Job deleted while its pod runs has its process group killed; so does a Pod deleted through
the API (counted as a failure). :meth:`LocalKubelet.preempt` simulates a scheduler preemption
(SIGTERM, then SIGKILL after the grace period; Pod Failed with a DisruptionTarget condition).
A missing Secret/ConfigMap keeps the Pod Pending (waiting: CreateContainerConfigError) until it
appears, as on a cluster. At most ``max_parallel`` processes run; other Jobs wait.

Not emulated: more than one pod per Job at a time (completions/parallelism > 1), in-place
container restarts (``restartPolicy: OnFailure`` behaves as Never), the exponential delay
between retries (a retry starts on the next tick), init and sidecar containers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config

from . import jobcontrol, podspec
from .rawclient import MERGE_PATCH, request_json, wait_for

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


@dataclasses.dataclass
class PodRun:
    namespace: str
    name: str
    job_uid: str
    job_name: str
    pod_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    prepared: podspec.Prepared | None = None
    started: float = 0.0
    kill_reason: str | None = None  # preempted|deadline|suspended|deleted (Job)|pod-deleted
    kill_sent: float | None = None
    grace: float = 2.0
    last_try: float = 0.0


class LocalKubelet:
    def __init__(
        self,
        kubeconfig: Path,
        root: Path,
        *,
        max_parallel: int = 4,
        poll_interval: float = 0.1,
        kill_grace: float = 2.0,
        extra_env: dict[str, str] | None = None,
        node_name: str = "harness-node",
    ):
        self.kubeconfig, self.root = Path(kubeconfig), Path(root)
        self.max_parallel, self.poll_interval, self.kill_grace = (
            max_parallel,
            poll_interval,
            kill_grace,
        )
        self.extra_env, self.node_name = dict(extra_env or {}), node_name
        self.pods: dict[tuple[str, str], PodRun] = {}  # every pod ever started, for debugging
        self.errors: list[str] = []  # exceptions of the loop (it goes on after each)
        self._active: dict[str, PodRun] = {}  # job uid -> its current pod
        self._job_t0: dict[str, float] = {}  # job uid -> when it started (activeDeadlineSeconds)
        self._preempt: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: kubernetes.client.ApiClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalKubelet:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self._client = kubernetes.config.new_client_from_config(
            config_file=str(self.kubeconfig), persist_config=False
        )
        self._client.user_agent = "harness-kubelet"
        self._thread = threading.Thread(target=self._run, daemon=True, name="harness-kubelet")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop, then SIGKILL every process group still running and reap it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for run in self.pods.values():
            if run.proc is not None and run.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.proc.wait(timeout=10)
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> LocalKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests ---------------------------------------------------------------------------
    def log_path(self, pod: str, namespace: str = "default") -> Path:
        return self.pods[(namespace, pod)].log_path

    def logs(self, job: str, namespace: str = "default") -> str:
        """The combined output of every pod of a Job, oldest first."""
        runs = [r for r in self.pods.values() if r.job_name == job and r.namespace == namespace]
        return "".join(
            f"--- {r.name}\n{r.log_path.read_text(errors='replace')}"
            for r in sorted(runs, key=lambda r: r.started)
            if r.log_path.exists()
        )

    def running(self, job: str, namespace: str = "default") -> PodRun | None:
        with self._lock:
            return next(
                (
                    r
                    for r in self._active.values()
                    if r.job_name == job
                    and r.namespace == namespace
                    and r.proc is not None
                    and r.proc.poll() is None
                    and r.kill_reason is None
                ),
                None,
            )

    def preempt(self, job: str, namespace: str = "default", timeout: float = 10.0) -> str:
        """Preempt the Job's running pod (wait until it runs); return the pod's name."""
        run = wait_for(
            lambda: self.running(job, namespace),
            timeout,
            message=f"a running pod of job {namespace}/{job}",
        )
        with self._lock:
            self._preempt.add((run.namespace, run.name))
        return run.name

    def wait_job(self, job: str, namespace: str = "default", timeout: float = 30.0) -> Any:
        """Wait until the Job is Complete or Failed; return it (a dict, as the API has it).
        On timeout, the error shows the Job's status and the output of its pods."""
        path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}"
        last: dict[str, Any] = {}

        def finished() -> dict[str, Any] | None:
            last.update(self._call("GET", path))
            return dict(last) if jobcontrol.finished(last) else None

        def message() -> str:
            return f"job {namespace}/{job}: {last.get('status')}\n{self.logs(job)}"

        return wait_for(finished, timeout, message=message)

    # -- the loop ----------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> Any:
        assert self._client is not None
        return request_json(
            self._client, method, path, body, MERGE_PATCH if method == "PATCH" else None, query
        )

    def _read(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self._tick()
            except Exception as e:  # the API may be down or faulty: try again next tick
                self.errors.append(repr(e))

    def _tick(self) -> None:
        jobs = {j["metadata"]["uid"]: j for j in self._call("GET", "/apis/batch/v1/jobs")["items"]}
        if self._active:  # a pod deleted through the API: its process is killed, too
            pods = self._call(
                "GET", "/api/v1/pods", query={"labelSelector": "batch.kubernetes.io/controller-uid"}
            )["items"]
            alive = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
            for run in list(self._active.values()):
                if (run.namespace, run.name) not in alive:
                    self._kill(run, "pod-deleted")
        for uid, run in list(self._active.items()):
            if uid not in jobs or jobs[uid]["metadata"].get("deletionTimestamp"):
                self._kill(run, "deleted")
                self._escalate(run)
                if run.proc is None or run.proc.poll() is not None:
                    self._reap(None, run)
        for job in jobs.values():
            if not jobcontrol.finished(job):
                self._sync(job)

    def _escalate(self, run: PodRun) -> None:
        """SIGKILL a process group that outlived its grace period after SIGTERM."""
        if run.proc is not None and run.kill_sent and time.monotonic() - run.kill_sent > run.grace:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, signal.SIGKILL)

    def _sync(self, job: dict[str, Any]) -> None:
        uid, spec = job["metadata"]["uid"], job.get("spec") or {}
        run = self._active.get(uid)
        deadline = spec.get("activeDeadlineSeconds")
        if run is not None:
            if (run.namespace, run.name) in self._preempt:
                self._kill(run, "preempted")
            elif deadline and time.monotonic() - self._job_t0.get(uid, time.monotonic()) > deadline:
                self._kill(run, "deadline")
            elif spec.get("suspend"):
                self._kill(run, "suspended")
            if run.proc is None and run.kill_reason is None:
                self._try_start(job, run)
            elif run.proc is None or run.proc.poll() is not None:
                self._reap(job, run)
            else:
                self._escalate(run)
            return
        if spec.get("suspend"):
            self._job_t0.pop(uid, None)  # as startTime, the deadline restarts on resume
            if not jobcontrol.has_condition(job, "Suspended"):
                self._patch_status(job, jobcontrol.suspended_status(job))
            return
        if sum(1 for r in self._active.values() if r.proc is not None) >= self.max_parallel:
            return  # like a full node: the Job waits
        self._create_pod(job)

    def _patch_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        meta = job["metadata"]
        path = f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status"
        self._call("PATCH", path, {"status": status})

    def _create_pod(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        # As the Job controller's generateName: at most 58 chars, then 5 random ones.
        pod_name = f"{name}-"[:58] + "".join(random.choices(_NAME_CHARS, k=5))
        log_path = self.root / "logs" / f"{namespace}_{pod_name}.log"
        pod = jobcontrol.pod_manifest(job, pod_name, log_path, self.node_name)
        created = self._call("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        pod_dir = self.root / "pods" / namespace / pod_name
        run = PodRun(namespace, pod_name, meta["uid"], name, pod_dir, log_path)
        grace = float(created["spec"].get("terminationGracePeriodSeconds", 30))
        run.grace = min(grace, self.kill_grace)
        with self._lock:
            self._active[meta["uid"]] = run
            self.pods[(namespace, pod_name)] = run
            self._job_t0.setdefault(meta["uid"], time.monotonic())
        self._patch_status(job, jobcontrol.started_status(job))
        self._try_start(job, run)

    def _try_start(self, job: dict[str, Any], run: PodRun) -> None:
        if time.monotonic() - run.last_try < 0.5:
            return  # the real kubelet retries a pending container with a backoff, too
        run.last_try = time.monotonic()
        pod_path = f"/api/v1/namespaces/{run.namespace}/pods/{run.name}"
        pod = self._read("pods", run.namespace, run.name)
        if pod is None:
            return
        try:
            run.pod_dir.mkdir(parents=True, exist_ok=True)
            run.prepared = podspec.prepare(
                pod, run.pod_dir, self.root / "shared", self._read, self.extra_env
            )
        except podspec.NotReady as e:
            status = jobcontrol.waiting_status(pod, e.reason, e.message)
            self._call("PATCH", pod_path + "/status", {"status": status})
            return
        except ValueError as e:
            run.log_path.write_text(f"harness kubelet: {e}\n")
            self._report(job, run, pod, 128, str(e))
            return
        with open(run.log_path, "ab") as log:
            run.proc = subprocess.Popen(
                run.prepared.argv,
                env=run.prepared.env,
                cwd=run.prepared.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed as a whole
            )
        run.started = time.monotonic()
        self._call("PATCH", pod_path + "/status", {"status": jobcontrol.running_status(pod)})
        self._patch_status(job, {"ready": 1})

    def _kill(self, run: PodRun, reason: str) -> None:
        if run.kill_reason is not None:
            return
        run.kill_reason, run.kill_sent = reason, time.monotonic()
        if run.proc is not None and run.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, signal.SIGTERM)

    def _reap(self, job: dict[str, Any] | None, run: PodRun) -> None:
        """The process has exited (or never started): report the Pod, then the Job."""
        rc = run.proc.returncode if run.proc is not None else 137
        exit_code = rc if rc >= 0 else 128 - rc
        pod = self._read("pods", run.namespace, run.name)
        message = ""
        if run.prepared is not None and run.prepared.termination_path.exists():
            with open(run.prepared.termination_path, "rb") as f:
                message = f.read(4096).decode(errors="replace")
        policy = pod and pod["spec"]["containers"][0].get("terminationMessagePolicy")
        if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
            message = run.log_path.read_bytes()[-2048:].decode(errors="replace")
        with self._lock:
            self._active.pop(run.job_uid, None)
            self._preempt.discard((run.namespace, run.name))
        self._report(job, run, pod, exit_code, message)

    def _report(
        self,
        job: dict[str, Any] | None,
        run: PodRun,
        pod: dict[str, Any] | None,
        exit_code: int,
        message: str,
    ) -> None:
        succeeded = exit_code == 0 and run.kill_reason is None
        preempted = run.kill_reason == "preempted"
        pod_status = jobcontrol.terminated_status(pod, exit_code, message, succeeded, preempted)
        if pod is not None:
            pod_path = f"/api/v1/namespaces/{run.namespace}/pods/{run.name}"
            with contextlib.suppress(kubernetes.client.ApiException):  # deleted meanwhile
                self._call("PATCH", pod_path + "/status", {"status": pod_status})
                if run.kill_reason == "suspended":  # the Job controller deletes such pods
                    self._call("DELETE", pod_path)
        if job is None or run.kill_reason in ("deleted", "suspended"):
            return
        deadline = run.kill_reason == "deadline"
        status = jobcontrol.status_after_pod(job, pod_status, exit_code, succeeded, deadline)
        with contextlib.suppress(kubernetes.client.ApiException):
            self._patch_status(job, status)
