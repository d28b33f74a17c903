"""The process kubelet: node, scheduler and container runtime of the test control plane, in one
loop, against a real API server (``controlplane.py``). The real controllers (Jobs,
Deployments, garbage collection) create and delete the pods; this kubelet only binds them and
runs them, as local processes, like a one-node cluster would.

    python -m harness.kubelet --kubeconfig ADMIN --node sparring-node --root DIR \\
        [--cpu 8] [--memory 32Gi] [--gpus 2]

runs until SIGTERM/SIGINT, then stops every pod process (SIGTERM, SIGKILL after the pod's grace
period, at most ``--shutdown-grace`` seconds) and exits 0. :class:`ProcessKubelet` is the same
in-process.

* Node (``nodeops.py``): registers the Node with the given allocatable, keeps Ready and the
  node Lease fresh (every 10 s), removes the not-ready taint admission puts on new Nodes;
  taints set by others stay.
* Scheduler (``scheduler.py``, filters in ``nodeops.py``): binds pods of ``default-scheduler``
  (binding subresource) that fit: nodeSelector/required node affinity, NoSchedule/NoExecute
  taints, requests (cpu, memory, nvidia.com/gpu, any extended resource, pod count). Others get
  ``PodScheduled=False``, reason Unschedulable, with the real scheduler's message, and are
  re-evaluated on every change.
* Runtime (``podsync.py``, ``podspec.py``, ``podrun.py``): the first container of each pod
  bound to this node runs as a local process group, from the project's environment (no
  images; ``python`` is the kubelet's interpreter; no user switching: ``securityContext`` is
  accepted and ignored, every process runs as the kubelet's user, root here). Secrets,
  ConfigMaps, emptyDir, downward API and projected volumes (the ServiceAccount token through
  TokenRequest) become folders under ``{root}/pods/{namespace}_{pod}/``; mount paths are
  rewritten where they appear in command, args and env values, and the ServiceAccount mount is
  also bind-mounted at its real path in a private mount namespace, so in-cluster clients find
  it; ``KUBERNETES_SERVICE_HOST/PORT`` point at the API server. Output goes to
  ``{root}/logs/{namespace}_{pod}.log``. A missing Secret/ConfigMap keeps the pod Pending
  (waiting: CreateContainerConfigError, or ContainerCreating for volumes), retried every second.
* Names (``podnames.py``): each pod's own /etc/hosts, bound over the node's, holds its names
  and the records cluster DNS would serve for its namespace's headless Services (an Indexed
  Job's ``JOB-INDEX.JOB.NS.svc``), all at the node's loopback address, kept current.
* Status (pods/status, strategic merge): Running with conditions and containerStatuses; on
  exit the terminated state (exit code, 128+N for signal N; termination message file or, with
  FallbackToLogsOnError, the log's tail) and phase Succeeded/Failed, or, for restartPolicy
  Always/OnFailure, a restart after a CrashLoopBackOff delay (1 s doubling to 10 s).
* Deletion: SIGTERM, SIGKILL after ``deletionGracePeriodSeconds`` (capped at ``max_grace``),
  the final status (conditions such as DisruptionTarget stay), then the delete with grace 0.

For tests: :func:`pod_pid` (the process group of a pod's running container, to signal it),
:func:`pods_running` and :func:`pod_log` read the kubelet's folder, from any process.

Pods a previous kubelet ran (it was killed; its leftover process group is SIGKILLed) count as
exited with 137, reason ContainerStatusUnknown, as a real kubelet reports containers it lost:
Failed with restartPolicy Never, restarted otherwise.

Not supported: init and sidecar containers and any container but the first, probes (a running
container is ready), pod ``activeDeadlineSeconds``, image entrypoints (a command is required),
updates of mounted ConfigMaps/Secrets and token rotation, service links environment, events,
and the kubelet API (pods/log, exec, port-forward: read the log file instead).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes.client
import kubernetes.config

from . import nodeops, podnames, podrun, podspec
from .informer import Informer
from .podrun import pod_pid, pods_running
from .podsync import PodSync
from .rawclient import MERGE_PATCH, request_json
from .scheduler import Scheduler

__all__ = ["ProcessKubelet", "main", "pod_log", "pod_pid", "pods_running"]

log = logging.getLogger("harness.kubelet")
NODE_NAME = "sparring-node"
KUBE_VERSION = os.environ.get("SPARRING_KUBE_VERSION", "1.35.4")
STRATEGIC = "application/strategic-merge-patch+json"
HEARTBEAT_SECONDS = 10.0


def pod_log(root: Path, namespace: str, pod: str) -> str:
    """The pod's output so far ('' before it starts)."""
    path = podrun.log_path(root, namespace, pod)
    return path.read_text(errors="replace") if path.exists() else ""


