"""A fault-injecting reverse proxy between a Kubernetes client and a real kube-apiserver.

A real API server cannot be told to answer 429, to drop its watch streams or to expire a
resourceVersion on demand, so the operator under test talks to this proxy instead (plain HTTP
on 127.0.0.1, through a kubeconfig from ``controlplane.write_kubeconfig`` with a bearer token)
and the proxy forwards everything to the API server over verified TLS, byte for byte, except
what a test asked it to break.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
from multidict import CIMultiDict
from yarl import URL

# Connection-level headers (RFC 9110 §7.6.1) describe one hop, not the message; Host and
# Content-Length are rewritten by aiohttp for the upstream hop.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)
_REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


@dataclasses.dataclass
class ProxyRecord:
    """One request as the proxy saw it; ``status`` stays None until the answer has started."""

    method: str
    path: str
    query: str
    user_agent: str
    resource: str | None  # "pods", "jobs/status", ...; None for discovery and /version
    watch: bool
    status: int | None = None
    injected: bool = False  # answered by the proxy itself (fail_next / expire_watches)
    time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class ProxyFault:
    status: int
    times: int  # how many more matching requests it will answer
    method: str | None = None
    path: re.Pattern[str] | None = None
    retry_after: float | None = None

    def matches(self, method: str, path_qs: str) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method == method)
            and (self.path is None or self.path.search(path_qs) is not None)
        )


def parse_resource(path: str) -> str | None:
    """``resource[/subresource]`` of an API path, as an RBAC rule names it."""
    segs = [seg for seg in path.split("/") if seg]
    if len(segs) >= 3 and segs[0] == "api":
        rest = segs[2:]
    elif len(segs) >= 4 and segs[0] == "apis":
        rest = segs[3:]
    else:
        return None  # discovery, /version, /healthz, ...
    # /namespaces/NS/PLURAL... is a namespaced resource, but /namespaces/NS/status is the
    # namespace's own subresource.
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        rest = rest[2:]
    # Only the first segment after the name: nodes/NAME/proxy/any/path is "nodes/proxy".
    return f"{rest[0]}/{rest[2]}" if len(rest) > 2 else rest[0]


@dataclasses.dataclass(eq=False)
class _Watch:
    dropped: asyncio.Future[bool]  # the result says: abruptly
    closed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class FaultProxy:
    """See the module docstring. Every public method may be called from any thread but the
    proxy's own."""

    def __init__(self, upstream: str, ca_file: Path | None) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.url = ""
        self.port = 0
        self.errors: list[str] = []  # why a request could not be forwarded (answered 502)
        self._records: list[ProxyRecord] = []
        self._faults: list[ProxyFault] = []
        self._expiries = 0
        self._lock = threading.Lock()
        self._watches: set[_Watch] = set()
        self._closing: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> FaultProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._run, args=(sock,), daemon=True, name=f"fault-proxy-{self.port}"
        )
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the fault proxy did not start: {self._error!r}")
        return self

    def _run(self, sock: socket.socket) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve(sock))
        except BaseException as e:
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        tls = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        # auto_decompress=False: a gzip body passes through with its Content-Encoding intact.
        # No read timeout: a quiet watch may legitimately send nothing for minutes.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        # handler_cancellation: a client that hangs up must also end its upstream request.
        server = aiohttp.web.Server(self._handle, access_log=None, handler_cancellation=True)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2.0)
        try:
            await runner.setup()
            await aiohttp.web.SockSite(runner, sock).start()
            self._ready.set()
            await self._stopping.wait()
        finally:
            await self._drop(abrupt=False)
            await runner.cleanup()
            await self._session.close()
            if self._closing:
                await asyncio.wait(set(self._closing), timeout=5)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
            if self._thread.is_alive():
                raise RuntimeError("the fault proxy thread did not stop")

    def __enter__(self) -> FaultProxy:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- inspection and faults ---------------------------------------------------------------
    @property
    def records(self) -> list[ProxyRecord]:
        with self._lock:
            return list(self._records)

    @property
    def faults(self) -> list[ProxyFault]:
        with self._lock:
            return list(self._faults)

    def fail_next(
        self,
        times: int,
        status: int,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> ProxyFault:
        """Answer the next ``times`` requests matching ``method`` and the regex ``path``
        (searched in path + query string) with ``status`` and a Kubernetes Status body."""
        pattern = re.compile(path) if path else None
        fault = ProxyFault(status, times, method and method.upper(), pattern, retry_after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def expire_watches(self, times: int = 1) -> None:
        """Answer the next ``times`` watches resuming from a resourceVersion with 410 Expired,
        as the API server does once etcd has compacted that revision away. It replaces the
        count still pending: ``times=0`` ends the expiry."""
        with self._lock:
            self._expiries = times

    def clear_faults(self) -> None:
        """Forget every pending fault, ``expire_watches`` ones included."""
        with self._lock:
            self._faults.clear()
            self._expiries = 0

    def open_watches(self) -> int:
        return len(self._watches)

    def drop_watches(self, abrupt: bool = False, timeout: float = 10.0) -> int:
        """End every open watch stream and wait until they are ended: cleanly (the chunked
        response is finished) or abruptly (the client's connection is reset). Returns how many
        there were."""
        assert self._loop is not None, "the proxy is not started"
        assert threading.current_thread() is not self._thread, "would deadlock"
        future = asyncio.run_coroutine_threadsafe(self._drop(abrupt), self._loop)
        return future.result(timeout)

    async def _drop(self, abrupt: bool) -> int:
        watches = list(self._watches)
        for watch in watches:
            if not watch.dropped.done():
                watch.dropped.set_result(abrupt)
        if watches:
            await asyncio.wait([asyncio.ensure_future(w.closed.wait()) for w in watches], timeout=5)
        return len(watches)

    # -- request handling --------------------------------------------------------------------
    def _take_fault(self, method: str, path_qs: str) -> ProxyFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path_qs):
                    fault.times -= 1
                    return fault
        return None

    def _take_expiry(self, resource_version: str) -> bool:
        # "" and "0" mean "any version": the API server never answers those with 410.
        if resource_version in ("", "0"):
            return False
        with self._lock:
            if self._expiries > 0:
                self._expiries -= 1
                return True
        return False

    def _set_status(self, record: ProxyRecord, status: int, injected: bool = False) -> None:
        with self._lock:
            record.status, record.injected = status, injected

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        query = request.query
        record = ProxyRecord(
            method=request.method,
            path=request.path,
            query=request.rel_url.raw_query_string,
            user_agent=request.headers.get("User-Agent", ""),
            resource=parse_resource(request.path),
            watch=query.get("watch") in ("true", "1"),
        )
        with self._lock:
            self._records.append(record)
        fault = self._take_fault(request.method, request.path_qs)
        if fault is not None:
            self._set_status(record, fault.status, injected=True)
            return _status_response(fault)
        if record.watch and self._take_expiry(query.get("resourceVersion", "")):
            self._set_status(record, 200, injected=True)
            return await _expired_watch(request, query["resourceVersion"])
        try:
            return await self._forward(request, record)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            self.errors.append(f"{request.method} {request.path_qs}: {e!r}")
            self._set_status(record, 502)
            body = _status(502, "InternalError", f"fault proxy: upstream failed: {e!r}")
            return aiohttp.web.json_response(body, status=502)

    async def _forward(
        self, request: aiohttp.web.BaseRequest, record: ProxyRecord
    ) -> aiohttp.web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        closed: object = None
        try:
            async with self._session.request(
                request.method,
                URL(self.upstream + request.raw_path, encoded=True),
                headers=_end_to_end(request.headers, drop=("host", "content-length")),
                data=body or None,
                allow_redirects=False,
                # Send only what the client sent: no aiohttp User-Agent, Accept or Content-Type.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            ) as upstream:
                if upstream.connection is not None:
                    closed = getattr(upstream.connection.protocol, "closed", None)
                return await self._relay(request, record, upstream)
        finally:
            # A TLS connection closes over a few loop turns: stop() waits for it (no leaked socket).
            if isinstance(closed, asyncio.Future) and not closed.done():
                self._closing.add(closed)
                closed.add_done_callback(self._closing.discard)

    async def _relay(
        self,
        request: aiohttp.web.BaseRequest,
        record: ProxyRecord,
        upstream: aiohttp.ClientResponse,
    ) -> aiohttp.web.StreamResponse:
        assert self._loop is not None
        response = aiohttp.web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.update(_end_to_end(upstream.headers))
        # Counted before the client can see the headers: once it has them, a drop reaches it.
        watch = _Watch(self._loop.create_future()) if record.watch else None
        if watch is not None:
            self._watches.add(watch)
        try:
            await response.prepare(request)
            self._set_status(record, upstream.status)
            if await _pump(upstream, response, watch):
                await response.write_eof()
            elif request.transport is not None:
                request.transport.abort()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            # Upstream broke off mid-answer: the client must see a truncated answer too.
            if request.transport is not None:
                request.transport.abort()
        finally:
            if watch is not None:
                self._watches.discard(watch)
                watch.closed.set()
        return response


async def _pump(
    upstream: aiohttp.ClientResponse, response: aiohttp.web.StreamResponse, watch: _Watch | None
) -> bool:
    """Copy the body until upstream ends it or the watch is dropped; False: reset the client."""
    if watch is None:
        await _copy(upstream, response)
        return True
    copy = asyncio.ensure_future(_copy(upstream, response))
    try:
        either: set[asyncio.Future[Any]] = {copy, watch.dropped}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if copy.done():
            copy.result()
            return True
        return not watch.dropped.result()
    finally:
        copy.cancel()
        await asyncio.wait({copy})


async def _copy(upstream: aiohttp.ClientResponse, response: aiohttp.web.StreamResponse) -> None:
    # iter_any() yields whatever has arrived, so a watch event is never held back.
    async for chunk in upstream.content.iter_any():
        await response.write(chunk)


def _end_to_end(headers: Mapping[str, str], drop: tuple[str, ...] = ()) -> CIMultiDict[str]:
    """The headers minus hop-by-hop ones, keeping repeated ones (e.g. several Warning)."""
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    skip = _HOP_BY_HOP | named | set(drop)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    head = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    return {**head, "message": message, "reason": reason, "code": code}


def _status_response(fault: ProxyFault) -> aiohttp.web.Response:
    reason = _REASONS.get(fault.status, "InternalError")
    body = _status(fault.status, reason, "fault injected by the test harness")
    headers = {}
    if fault.retry_after is not None:
        body["details"] = {"retryAfterSeconds": math.ceil(fault.retry_after)}
        # A fraction keeps tests fast (kopf reads int(float(...))); client-go needs whole seconds.
        headers["Retry-After"] = f"{fault.retry_after:g}"
    return aiohttp.web.json_response(body, status=fault.status, headers=headers)


async def _expired_watch(request: aiohttp.web.BaseRequest, rv: str) -> aiohttp.web.StreamResponse:
    # The real API server accepts the watch (200) and only then reports the expiry in-band.
    event = {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {rv}")}
    response = aiohttp.web.StreamResponse(status=200)
    response.content_type = "application/json"
    await response.prepare(request)
    await response.write(json.dumps(event).encode() + b"\n")
    await response.write_eof()
    return response
