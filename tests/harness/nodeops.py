"""The Node and the scheduler of the process kubelet.

:class:`NodeAgent` registers the Node (labels, capacity = allocatable, Ready, node info),
keeps the Ready heartbeat and the node Lease fresh, and removes the
``node.kubernetes.io/not-ready`` taint: the API server's TaintNodesByCondition admission puts
it on every new Node, and on a cluster the node lifecycle controller takes it off once the node
is Ready, but the test control plane does not run that controller (it would also taint the
node on its own schedule). Taints anyone else sets stay.

:func:`unschedulable` is the default scheduler's filter for one node, in its plugin order
(NodeUnschedulable, TaintToleration, NodeAffinity, NodeResourcesFit; the first plugin that
fails decides) and with its messages. Not emulated: pod (anti-)affinity, topology spread,
ports, volumes, preemption, priorities (pods are bound oldest first).
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from kubernetes.client import ApiException
from kubernetes.utils import parse_quantity

GPU = "nvidia.com/gpu"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
LEASE_SECONDS = 40
MERGE = "application/merge-patch+json"
Call = Callable[..., Any]  # (method, path, body=None, content_type=None) -> parsed JSON


def _now(micro: bool = False) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


class NodeAgent:
    def __init__(self, call: Call, name: str, resources: dict[str, str], version: str) -> None:
        self.call, self.name, self.version = call, name, version
        self.resources = {"pods": "110", "ephemeral-storage": "100Gi", **resources}
        self.path = f"/api/v1/nodes/{name}"
        self.since = _now()
        self._lease_exists = False

    def register(self) -> dict[str, Any]:
        """Create the Node (or take over an existing one, keeping its spec), then report it."""
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        try:
            self.call(
                "POST",
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": self.name, "labels": labels},
                },
            )
        except ApiException as e:
            if e.status != 409:
                raise
            self.call("PATCH", self.path, {"metadata": {"labels": labels}}, MERGE)
        return self.heartbeat()

    def heartbeat(self) -> dict[str, Any]:
        """Report Ready (and the rest of the status), renew the Lease, drop the not-ready
        taint; returns the Node."""
        node = self.call("PATCH", self.path + "/status", {"status": self._status()}, MERGE)
        node = self._untaint(node)
        self._renew_lease(node["metadata"]["uid"])
        return dict(node)

    def _status(self) -> dict[str, Any]:
        now = _now()

        def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self.since,
            }

        machine = uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex
        return {
            "capacity": self.resources,
            "allocatable": self.resources,
            "conditions": [
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": machine,
                "systemUUID": machine,
                "bootID": machine,
                "kernelVersion": os.uname().release,
                "osImage": "sparring process kubelet",
                "containerRuntimeVersion": "process://1.0",
                "kubeletVersion": f"v{self.version}",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _untaint(self, node: dict[str, Any]) -> dict[str, Any]:
        taints = (node.get("spec") or {}).get("taints") or []
        kept = [t for t in taints if t.get("key") != NOT_READY_TAINT]
        if kept == taints:
            return node
        # resourceVersion: a taint someone adds meanwhile makes this fail (retried next beat)
        # instead of being overwritten.
        patch = {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}}
        patch["spec"] = {"taints": kept or None}
        return dict(self.call("PATCH", self.path, patch, MERGE))

    def _renew_lease(self, node_uid: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec: dict[str, Any] = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _now(micro=True),
        }
        if self._lease_exists:
            self.call("PATCH", path, {"spec": spec}, MERGE)
            return
        owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node_uid}
        lease = {"metadata": {"name": self.name, "ownerReferences": [owner]}, "spec": spec}
        try:
            self.call("POST", path.rsplit("/", 1)[0], lease)
        except ApiException as e:
            if e.status != 409:
                raise
            self.call("PATCH", path, {"spec": spec}, MERGE)
        self._lease_exists = True


# -- scheduling -------------------------------------------------------------------------------
def _amounts(raw: dict[str, Any] | None) -> dict[str, Decimal]:
    return {k: parse_quantity(v) for k, v in (raw or {}).items()}


def _add(total: dict[str, Decimal], more: dict[str, Decimal]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, Decimal(0)) + v


def container_requests(container: dict[str, Any]) -> dict[str, Decimal]:
    """Requests; a limit with no request counts as the request (the API server's default)."""
    resources = container.get("resources") or {}
    return {**_amounts(resources.get("limits")), **_amounts(resources.get("requests"))}


def pod_requests(spec: dict[str, Any]) -> dict[str, Decimal]:
    """What the scheduler reserves: the containers and sidecars, or the largest init
    container (with the sidecars started before it) when that is more; plus the overhead."""
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        _add(total, container_requests(container))
    sidecars: dict[str, Decimal] = {}
    peak: dict[str, Decimal] = {}
    for init in spec.get("initContainers") or []:
        requests = container_requests(init)
        if init.get("restartPolicy") == "Always":  # a sidecar: runs next to the containers
            _add(sidecars, requests)
            _add(total, requests)
            continue
        during = dict(sidecars)
        _add(during, requests)
        for k, v in during.items():
            peak[k] = max(peak.get(k, Decimal(0)), v)
    total = {k: max(total.get(k, Decimal(0)), peak.get(k, Decimal(0))) for k in {*total, *peak}}
    _add(total, _amounts(spec.get("overhead")))
    return total


def _tolerated(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def _requirement(req: dict[str, Any], values: dict[str, str]) -> bool:
    key, op, wanted = req["key"], req["operator"], req.get("values") or []
    if op == "Exists":
        return key in values
    if op == "DoesNotExist":
        return key not in values
    if op == "In":
        return key in values and values[key] in wanted
    if op == "NotIn":
        return key not in values or values[key] not in wanted
    if key not in values:
        return False
    try:  # Gt, Lt: integers
        have, limit = int(values[key]), int(wanted[0])
    except (ValueError, IndexError):
        return False
    return have > limit if op == "Gt" else have < limit


def matches_affinity(spec: dict[str, Any], node: dict[str, Any]) -> bool:
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not affinity:
        return True
    fields = {"metadata.name": node["metadata"]["name"]}
    return any(
        all(_requirement(r, labels) for r in term.get("matchExpressions") or [])
        and all(_requirement(r, fields) for r in term.get("matchFields") or [])
        for term in affinity.get("nodeSelectorTerms") or []
    )


def unschedulable(
    pod: dict[str, Any], node: dict[str, Any], bound: list[dict[str, Any]]
) -> str | None:
    """None when `pod` fits `node` next to the `bound` pods (not finished); else the message
    the default scheduler writes into the PodScheduled condition."""
    spec = pod["spec"]
    tolerations = spec.get("tolerations") or []
    reasons: list[str] = []
    helpful = False  # preemption could help (resources), or not (taints, affinity)
    taints = [
        t
        for t in (node.get("spec") or {}).get("taints") or []
        if t.get("effect") != "PreferNoSchedule"
    ]
    cordon = {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}
    if (node.get("spec") or {}).get("unschedulable") and not _tolerated(cordon, tolerations):
        reasons.append("node(s) were unschedulable")
    elif untolerated := next((t for t in taints if not _tolerated(t, tolerations)), None):
        key, value = untolerated["key"], untolerated.get("value", "")
        reasons.append(f"node(s) had untolerated taint {{{key}: {value}}}")
    elif not matches_affinity(spec, node):
        reasons.append("node(s) didn't match Pod's node affinity/selector")
    else:
        allocatable = _amounts((node.get("status") or {}).get("allocatable"))
        used: dict[str, Decimal] = {}
        for other in bound:
            _add(used, pod_requests(other["spec"]))
        if len(bound) + 1 > allocatable.get("pods", Decimal(110)):
            reasons.append("Too many pods")
        for resource, amount in pod_requests(spec).items():
            if amount > 0 and used.get(resource, Decimal(0)) + amount > allocatable.get(
                resource, Decimal(0)
            ):
                reasons.append(f"Insufficient {resource}")
        helpful = True
    if not reasons:
        return None
    preemption = (
        "No preemption victims found for incoming pod"
        if helpful
        else "Preemption is not helpful for scheduling"
    )
    found = ", ".join(sorted(f"1 {r}" for r in reasons))
    return f"0/1 nodes are available: {found}. preemption: 0/1 nodes are available: 1 {preemption}."