class ProcessKubelet:
    def __init__(
        self,
        kubeconfig: Path,
        root: Path,
        *,
        node_name: str = NODE_NAME,
        cpu: str = "8",
        memory: str = "32Gi",
        gpus: str = "2",
        extra_resources: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        max_grace: float = 30.0,
        shutdown_grace: float = 5.0,
        poll_interval: float = 0.1,
    ) -> None:
        self.kubeconfig, self.root, self.node_name = Path(kubeconfig), Path(root), node_name
        self.resources = {
            "cpu": cpu,
            "memory": memory,
            nodeops.GPU: gpus,
            **(extra_resources or {}),
        }
        self.extra_env = dict(extra_env or {})
        self.max_grace, self.shutdown_grace = max_grace, shutdown_grace
        self.poll_interval = poll_interval
        self.errors: list[str] = []  # exceptions of the loop (it goes on after each)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._client: kubernetes.client.ApiClient | None = None
        self._informers: list[Informer] = []
        self._beat = 0.0
        self._logged: dict[str, float] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def _new_client(self) -> kubernetes.client.ApiClient:
        client = kubernetes.config.new_client_from_config(
            config_file=str(self.kubeconfig), persist_config=False
        )
        client.user_agent = "harness-kubelet"  # the tests tell the kubelet's requests apart
        return client

    def start(self, timeout: float = 60.0) -> ProcessKubelet:
        for sub in ("logs", "pods", "shared"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._client = self._new_client()
        url = urlparse(self._client.configuration.host)
        port = str(url.port or 443)
        self._pod_env = {
            "KUBERNETES_SERVICE_HOST": url.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{url.hostname}:{port}",
            **self.extra_env,
        }
        self.sync = PodSync(
            self.root,
            self._call,
            self._patch_status,
            self,
            self._pod_env,
            podspec.Node(self.node_name, dict(self.resources)),
            self.max_grace,
        )
        self.scheduler = Scheduler(self.node_name, self._call, self._patch_status, self._error)
        self.node = nodeops.NodeAgent(self._call, self.node_name, self.resources, KUBE_VERSION)
        deadline = time.monotonic() + timeout
        while True:  # the API server may still be coming up
            try:
                self._node = self.node.register()
                break
            except Exception as e:
                if time.monotonic() > deadline:
                    raise
                log.info("registering node %s: %r", self.node_name, e)
                time.sleep(0.5)
        if not podrun.can_bind_mount():
            log.warning(
                "no private mount namespaces (unshare -m): in-cluster clients will not find "
                "/var/run/secrets/kubernetes.io/serviceaccount"
            )
        self._beat = time.monotonic()
        self.pods = Informer(self._new_client(), "/api/v1/pods", {}, self._wake).start()
        selector = {"fieldSelector": f"metadata.name={self.node_name}"}
        self.nodes = Informer(self._new_client(), "/api/v1/nodes", selector, self._wake).start()
        # Headless Services: the pod names they publish go into each pod's /etc/hosts.
        self.services = Informer(self._new_client(), "/api/v1/services", {}, self._wake).start()
        self._informers = [self.pods, self.nodes, self.services]
        for informer in self._informers:
            if not informer.synced.wait(max(1.0, deadline - time.monotonic())):
                raise TimeoutError(f"could not list {informer.path}")
        self._thread = threading.Thread(target=self._loop, daemon=True, name="process-kubelet")
        self._thread.start()
        log.info("node %s ready; allocatable %s", self.node_name, self.resources)
        return self

    def stop(self) -> None:
        """Stop the loop, then every pod process: SIGTERM, SIGKILL after its grace period
        (at most ``shutdown_grace``). Pod statuses are left as they are."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for informer in self._informers:
            informer.stop()
        procs = self.sync.processes() if hasattr(self, "sync") else []
        for proc in procs:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_grace
        while any(p.exit_code() is None for p in procs) and time.monotonic() < deadline + 10:
            if time.monotonic() > deadline:
                for proc in procs:
                    proc.signal(signal.SIGKILL)
            time.sleep(0.05)
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> ProcessKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests --------------------------------------------------------------------------
    def pod_pid(self, pod: str, namespace: str = "default") -> int | None:
        return pod_pid(self.root, namespace, pod)

    def log(self, pod: str, namespace: str = "default") -> str:
        return pod_log(self.root, namespace, pod)

    # -- API --------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        **query: str,
    ) -> Any:
        if method == "PATCH" and content_type is None:
            content_type = MERGE_PATCH
        assert self._client is not None, "start() first"
        return request_json(self._client, method, path, body, content_type, query or None)

    def read(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """podspec.Sources: a Secret or ConfigMap, None when missing."""
        try:
            found: dict[str, Any] = self._call(
                "GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}"
            )
            return found
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def token(self, pod: dict[str, Any], audience: str | None, expiration: int) -> str:
        """podspec.Sources: a token bound to the pod, as the kubelet gets it (TokenRequest)."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": expiration,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if audience:
            spec["audiences"] = [audience]
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        try:
            answer = self._call(
                "POST",
                path,
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except kubernetes.client.ApiException as e:
            raise podspec.NotReady(
                "ContainerCreating", f"failed to fetch token: {e.status} {e.reason}: {e.body}"
            ) from e
        return str(answer["status"]["token"])

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        try:  # the uid is a precondition: never the status of a newer pod of the same name
            self._call(
                "PATCH", path, {"metadata": {"uid": meta["uid"]}, "status": status}, STRATEGIC
            )
        except kubernetes.client.ApiException as e:
            if e.status not in (404, 409):
                raise

    # -- the loop ---------------------------------------------------------------------------
    def _error(self, what: str, e: Exception) -> None:
        text = f"{what}: {e!r}"
        self.errors.append(text)
        del self.errors[:-1000]  # a lasting fault repeats every tick
        if time.monotonic() - self._logged.get(text, -60.0) > 30:  # not 10 times a second
            self._logged[text] = time.monotonic()
            log.warning("%s", text, exc_info=e)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            try:
                self._tick()
            except Exception as e:
                self._error("kubelet loop", e)

    def _tick(self) -> None:
        if time.monotonic() - self._beat >= HEARTBEAT_SECONDS:
            self._beat = time.monotonic()
            try:
                self._node = self.node.heartbeat()
            except Exception as e:
                self._error("node heartbeat", e)
        pods = self.pods.snapshot()
        nodes = self.nodes.snapshot()
        self.scheduler.schedule(pods, nodes[0] if nodes else self._node)
        mine = {
            p["metadata"]["uid"]: p for p in pods if p["spec"].get("nodeName") == self.node_name
        }
        self.sync.published = podnames.records(pods, self.services.snapshot())
        for pod in mine.values():
            try:
                self.sync.sync(pod)
            except Exception as e:
                self._error(f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}", e)
        for uid in list(self.sync.runs):
            if uid not in mine:  # gone from the API: stop what still runs
                self.sync.orphan(uid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.kubelet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", default=NODE_NAME, help="the Node's name")
    parser.add_argument("--root", type=Path, required=True, help="pod directories and logs")
    parser.add_argument("--cpu", default="8", help="allocatable cpu")
    parser.add_argument("--memory", default="32Gi", help="allocatable memory")
    parser.add_argument("--gpus", default="2", help="allocatable nvidia.com/gpu")
    parser.add_argument("--max-grace", type=float, default=30.0, help="cap of grace periods")
    parser.add_argument(
        "--shutdown-grace", type=float, default=5.0, help="grace of pod processes on exit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    kubelet = ProcessKubelet(
        args.kubeconfig,
        args.root,
        node_name=args.node,
        cpu=args.cpu,
        memory=args.memory,
        gpus=args.gpus,
        max_grace=args.max_grace,
        shutdown_grace=args.shutdown_grace,
    ).start()
    stop.wait()
    log.info("stopping")
    kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
