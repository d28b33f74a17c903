"""The HTTP side of the harness API server: a kmock ``KubernetesScaffold`` subclass.

What is reused from kmock: request handling inside aiohttp, API discovery (``/api``,
``/api/v1``, ``/apis``, ``/apis/G``, ``/apis/G/V``, ``/version``, ``/``) built from the declared
resources, and the Kubernetes ``Status`` shape of errors there. What is replaced: every request
on a resource path goes to :class:`~.store.Store` instead of kmock's emulator, because kmock
0.8 cannot even parse ``/api/v1/namespaces`` (its path parser raises) and its emulator lacks
the semantics listed in ``store.py``. On top: a request log (for RBAC checks), fault injection,
and watch streams that honour ``resourceVersion``, selectors, ``sendInitialEvents`` and
``timeoutSeconds``, and that a test can drop at will.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from . import resources, watches
from .errors import ApiError
from .resources import ResourceDef
from .store import Store
from .watches import query_predicate

LOG_PATH_ANNOTATION = "harness.sparring.dev/log-path"  # set by the kubelet, read for pods/log


@dataclasses.dataclass
class RequestRecord:
    """One request as the API server saw it; ``verb``/``api_group``/``resource`` are what an
    RBAC Role would have to grant (``resource`` includes a subresource: ``jobs/status``)."""

    method: str
    path: str
    query: dict[str, str]
    body_size: int
    user_agent: str
    verb: str
    api_group: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    status: int | None = None  # None while a watch stream has not started
    injected: bool = False  # answered by a fault injected with KubeApi.fail_next()
    time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class Fault:
    status: int
    times: int
    method: str | None = None
    path: re.Pattern[str] | None = None
    retry_after: int | None = None

    def matches(self, method: str, path_qs: str) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method == method)
            and (self.path is None or self.path.search(path_qs) is not None)
        )


@dataclasses.dataclass(frozen=True)
class K8sPath:
    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    subresource: str | None


def parse_k8s_path(path: str) -> K8sPath | None:
    """A resource path, or None for discovery and other non-resource paths."""
    segs = [seg for seg in path.split("/") if seg]
    if len(segs) >= 3 and segs[0] == "api":
        group, version, rest = "", segs[1], segs[2:]
    elif len(segs) >= 4 and segs[0] == "apis":
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    return K8sPath(group, version, namespace, rest[0], name, "/".join(rest[2:]) or None)


def _verb(method: str, kp: K8sPath | None, query: dict[str, str]) -> str:
    if kp is None:
        return method.lower()
    if method == "GET":
        watch = query.get("watch") in ("true", "1")
        return "watch" if watch else "get" if kp.name else "list"
    if method == "DELETE":
        return "delete" if kp.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _json(data: Any, status: int = 200, warnings: list[str] | None = None) -> aiohttp.web.Response:
    headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else None
    return aiohttp.web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


@attrs.define(kw_only=True)
class HarnessHandler(kmock.KubernetesScaffold):
    store: Store = attrs.field(factory=Store)
    records: list[RequestRecord] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    request_log_path: Path | None = None
    server_errors: list[str] = attrs.field(factory=list)  # tracebacks of harness bugs
    _log_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _watches: set[asyncio.Queue[Any]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store.on_register.append(self._declare)
        for rdef in list(self.store.resources.values()):
            self._declare(rdef, None)

    def _declare(self, rdef: ResourceDef | None, remove: ResourceDef | None) -> None:
        """Make a resource (un)discoverable through kmock's discovery endpoints."""
        if remove is not None:
            self.resources.pop(kmock.resource(remove.group, remove.version, remove.plural), None)
        if rdef is None:
            return
        self.resources[kmock.resource(rdef.group, rdef.version, rdef.plural)] = kmock.ResourceInfo(
            namespaced=rdef.namespaced,
            kind=rdef.kind,
            singular=rdef.singular or rdef.kind.lower(),
            verbs=set(resources.VERBS),
            shortnames=set(rdef.short_names),
            categories=set(rdef.categories),
            subresources=set(rdef.subresources),
        )

    async def _serve_version(self, request: Any) -> Any:
        """kmock 0.8 says ``groupVersion: "/v1"`` for the core group; the real API says "v1"."""
        result = await super()._serve_version(request)
        result["groupVersion"] = result["groupVersion"].lstrip("/")
        return result

    # -- request log and faults --------------------------------------------------------------
    def _finish(self, record: RequestRecord, status: int) -> None:
        record.status = status
        if self.request_log_path is not None:
            with self._log_lock, open(self.request_log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(dataclasses.asdict(record)) + "\n")

    def _take_fault(self, method: str, path_qs: str) -> Fault | None:
        with self._log_lock:
            for fault in self.faults:
                if fault.matches(method, path_qs):
                    fault.times -= 1
                    return fault
        return None

    def drop_watches(self, abrupt: bool) -> None:
        """End every open watch stream (call in the loop thread)."""
        for queue in list(self._watches):
            queue.put_nowait("abort" if abrupt else "close")

    # -- entry point -------------------------------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        query = dict(raw_request.query)
        kp = parse_k8s_path(raw_request.path)
        record = RequestRecord(
            method=raw_request.method,
            path=raw_request.path,
            query=query,
            body_size=len(body),
            user_agent=raw_request.headers.get("User-Agent", ""),
            verb=_verb(raw_request.method, kp, query),
            api_group=kp.group if kp else None,
            namespace=kp.namespace if kp else None,
            resource=(kp.plural + (f"/{kp.subresource}" if kp.subresource else "")) if kp else None,
            name=kp.name if kp else None,
        )
        with self._log_lock:
            self.records.append(record)
        fault = self._take_fault(raw_request.method, raw_request.path_qs)
        if fault is not None:
            record.injected = True
            self._finish(record, fault.status)
            error = ApiError(
                fault.status,
                "TooManyRequests" if fault.status == 429 else "InternalError",
                "fault injected by the test harness",
            )
            response = _json(error.status(), fault.status)
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(fault.retry_after)
            return response
        if kp is None:
            response = await super().__call__(raw_request)  # kmock: discovery, /version
        else:
            try:
                response = await self._serve(raw_request, kp, body, record)
            except ApiError as e:
                response = _json(e.status(), e.code)
            except Exception as e:  # a harness bug: answer like the real API, keep it for tests
                self.server_errors.append(
                    f"{raw_request.method} {raw_request.path_qs}:\n" + traceback.format_exc()
                )
                response = _json(ApiError(500, "InternalError", repr(e)).status(), 500)
        if record.status is None:
            self._finish(record, response.status)
        return response

    async def _serve(
        self, raw: aiohttp.web.BaseRequest, kp: K8sPath, body: bytes, record: RequestRecord
    ) -> aiohttp.web.StreamResponse:
        rdef = self.store.resource(kp.group, kp.version, kp.plural)
        if rdef is None:
            raise ApiError(
                404,
                "NotFound",
                f"the server could not find the requested resource"
                f" ({kp.group}/{kp.version}/{kp.plural})",
            )
        if kp.namespace is not None and not rdef.namespaced:
            raise ApiError(404, "NotFound", f"{kp.plural} is not namespaced")
        if kp.name is not None and rdef.namespaced and kp.namespace is None:
            raise ApiError(404, "NotFound", f"{kp.plural} is namespaced: the path needs one")
        if kp.subresource and kp.subresource not in rdef.subresources:
            raise ApiError(404, "NotFound", f"{kp.plural}/{kp.subresource} does not exist")
        if raw.query.get("dryRun"):
            raise ApiError(400, "BadRequest", "dryRun is not supported by the test harness")
        ns = kp.namespace if rdef.namespaced else None
        data = self._parse_body(raw, body)
        store, method = self.store, raw.method
        if record.verb == "watch":
            predicate = query_predicate(raw.query, kp.name)
            started = functools.partial(self._finish, record)
            return await watches.serve(raw, self.store, rdef, ns, predicate, self._watches, started)
        if method == "GET" and kp.subresource == "log":
            return self._pod_log(store.get(rdef, ns, kp.name or ""), raw.query)
        if method == "GET" and kp.name:
            return _json(store.get(rdef, ns, kp.name))
        if method == "GET":
            items, rv = store.list(rdef, ns, query_predicate(raw.query, None))
            if not rdef.custom:  # typed lists of the real API omit these in items
                for item in items:
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
            return _json(
                {
                    "kind": f"{rdef.kind}List",
                    "apiVersion": rdef.api_version,
                    "metadata": {"resourceVersion": str(rv)},
                    "items": items,
                }
            )
        if method == "POST" and kp.name is None:
            if rdef.namespaced and ns is None:
                raise ApiError(405, "MethodNotAllowed", "create needs a namespace in the path")
            return _json(store.create(rdef, ns, data), 201)
        if method == "PUT" and kp.name:
            return _json(store.replace(rdef, ns, kp.name, data, kp.subresource))
        if method == "PATCH" and kp.name:
            content_type = raw.headers.get("Content-Type", "application/merge-patch+json")
            return _json(store.patch(rdef, ns, kp.name, data, content_type, kp.subresource))
        if method == "DELETE":
            options = dict(data) if isinstance(data, dict) else {}
            for param in ("propagationPolicy", "orphanDependents"):
                if param in raw.query:
                    value = raw.query[param]
                    options[param] = value == "true" if param == "orphanDependents" else value
            warnings: list[str] = []
            if kp.name:
                obj = store.delete(rdef, ns, kp.name, options, warnings)
                return _json(obj, 200, warnings)
            items, _ = store.list(rdef, ns, query_predicate(raw.query, None))
            for item in items:
                meta = item["metadata"]
                try:
                    store.delete(rdef, meta.get("namespace"), meta["name"], options, warnings)
                except ApiError as e:
                    if e.code != 404:  # 404: already garbage-collected with an earlier item
                        raise
            return _json(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"},
                200,
                sorted(set(warnings)),
            )
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {raw.path}")

    @staticmethod
    def _parse_body(raw: aiohttp.web.BaseRequest, body: bytes) -> Any:
        if not body:
            return None
        try:
            if "yaml" in raw.headers.get("Content-Type", ""):
                return yaml.safe_load(body)
            return json.loads(body)
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, "BadRequest", f"the request body is not valid: {e}") from None

    @staticmethod
    def _pod_log(pod: dict[str, Any], query: Any) -> aiohttp.web.Response:
        path = (pod["metadata"].get("annotations") or {}).get(LOG_PATH_ANNOTATION)
        if not path or not Path(path).exists():
            raise ApiError(
                400,
                "BadRequest",
                f'container in pod "{pod["metadata"]["name"]}" is'
                " waiting to start: ContainerCreating",
            )
        text = Path(path).read_text(errors="replace")
        if query.get("tailLines"):
            text = "".join(text.splitlines(keepends=True)[-int(query["tailLines"]) :])
        return aiohttp.web.Response(text=text, content_type="text/plain")
