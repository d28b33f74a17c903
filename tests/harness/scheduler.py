"""The scheduler part of the process kubelet: binds the pending pods of ``default-scheduler``
that fit the one node (``nodeops.unschedulable``), oldest first, through the binding
subresource; marks the others ``PodScheduled=False``/Unschedulable with the real scheduler's
message (written only when it changes). Every pass sees every pending pod again, so a pod is
bound as soon as a taint goes or resources are freed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes.client

from .nodeops import unschedulable
from .podrun import stamp
from .podsync import TERMINAL


class Scheduler:
    def __init__(
        self,
        node_name: str,
        call: Callable[..., Any],
        write_status: Callable[[dict[str, Any], dict[str, Any]], None],
        on_error: Callable[[str, Exception], None],
    ) -> None:
        self.node_name, self.call, self.write_status, self.on_error = (
            node_name,
            call,
            write_status,
            on_error,
        )
        self._assumed: dict[str, dict[str, Any]] = {}  # bound, not yet seen bound in the cache
        self._unschedulable: dict[str, str] = {}  # uid -> the message last written

    def schedule(self, pods: list[dict[str, Any]], node: dict[str, Any]) -> None:
        seen = {p["metadata"]["uid"]: p for p in pods}
        for uid in list(self._assumed):
            if uid not in seen or seen[uid]["spec"].get("nodeName"):
                del self._assumed[uid]
        bound = [
            p
            for p in pods
            if p["spec"].get("nodeName") == self.node_name
            and (p.get("status") or {}).get("phase") not in TERMINAL
        ]
        bound += self._assumed.values()
        pending = [
            p
            for p in pods
            if not p["spec"].get("nodeName")
            and p["spec"].get("schedulerName", "default-scheduler") == "default-scheduler"
            and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["uid"] not in self._assumed
        ]
        fresh = False
        for pod in sorted(
            pending, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"])
        ):
            message = unschedulable(pod, node, bound)
            if message is None and not fresh:  # the cache may lag a taint just set: check
                node, fresh = self.call("GET", f"/api/v1/nodes/{self.node_name}"), True
                message = unschedulable(pod, node, bound)
            try:
                if message is None:
                    self._bind(pod)
                    bound.append(pod)
                else:
                    self._mark_unschedulable(pod, message)
            except Exception as e:
                self.on_error(
                    f"scheduling {pod['metadata']['namespace']}/{pod['metadata']['name']}", e
                )

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.call(
                "POST",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                binding,
            )
        except kubernetes.client.ApiException as e:
            if e.status not in (404, 409):  # gone, or bound meanwhile
                raise
        self._assumed[meta["uid"]] = pod
        self._unschedulable.pop(meta["uid"], None)

    def _mark_unschedulable(self, pod: dict[str, Any], message: str) -> None:
        uid = pod["metadata"]["uid"]
        current: dict[str, Any] = next(
            (
                c
                for c in (pod.get("status") or {}).get("conditions") or []
                if c["type"] == "PodScheduled"
            ),
            {},
        )
        if self._unschedulable.get(uid) == message or (
            current.get("status") == "False" and current.get("message") == message
        ):
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": stamp(),
        }
        self.write_status(pod, {"conditions": [condition]})
        self._unschedulable[uid] = message
