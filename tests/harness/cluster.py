"""One test's view of the shared control plane: a namespace of its own, admin clients, the
API server's audit log as the request log, and a fault proxy for the operator's traffic.

:class:`Kube` keeps the small surface the suites used on the old stand-in (``client``,
``kubeconfig``, ``list``, ``get``, ``requests``, ``fail_next``, ``drop_watches``), now backed by
the real API server: ``requests`` are what the fault proxy saw of the operator's calls, and
:meth:`Kube.audit` reads what the API server itself authorized and answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import urllib.parse
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.rest import ApiException

from .controlplane import ControlPlane
from .faultproxy import FaultProxy, ProxyFault


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """One request as the API server's audit log has it (stage ResponseComplete; for a watch,
    ResponseStarted)."""

    user: str
    groups: tuple[str, ...]
    user_agent: str
    verb: str  # the RBAC verb: get, list, watch, create, update, patch, delete, ...
    api_group: str
    resource: str  # "jobs", "adversarialgames/status", ...
    namespace: str
    name: str
    code: int
    uri: str
    received: float  # requestReceivedTimestamp, epoch seconds (microsecond resolution)
    answered: float  # stageTimestamp of ResponseComplete (ResponseStarted for a watch)

    @property
    def permission(self) -> tuple[str, str, str]:
        return (self.api_group, self.resource, self.verb)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path, user_name: str | None = None) -> list[AuditRecord]:
    """Requests of the audit log, optionally of one user: finished ones (ResponseComplete), and
    watches once started (ResponseStarted), since a watch completes only when it ends, and a
    killed client's never may."""
    records = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.endswith("\n"):
                break  # the line being written
            event = json.loads(line)
            stage, code = event.get("stage"), (event.get("responseStatus") or {}).get("code", 0)
            # A refused watch never starts: its one record is ResponseComplete.
            started_watch = event.get("verb") == "watch" and int(code) < 400
            if stage != ("ResponseStarted" if started_watch else "ResponseComplete"):
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            user = event.get("user") or {}
            if user_name is not None and user.get("username") != user_name:
                continue
            records.append(
                AuditRecord(
                    user=user.get("username", ""),
                    groups=tuple(user.get("groups") or ()),
                    user_agent=event.get("userAgent", ""),
                    verb=event.get("verb", ""),
                    api_group=ref.get("apiGroup", ""),
                    resource=resource,
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                    uri=event.get("requestURI", ""),
                    received=_epoch(event["requestReceivedTimestamp"]),
                    answered=_epoch(event["stageTimestamp"]),
                )
            )
    return records


def _split_path(path: str) -> tuple[str, str, str]:
    """ "batch/v1/jobs" -> ("batch", "v1", "jobs"); "v1/events" -> ("", "v1", "events")."""
    parts = path.strip("/").split("/")
    return ("", parts[0], parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])


class Kube:
    def __init__(self, plane: ControlPlane, namespace: str, workdir: Path) -> None:
        self.plane, self.namespace, self.workdir = plane, namespace, workdir
        self.kubeconfig = plane.kubeconfig
        self.client = self.new_client("sparring-tests")
        self.proxy: FaultProxy | None = None

    def new_client(self, user_agent: str = "sparring-tests") -> kubernetes.client.ApiClient:
        client = kubernetes.config.new_client_from_config(
            config_file=str(self.kubeconfig), persist_config=False
        )
        client.user_agent = user_agent
        return client

    # -- objects --------------------------------------------------------------------------
    def list(
        self, path: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of `path` ("batch/v1/jobs", "v1/events", "sparring.dev/v1alpha1/...")."""
        group, version, plural = _split_path(path)
        ns = self.namespace if namespace is None else namespace
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        url = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
        query = [("labelSelector", selector)] if selector else []
        data = self._call("GET", url, query)
        return [dict(item) for item in data.get("items", [])]

    def get(self, path: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        group, version, plural = _split_path(path)
        ns = self.namespace if namespace is None else namespace
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            return self._call("GET", f"{base}/namespaces/{ns}/{plural}/{name}", [])
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def _call(self, method: str, path: str, query: list[tuple[str, str]]) -> dict[str, Any]:
        url = self.client.configuration.host + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        resp = self.client.call_api(method, url, header_params={"Accept": "application/json"})
        resp.read()
        if not 200 <= resp.status < 300:
            raise ApiException(http_resp=resp)
        return dict(json.loads(resp.data))

    # -- the request logs -----------------------------------------------------------------
    def audit(self, user: str | None = None) -> list[AuditRecord]:
        """The API server's own record of every finished request, optionally of one user."""
        return read_audit(self.plane.audit_log, user)

    def rbac_usage(self, user: str) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) of every request `user` made to a resource
        (non-resource URLs such as /version and discovery are everyone's, through the
        default system:discovery roles, and are left out)."""
        return {r.permission for r in self.audit(user) if r.resource}

    # -- faults, through the proxy in front of the operator --------------------------------
    def start_proxy(self) -> FaultProxy:
        if self.proxy is None:
            self.proxy = FaultProxy(self.plane.server, self.plane.pki.ca_crt).start()
        return self.proxy

    @property
    def requests(self) -> list[Any]:
        return list(self.proxy.records) if self.proxy is not None else []

    def fail_next(self, *args: Any, **kwargs: Any) -> ProxyFault:
        """See FaultProxy.fail_next; set the returned fault's `times` to 0 to lift it."""
        return self.start_proxy().fail_next(*args, **kwargs)

    def drop_watches(self, abrupt: bool = False) -> None:
        self.start_proxy().drop_watches(abrupt=abrupt)

    def compact_history(self) -> None:
        """What etcd compaction does to a watcher: its next resumed watch gets 410 Gone."""
        self.start_proxy().expire_watches(times=1_000_000)

    def end_compaction(self) -> None:
        if self.proxy is not None:
            self.proxy.expire_watches(times=0)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.client.close()


def new_namespace(core: kubernetes.client.CoreV1Api, prefix: str = "t", **labels: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    return name


def delete_namespace(kube: Kube) -> None:
    """Delete a test's namespace without waiting (games carry no finalizer: nothing can keep
    it)."""
    with contextlib.suppress(ApiException):
        kubernetes.client.CoreV1Api(kube.client).delete_namespace(kube.namespace)
