"""The process kubelet (``harness/kubelet.py``) against a real control plane: etcd,
kube-apiserver and kube-controller-manager (``harness/controlplane.py``). The kubelet runs as
its CLI (``python -m harness.kubelet``), as ``scripts/kube up`` starts it; each test has a
namespace of its own."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import pytest
from harness import nodeops, podnames, podrun, podspec
from harness.controlplane import ROOT, ControlPlane, free_port
from harness.gameops import RESTRICTED_SECURITY
from harness.kubelet import pod_log, pod_pid, pods_running
from harness.rawclient import MERGE_PATCH, request_json, wait_for
from kubernetes import watch

NODE = "sparring-node"
T = 30.0  # seconds: a deadline for anything that should take one or two


class Cluster:
    """The control plane, an admin client, and the kubelet as a child process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plane = ControlPlane(root / "kube", with_kubelet=False).start()
        self.client = kubernetes.config.new_client_from_config(
            config_file=str(self.plane.kubeconfig), persist_config=False
        )
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.kubelet_root = root / "kubelet"
        self.kubelet: subprocess.Popen[bytes] | None = None
        self._names = itertools.count()

    def start_kubelet(self) -> None:
        paths = [str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        log = open(self.root / "kubelet.log", "ab")  # noqa: SIM115 - the child owns it
        self.kubelet = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.kubelet",
                "--kubeconfig",
                str(self.plane.kubeconfig),
                "--node",
                NODE,
                "--root",
                str(self.kubelet_root),
                "--gpus",
                "2",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: self._node_ready(), T, message=self.kubelet_log)

    def _node_ready(self) -> bool:
        assert self.kubelet is not None
        if self.kubelet.poll() is not None:
            raise RuntimeError(f"the kubelet exited:\n{self.kubelet_log()}")
        try:
            node = self.get(f"/api/v1/nodes/{NODE}")
        except kubernetes.client.ApiException:
            return False
        taints = node["spec"].get("taints") or []
        ready = [c for c in node["status"].get("conditions") or [] if c["type"] == "Ready"]
        return bool(ready and ready[0]["status"] == "True" and not taints)

    def kubelet_log(self) -> str:
        return (self.root / "kubelet.log").read_text(errors="replace")[-5000:]

    def get(self, path: str) -> Any:
        return request_json(self.client, "GET", path)

    def create(self, ns: str, plural: str, body: dict[str, Any]) -> Any:
        group = {
            "jobs": "apis/batch/v1",
            "deployments": "apis/apps/v1",
            "roles": "apis/rbac.authorization.k8s.io/v1",
            "rolebindings": "apis/rbac.authorization.k8s.io/v1",
        }.get(plural, "api/v1")
        return request_json(self.client, "POST", f"/{group}/namespaces/{ns}/{plural}", body)

    def delete_namespace(self, name: str) -> None:
        request_json(self.client, "DELETE", f"/api/v1/namespaces/{name}")

    def namespace(self, labels: dict[str, str] | None = None) -> str:
        name = f"t{next(self._names)}"
        body = {"metadata": {"name": name, "labels": labels or {}}}
        request_json(self.client, "POST", "/api/v1/namespaces", body)
        # Pods need the namespace's ServiceAccount (ServiceAccount admission) and root CA.
        wait_for(
            lambda: (
                self.get(f"/api/v1/namespaces/{name}/serviceaccounts")["items"]
                and self.get(f"/api/v1/namespaces/{name}/configmaps")["items"]
            ),
            T,
            message=f"ServiceAccount and kube-root-ca.crt in {name}",
        )
        return name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("kubelet"))
    try:
        c.start_kubelet()
        yield c
        # SIGTERM: every pod process is stopped, and the kubelet exits 0.
        assert c.kubelet is not None
        c.kubelet.send_signal(signal.SIGTERM)
        assert c.kubelet.wait(timeout=30) == 0, c.kubelet_log()
        assert pods_running(c.kubelet_root) == []
    finally:
        if c.kubelet is not None and c.kubelet.poll() is None:
            c.kubelet.kill()
        c.plane.stop()


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = cluster.namespace()
    yield name
    cluster.delete_namespace(name)


def pod_manifest(name: str, code: str, restart: str = "Never", **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {"name": "main", "image": "sparring:test", "command": ["python", "-c", code]}
                | container
            ],
        },
    }


def pod(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.get(f"/api/v1/namespaces/{ns}/pods/{name}"))


def wait_phase(cluster: Cluster, ns: str, name: str, *phases: str, timeout: float = T) -> Any:
    def done() -> dict[str, Any] | None:
        p = pod(cluster, ns, name)
        phase = p["status"].get("phase")
        if phase in ("Succeeded", "Failed") and phase not in phases:
            raise AssertionError(f"{ns}/{name} {phase}: {p['status']}\n{why()}")
        return p if phase in phases else None

    def why() -> str:
        return f"{ns}/{name} in {phases}: {pod(cluster, ns, name)['status']}\n" + pod_log(
            cluster.kubelet_root, ns, name
        )

    return wait_for(done, timeout, interval=0.1, message=why)


def container_state(p: dict[str, Any]) -> dict[str, Any]:
    return dict(p["status"]["containerStatuses"][0]["state"])


def condition(p: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in p["status"].get("conditions") or [] if c["type"] == ctype), {})


def gone(cluster: Cluster, ns: str, name: str) -> bool:
    try:
        pod(cluster, ns, name)
    except kubernetes.client.ApiException as e:
        return e.status == 404
    return False


# -- runtime ------------------------------------------------------------------------------------
def test_env_volumes_and_status(cluster: Cluster, ns: str) -> None:
    cluster.create(ns, "secrets", {"metadata": {"name": "s"}, "stringData": {"k": "sv"}})
    cluster.create(
        ns, "configmaps", {"metadata": {"name": "cm"}, "data": {"k": "cv", "file.txt": "from-file"}}
    )
    code = (
        "import os, sys; print(os.environ['S'], os.environ['C'], os.environ['ME'], os.environ['X'],"
        " open(sys.argv[1]).read(), os.environ['KUBERNETES_SERVICE_HOST'])"
    )
    manifest = pod_manifest(
        "env",
        code,
        env=[
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "X", "value": "$(ME)-x"},
            {
                "name": "O",
                "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
            },
        ],
        volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg"}],
        # Rewritten to the volume's local folder (a path inside the program would not be).
        args=["/etc/cfg/renamed.txt"],
    )
    manifest["spec"]["volumes"] = [
        {
            "name": "cfg",
            "configMap": {"name": "cm", "items": [{"key": "file.txt", "path": "renamed.txt"}]},
        }
    ]
    cluster.create(ns, "pods", manifest)
    p = wait_phase(cluster, ns, "env", "Succeeded")
    assert pod_log(cluster.kubelet_root, ns, "env") == "sv cv env env-x from-file 127.0.0.1\n"
    assert p["spec"]["nodeName"] == NODE
    assert p["status"]["podIP"] == p["status"]["hostIP"] == "127.0.0.1"
    assert condition(p, "PodScheduled")["status"] == "True"
    assert condition(p, "Ready")["reason"] == "PodCompleted"
    terminated = container_state(p)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert terminated["startedAt"] and terminated["finishedAt"]


def test_failure_exit_code_and_termination_message(cluster: Cluster, ns: str) -> None:
    # The message file's path is rewritten where it is an argument or an environment value
    # (not inside a program: nothing is mounted at /dev/termination-log).
    by_arg = "import sys; open(sys.argv[1], 'w').write('via arg'); sys.exit(4)"
    cluster.create(ns, "pods", pod_manifest("arg", by_arg, args=["/dev/termination-log"]))
    by_env = "import os; open(os.environ['M'], 'w').write('via env'); raise SystemExit(3)"
    cluster.create(
        ns,
        "pods",
        pod_manifest(
            "env",
            by_env,
            terminationMessagePath="/msg/out",
            env=[{"name": "M", "value": "/msg/out"}],
        ),
    )
    crash = "import sys; print('line 1', flush=True); sys.exit('boom at the end')"
    cluster.create(
        ns, "pods", pod_manifest("logs", crash, terminationMessagePolicy="FallbackToLogsOnError")
    )
    terminated = container_state(wait_phase(cluster, ns, "arg", "Failed"))["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (
        4,
        "Error",
        "via arg",
    )
    terminated = container_state(wait_phase(cluster, ns, "env", "Failed"))["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (3, "via env")
    terminated = container_state(wait_phase(cluster, ns, "logs", "Failed"))["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (1, "line 1\nboom at the end\n")


def test_job_retries_through_the_job_controller(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    code = (
        "import os, sys; m = sys.argv[1]\n"
        "if not os.path.exists(m): open(m, 'w').close(); sys.exit(2)\n"
        "print('second try')"
    )
    job = {
        "metadata": {"name": "retry"},
        "spec": {
            "backoffLimit": 1,
            "template": pod_manifest("", code, args=[str(marker)]) | {"metadata": {}},
        },
    }
    cluster.create(ns, "jobs", job)

    def complete() -> dict[str, Any] | None:
        j = cluster.get(f"/apis/batch/v1/namespaces/{ns}/jobs/retry")
        conditions = {c["type"] for c in j["status"].get("conditions") or []}
        return j if "Complete" in conditions else None

    # The Job controller waits ~10 s (its pod failure backoff) before the second pod.
    done = wait_for(complete, 60, interval=0.2, message="the Job to complete")
    assert (done["status"]["failed"], done["status"]["succeeded"]) == (1, 1)
    pods = cluster.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name=retry")["items"]
    phases = sorted(p["status"]["phase"] for p in pods)
    assert phases == ["Failed", "Succeeded"]
    winner = next(p for p in pods if p["status"]["phase"] == "Succeeded")
    assert pod_log(cluster.kubelet_root, ns, winner["metadata"]["name"]) == "second try\n"


def test_restart_policy_always_restarts_in_place(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    code = (
        "import os, sys, time; m = sys.argv[1]\n"
        "if not os.path.exists(m): open(m, 'w').close(); sys.exit(7)\n"
        "time.sleep(300)"
    )
    deployment = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": pod_manifest("", code, "Always", args=[str(tmp_path / "m")])["spec"],
            },
        },
    }
    cluster.create(ns, "deployments", deployment)

    def restarted_and_ready() -> dict[str, Any] | None:
        pods = cluster.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        statuses = [s for p in pods for s in p["status"].get("containerStatuses") or []]
        return (
            pods[0] if [(s["restartCount"], s["ready"]) for s in statuses] == [(1, True)] else None
        )

    # (Ready once already, for a moment, before the first process exited.)
    p = wait_for(restarted_and_ready, T, interval=0.1, message="a restarted, ready pod")
    assert p["status"]["phase"] == "Running"
    status = p["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 7
    assert condition(p, "Ready")["status"] == "True"

    def available() -> bool:
        d = cluster.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web")
        return bool(d["status"].get("availableReplicas") == 1)

    wait_for(available, T, interval=0.2, message="the Deployment to be available")


def test_signal_kill_is_exit_137(cluster: Cluster, ns: str) -> None:
    cluster.create(ns, "pods", pod_manifest("sleep", "import time; time.sleep(300)"))
    wait_phase(cluster, ns, "sleep", "Running")
    pid = wait_for(lambda: pod_pid(cluster.kubelet_root, ns, "sleep"), T)
    assert (ns, "sleep") in pods_running(cluster.kubelet_root)
    os.killpg(pid, signal.SIGKILL)
    terminated = container_state(wait_phase(cluster, ns, "sleep", "Failed"))["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "Error")
    assert pod_pid(cluster.kubelet_root, ns, "sleep") is None


def test_missing_secret_waits_then_runs(cluster: Cluster, ns: str) -> None:
    env = [{"name": "V", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}]
    cluster.create(ns, "pods", pod_manifest("late", "import os; print(os.environ['V'])", env=env))

    def waiting() -> dict[str, Any] | None:
        statuses = pod(cluster, ns, "late")["status"].get("containerStatuses") or [{}]
        return (statuses[0].get("state") or {}).get("waiting")

    state = wait_for(waiting, T, message="a waiting container")
    assert state == {"reason": "CreateContainerConfigError", "message": 'secret "late" not found'}
    assert pod(cluster, ns, "late")["status"]["phase"] == "Pending"
    cluster.create(ns, "secrets", {"metadata": {"name": "late"}, "stringData": {"k": "here"}})
    wait_phase(cluster, ns, "late", "Succeeded")
    assert pod_log(cluster.kubelet_root, ns, "late") == "here\n"


def test_restricted_pod_security_runs(cluster: Cluster) -> None:
    ns = cluster.namespace({"pod-security.kubernetes.io/enforce": "restricted"})
    manifest = pod_manifest(
        "strict",
        "import os; print('uid', os.getuid())",
        securityContext=RESTRICTED_SECURITY,
    )
    cluster.create(ns, "pods", manifest)
    wait_phase(cluster, ns, "strict", "Succeeded")
    # No user switching: the process ran as the kubelet's user.
    assert pod_log(cluster.kubelet_root, ns, "strict") == f"uid {os.getuid()}\n"
    with pytest.raises(kubernetes.client.ApiException, match="violates PodSecurity"):
        cluster.create(ns, "pods", pod_manifest("lax", "pass"))
    cluster.delete_namespace(ns)


# -- in-cluster credentials -----------------------------------------------------------------------
LIST_CONFIGMAPS = (
    "import sys, kubernetes; kubernetes.config.load_incluster_config(); "
    "print(kubernetes.client.CoreV1Api().list_namespaced_config_map(sys.argv[1]).items[0]"
    ".metadata.name)"
)


def test_in_cluster_service_account_token(cluster: Cluster, ns: str) -> None:
    if not podrun.can_bind_mount():
        pytest.skip("no private mount namespaces here (unshare -m needs root)")
    for account in ("reader", "nobody"):
        cluster.create(ns, "serviceaccounts", {"metadata": {"name": account}})
    cluster.create(
        ns,
        "roles",
        {
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
    )
    cluster.create(
        ns,
        "rolebindings",
        {
            "metadata": {"name": "cm-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "cm-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    for name, account in (("allowed", "reader"), ("denied", "nobody")):
        manifest = pod_manifest(name, LIST_CONFIGMAPS, args=[ns])
        manifest["spec"]["serviceAccountName"] = account
        cluster.create(ns, "pods", manifest)
    allowed = wait_phase(cluster, ns, "allowed", "Succeeded", "Failed")
    assert allowed["status"]["phase"] == "Succeeded", pod_log(cluster.kubelet_root, ns, "allowed")
    assert pod_log(cluster.kubelet_root, ns, "allowed") == "kube-root-ca.crt\n"
    # The ServiceAccount admission plugin's projected volume, as the kubelet got it.
    volumes = [v["name"] for v in allowed["spec"]["volumes"]]
    assert any(v.startswith("kube-api-access-") for v in volumes)
    wait_phase(cluster, ns, "denied", "Failed")
    log = pod_log(cluster.kubelet_root, ns, "denied")
    assert "(403)" in log
    assert f"system:serviceaccount:{ns}:nobody" in log
    assert "cannot list resource" in log


# -- scheduling -------------------------------------------------------------------------------
def unschedulable(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    def marked() -> dict[str, Any] | None:
        cond = condition(pod(cluster, ns, name), "PodScheduled")
        return cond if cond.get("status") == "False" else None

    cond = wait_for(marked, T, message=f"{name} to be marked unschedulable")
    assert cond["reason"] == "Unschedulable"
    assert pod(cluster, ns, name)["spec"].get("nodeName") is None
    return cond


def test_insufficient_gpus_stay_pending(cluster: Cluster, ns: str) -> None:
    manifest = pod_manifest("big", "pass", resources={"limits": {"nvidia.com/gpu": "3"}})
    cluster.create(ns, "pods", manifest)
    assert unschedulable(cluster, ns, "big")["message"] == (
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are "
        "available: 1 No preemption victims found for incoming pod."
    )
    assert pod(cluster, ns, "big")["status"]["phase"] == "Pending"


def test_taints_and_node_selector(cluster: Cluster, ns: str) -> None:
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    path = f"/api/v1/nodes/{NODE}"
    request_json(cluster.client, "PATCH", path, {"spec": {"taints": [taint]}}, MERGE_PATCH)
    try:
        cluster.create(ns, "pods", pod_manifest("plain", "print('plain')"))
        tolerant = pod_manifest("tolerant", "print('tolerant')")
        tolerant["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Exists"}]
        cluster.create(ns, "pods", tolerant)
        picky = pod_manifest("picky", "pass")
        picky["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "elsewhere"}
        picky["spec"]["tolerations"] = tolerant["spec"]["tolerations"]
        cluster.create(ns, "pods", picky)
        assert unschedulable(cluster, ns, "plain")["message"] == (
            "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}. "
            "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        )
        assert (
            "1 node(s) didn't match Pod's node affinity/selector."
            in (unschedulable(cluster, ns, "picky")["message"])
        )
        wait_phase(cluster, ns, "tolerant", "Succeeded")
    finally:
        request_json(cluster.client, "PATCH", path, {"spec": {"taints": None}}, MERGE_PATCH)
    # Without the taint the waiting pod is scheduled.
    wait_phase(cluster, ns, "plain", "Succeeded")
    assert condition(pod(cluster, ns, "plain"), "PodScheduled")["status"] == "True"


# -- deletion ------------------------------------------------------------------------------------
TRAP = (
    "import signal, sys, time\n"
    "def stop(*_): open(sys.argv[1], 'w').write('TERM'); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('up', flush=True)\n"
    "time.sleep(300)"
)


def _trapping(cluster: Cluster, ns: str, name: str, marker: Path) -> None:
    cluster.create(ns, "pods", pod_manifest(name, TRAP, args=[str(marker)]))
    wait_phase(cluster, ns, name, "Running")
    wait_for(lambda: pod_log(cluster.kubelet_root, ns, name) == "up\n", T, message="the trap")


def test_delete_sends_sigterm_and_finalizes(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    _trapping(cluster, ns, "victim", tmp_path / "term")
    request_json(cluster.client, "DELETE", f"/api/v1/namespaces/{ns}/pods/victim")
    wait_for(lambda: gone(cluster, ns, "victim"), T, message="the pod to disappear")
    assert (tmp_path / "term").read_text() == "TERM"
    assert pod_pid(cluster.kubelet_root, ns, "victim") is None


def test_eviction_adds_disruption_target(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    _trapping(cluster, ns, "evicted", tmp_path / "term")
    # From the version before the eviction: the stream's request only goes out on next().
    version = cluster.get(f"/api/v1/namespaces/{ns}/pods")["metadata"]["resourceVersion"]
    events = watch.Watch().stream(
        cluster.core.list_namespaced_pod,
        ns,
        field_selector="metadata.name=evicted",
        resource_version=version,
        timeout_seconds=int(T),
    )
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evicted"}}
    cluster.create(ns, "pods/evicted/eviction", eviction)
    seen: list[dict[str, Any]] = []
    for event in events:
        seen.append(event["raw_object"])
        if event["type"] == "DELETED":
            break
    assert seen and seen[-1]["status"]["phase"] == "Succeeded"  # it exited 0 on SIGTERM
    disruption = condition(seen[-1], "DisruptionTarget")
    assert (disruption["status"], disruption["reason"]) == ("True", "EvictionByEvictionAPI")
    assert (tmp_path / "term").read_text() == "TERM"


def test_kubelet_restart_fails_lost_pods(cluster: Cluster, ns: str) -> None:
    """A kubelet killed outright leaves its pods' processes behind; the next one kills them
    and reports the containers as lost (137, ContainerStatusUnknown), as a real kubelet."""
    cluster.create(ns, "pods", pod_manifest("orphan", "import time; time.sleep(300)"))
    wait_phase(cluster, ns, "orphan", "Running")
    pid = wait_for(lambda: pod_pid(cluster.kubelet_root, ns, "orphan"), T)
    assert cluster.kubelet is not None
    cluster.kubelet.kill()
    cluster.kubelet.wait()
    assert pod_pid(cluster.kubelet_root, ns, "orphan") == pid  # still running, unattended
    cluster.start_kubelet()
    terminated = container_state(wait_phase(cluster, ns, "orphan", "Failed"))["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "ContainerStatusUnknown")
    wait_for(lambda: pod_pid(cluster.kubelet_root, ns, "orphan") is None, T, message="a kill")


def test_indexed_job_pods_find_each_other_by_their_dns_names(cluster: Cluster, ns: str) -> None:
    """An Indexed Job's pods on a headless Service (the shape of a multi-node phase): pod 1
    reaches pod 0 as JOB-0.JOB.NS.svc, a name that resolves only once the Service exists (it is
    created after the Job here, as the operator does) and never on the node itself."""
    port = free_port()
    code = (
        "import os, socket, sys, time\n"
        "port, name = int(sys.argv[1]), sys.argv[2]\n"
        "if os.environ['JOB_COMPLETION_INDEX'] == '0':\n"
        "    server = socket.create_server(('0.0.0.0', port))\n"
        "    peer, _ = server.accept(); print(peer.recv(100).decode(), flush=True)\n"
        "    sys.exit(0)\n"
        "deadline = time.time() + 30\n"
        "while True:  # as torchrun's store client retries until the record appears\n"
        "    try:\n"
        "        s = socket.create_connection((name, port), timeout=5); break\n"
        "    except OSError:\n"
        "        if time.time() > deadline: raise\n"
        "        time.sleep(0.1)\n"
        "s.sendall(b'hello from pod 1'); print('sent', flush=True)\n"
    )
    pod0 = f"grp-0.grp.{ns}.svc"
    template = pod_manifest("", code, args=[str(port), pod0])
    template["spec"]["subdomain"] = "grp"
    job = {
        "metadata": {"name": "grp"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": template | {"metadata": {}},
        },
    }
    cluster.create(ns, "jobs", job)
    pods = wait_for(
        lambda: (
            cluster.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name=grp")["items"] or None
        ),
        T,
    )
    assert all(p["spec"]["subdomain"] == "grp" for p in pods)
    with pytest.raises(OSError):  # the node's own resolver does not know pod names
        socket.getaddrinfo(pod0, port)
    service = {"metadata": {"name": "grp"},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                        "selector": {"job-name": "grp"}, "ports": [{"port": port}]}}  # fmt: skip
    cluster.create(ns, "services", service)

    def complete() -> dict[str, Any] | None:
        j = cluster.get(f"/apis/batch/v1/namespaces/{ns}/jobs/grp")
        types = {c["type"] for c in j["status"].get("conditions") or []}
        assert "Failed" not in types, j["status"]
        return j if "Complete" in types else None

    wait_for(complete, 60, interval=0.2, message=lambda: str(cluster.get(
        f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name=grp")))  # fmt: skip
    logs = {
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: pod_log(
            cluster.kubelet_root, ns, p["metadata"]["name"]
        )
        for p in cluster.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name=grp")["items"]
    }
    assert logs == {"0": "hello from pod 1\n", "1": "sent\n"}


# -- pure parts, no cluster -------------------------------------------------------------------
def test_filters_and_messages() -> None:
    node: dict[str, Any] = {
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "pool": "a"}},
        "spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]},
        "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"}},
    }

    def spec(**extra: Any) -> dict[str, Any]:
        return {"spec": {"containers": [{"name": "c"}], **extra}}

    big = {"requests": {"cpu": "1500m"}, "limits": {"memory": "2Gi", "example.com/x": "1"}}
    message = nodeops.unschedulable(spec(containers=[{"resources": big}]), node, [])
    assert message is not None and message.startswith(
        "0/1 nodes are available: 1 Insufficient example.com/x, 1 Insufficient memory."
    )
    half = spec(containers=[{"resources": {"limits": {"cpu": "1"}}}])
    assert nodeops.unschedulable(half, node, [half]) is None
    assert "1 Insufficient cpu." in (nodeops.unschedulable(half, node, [half, half]) or "")
    # The largest init container counts when it is more than the containers.
    init = spec(initContainers=[{"resources": {"requests": {"cpu": "3"}}}])
    assert nodeops.pod_requests(init["spec"])["cpu"] == 3
    affinity: dict[str, Any] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]},
                ]
            }
        }
    }
    assert nodeops.unschedulable(spec(affinity=affinity), node, []) is None
    affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ].pop()
    assert "didn't match Pod's node affinity/selector" in (
        nodeops.unschedulable(spec(affinity=affinity), node, []) or ""
    )
    node["spec"]["taints"] = [{"key": "gpu", "effect": "NoExecute"}]
    tolerate_all = spec(tolerations=[{"operator": "Exists"}])
    assert nodeops.unschedulable(tolerate_all, node, []) is None
    wrong_effect = spec(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert "untolerated taint {gpu: }" in (nodeops.unschedulable(wrong_effect, node, []) or "")


class FakeSources:
    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects

    def read(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, name))

    def token(self, pod: dict[str, Any], audience: str | None, expiration: int) -> str:
        return f"token-for-{pod['metadata']['name']}-{audience}-{expiration}"


def test_only_headless_services_publish_their_pods_names() -> None:
    def member(name: str, subdomain: str, ns: str = "a", phase: str = "Running") -> Any:
        spec = {"hostname": name, "subdomain": subdomain}
        return {"metadata": {"name": name, "namespace": ns}, "spec": spec,
                "status": {"phase": phase}}  # fmt: skip

    def service(name: str, ns: str = "a", cluster_ip: str = "None") -> Any:
        return {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": cluster_ip}}

    pods = [member("j-0", "j"), member("j-1", "j"), member("j-2", "j", phase="Failed"),
            member("k-0", "k"), member("x-0", "x"), member("j-0", "j", ns="b")]  # fmt: skip
    services = [service("j"), service("k", cluster_ip="10.0.0.1"), service("x", ns="b")]
    published = ["j-0.j.a.svc.cluster.local", "j-0.j.a.svc", "j-1.j.a.svc.cluster.local",
                 "j-1.j.a.svc"]  # fmt: skip
    assert podnames.records(pods, services) == {"a": published}
    hosts = podnames.hosts_text(pods[1], podnames.records(pods, services)["a"], "127.0.0.1 node\n")
    assert hosts.splitlines() == [
        "127.0.0.1 node",
        "# process kubelet: the pod's names and its cluster DNS records",
        "127.0.0.1\tj-1.j.a.svc.cluster.local j-1.j.a.svc j-1",
        "127.0.0.1\tj-0.j.a.svc",
        "127.0.0.1\tj-0.j.a.svc.cluster.local",
    ]


def test_podspec_projected_downward_and_resource_refs(tmp_path: Path) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"a": "1"}},
        "spec": {
            "nodeName": NODE,
            "containers": [
                {
                    "name": "c",
                    "command": ["python", "$(D)/token"],
                    "resources": {"requests": {"memory": "64Mi"}},
                    "env": [
                        {"name": "D", "value": "/var/run/secrets/kubernetes.io/serviceaccount"},
                        {
                            "name": "MEM",
                            "valueFrom": {
                                "resourceFieldRef": {
                                    "resource": "requests.memory",
                                    "divisor": "1Mi",
                                }
                            },
                        },
                        {
                            "name": "CPU",
                            "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}},
                        },
                        {"name": "P_", "value": "x"},
                    ],
                    "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "P_"}],
                    "volumeMounts": [
                        {
                            "name": "sa",
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        },
                        {"name": "info", "mountPath": "/etc/info", "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "sa",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}},
                            {"configMap": {"name": "cm", "items": [{"key": "k", "path": "k.txt"}]}},
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {"fieldPath": "metadata.namespace"},
                                        }
                                    ]
                                }
                            },
                        ]
                    },
                },
                {
                    "name": "info",
                    "downwardAPI": {
                        "defaultMode": 0o600,
                        "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}],
                    },
                },
            ],
        },
    }
    sources = FakeSources({("configmaps", "cm"): {"data": {"k": "v"}}})
    node = podspec.Node(NODE, {"cpu": "8"})
    prepared = podspec.prepare(pod, tmp_path / "pod", tmp_path / "shared", sources, {}, node)
    sa = tmp_path / "pod" / "volumes" / "sa"
    assert prepared.argv == [sys.executable, str(sa / "token")]
    assert (sa / "token").read_text() == "token-for-p-None-600"
    assert (sa / "k.txt").read_text() == "v" and (sa / "namespace").read_text() == "n"
    info = tmp_path / "pod" / "volumes" / "info" / "labels"
    assert info.read_text() == 'a="1"' and info.stat().st_mode & 0o777 == 0o600
    assert (prepared.env["MEM"], prepared.env["CPU"], prepared.env["P_k"]) == ("64", "8", "v")
    assert prepared.binds == {"/var/run/secrets/kubernetes.io/serviceaccount": (sa, False)}
    del sources.objects[("configmaps", "cm")]
    with pytest.raises(podspec.NotReady, match='configmap "cm" not found'):
        podspec.prepare(pod, tmp_path / "pod", tmp_path / "shared", sources, {}, node)
