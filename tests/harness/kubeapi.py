"""``KubeApi``: the harness API server on 127.0.0.1, run in a background thread.

Why a thread and not a subprocess: tests read the request log and the objects, inject faults
and drop watch streams directly, with no IPC. The operator under test is what must be
killable and restartable independently, and it can be: as a ``kopf.testing.KopfRunner`` thread
or as a ``kopf run`` subprocess pointed at :attr:`KubeApi.kubeconfig` (the server lives in the
test process and outlives it). For use outside pytest, ``python -m harness`` runs the same
server in the foreground (see ``__main__.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp.web
import kubernetes.client
import kubernetes.config
import yaml

from . import selectors
from .apiserver import Fault, HarnessHandler, RequestRecord
from .resources import ADVERSARIAL_GAMES, BUILTIN_RESOURCES, ResourceDef, resource_from_crd
from .store import Store

HARNESS_USER_AGENT_PREFIX = "harness-"  # the test client and the kubelet; not the operator


class HttpReply(NamedTuple):
    status: int
    body: Any  # parsed JSON, or text
    headers: dict[str, str]


class KubeApi:
    """A Kubernetes API stand-in over real HTTP. Attributes once started:

    * ``url`` (``http://127.0.0.1:PORT``), ``kubeconfig`` (Path), ``env`` (``{"KUBECONFIG"}``);
    * ``client``: a ``kubernetes.client.ApiClient`` for it (User-Agent ``harness-test``);
    * ``requests``: a copy of the request log (:class:`RequestRecord`), also appended to
      ``request_log_path`` as JSON lines;
    * fault injection: :meth:`fail_next`, :meth:`drop_watches`, :meth:`compact_history`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        extra_resources: Iterable[ResourceDef | dict[str, Any]] = (ADVERSARIAL_GAMES,),
        namespaces: Iterable[str] = ("default",),
        history_limit: int = 10000,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.workdir / "kubeconfig.yaml"
        self.request_log_path = self.workdir / "requests.jsonl"
        self.store = Store(history_limit=history_limit)
        for rdef in BUILTIN_RESOURCES:
            self.store.register(rdef)
        for extra in extra_resources:
            self.register(extra)
        ns_resource = self.lookup("v1/namespaces")
        for namespace in namespaces:
            self.store.create(ns_resource, None, {"metadata": {"name": namespace}})
        self.url = ""
        self.port = 0
        self.handler: HarnessHandler | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._client: kubernetes.client.ApiClient | None = None
        self._clients: list[kubernetes.client.ApiClient] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> KubeApi:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._run, args=(sock,), daemon=True, name=f"kube-api-{self.port}"
        )
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the harness API server did not start: {self._error!r}")
        self._write_kubeconfig()
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
        self.handler = HarnessHandler(store=self.store, request_log_path=self.request_log_path)
        async with self.handler:
            runner = aiohttp.web.ServerRunner(
                aiohttp.web.Server(self.handler, access_log=None), shutdown_timeout=2.0
            )
            await runner.setup()
            await aiohttp.web.SockSite(runner, sock).start()
            self._ready.set()
            try:
                await self._stopping.wait()
            finally:
                self.handler.drop_watches(abrupt=False)
                await asyncio.sleep(0)  # let the watch handlers see the close marker
                await runner.cleanup()

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._client = None
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
            if self._thread.is_alive():
                raise RuntimeError("the harness API server thread did not stop")

    def __enter__(self) -> KubeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "harness",
            "clusters": [{"name": "harness", "cluster": {"server": self.url}}],
            "users": [{"name": "harness", "user": {"token": "harness-token"}}],
            "contexts": [
                {
                    "name": "harness",
                    "context": {"cluster": "harness", "user": "harness", "namespace": "default"},
                }
            ],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    # -- clients -----------------------------------------------------------------------------
    def new_client(self, user_agent: str = "harness-test") -> kubernetes.client.ApiClient:
        """A fresh ApiClient from the kubeconfig; never touches the global default config."""
        client = kubernetes.config.new_client_from_config(
            config_file=str(self.kubeconfig), persist_config=False
        )
        client.user_agent = user_agent
        self._clients.append(client)
        return client

    @property
    def client(self) -> kubernetes.client.ApiClient:
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def http(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> HttpReply:
        """A raw request, for what the typed client cannot send or hides (e.g. headers)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": content_type, "User-Agent": "harness-http"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw, headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as e:
            status, raw, headers = e.code, e.read(), e.headers
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        return HttpReply(status, body, dict(headers))

    # -- objects -----------------------------------------------------------------------------
    def register(self, resource: ResourceDef | dict[str, Any]) -> None:
        """Declare a resource (a ResourceDef, or a CRD object as loaded from YAML)."""
        rdefs = [resource] if isinstance(resource, ResourceDef) else resource_from_crd(resource)
        for rdef in rdefs:
            self.store.register(rdef)

    def lookup(self, resource: str) -> ResourceDef:
        """``batch/v1/jobs``, ``v1/pods``, ``sparring.dev/v1alpha1/adversarialgames``, or a
        plural, singular or short name when it is unambiguous (``jobs``, ``ag``)."""
        with self.store.lock:
            rdefs = list(self.store.resources.values())
        exact = [r for r in rdefs if f"{r.api_version}/{r.plural}" == resource]
        named = [r for r in rdefs if resource in (r.plural, r.singular, *r.short_names)]
        found = exact or named
        if len(found) != 1:
            raise KeyError(f"no single resource matches {resource!r}: {found}")
        return found[0]

    def get(self, resource: str, name: str, namespace: str | None = "default") -> dict | None:
        rdef = self.lookup(resource)
        with self.store.lock:
            obj = self.store.objects.get((rdef.key, namespace if rdef.namespaced else None, name))
            return json.loads(json.dumps(obj)) if obj is not None else None

    def list(
        self, resource: str, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        items, _ = self.store.list(
            self.lookup(resource), namespace, selectors.label_selector(label_selector)
        )
        return items

    # -- request log -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        assert self.handler is not None, "the server is not started"
        return list(self.handler.records)

    def rbac_usage(self, user_agent: str | None = None) -> set[tuple[str, str, str]]:
        """``(apiGroup, resource[/subresource], verb)`` of every resource request, by clients
        whose User-Agent starts with ``user_agent`` (default: all but the harness's own)."""
        return {
            (r.api_group or "", r.resource or "", r.verb)
            for r in self.requests
            if r.resource is not None
            and not r.injected
            and (
                r.user_agent.startswith(user_agent)
                if user_agent is not None
                else not r.user_agent.startswith(HARNESS_USER_AGENT_PREFIX)
            )
        }

    # -- faults ------------------------------------------------------------------------------
    def fail_next(
        self,
        times: int = 1,
        status: int = 500,
        method: str | None = None,
        path: str | None = None,
        retry_after: int | None = None,
    ) -> Fault:
        """Answer the next ``times`` requests matching ``method`` and the regex ``path``
        (searched in path + query string) with ``status`` (a Status body, e.g. 429 or 500)."""
        assert self.handler is not None, "the server is not started"
        fault = Fault(
            status=status,
            times=times,
            method=method and method.upper(),
            path=re.compile(path) if path else None,
            retry_after=retry_after,
        )
        with self.handler._log_lock:
            self.handler.faults.append(fault)
        return fault

    def drop_watches(self, abrupt: bool = False) -> None:
        """End all open watch streams: cleanly (``abrupt=False``) or by resetting the TCP
        connection. Clients are expected to re-watch from their last resourceVersion."""
        assert self._loop is not None and self.handler is not None
        self._loop.call_soon_threadsafe(self.handler.drop_watches, abrupt)

    @property
    def open_watches(self) -> int:
        return len(self.handler._watches) if self.handler is not None else 0

    def compact_history(self) -> None:
        """Forget the watch history: a watch resuming from an older resourceVersion gets an
        ERROR event with code 410 (Gone) and has to re-list, as after etcd compaction."""
        self.store.compact()
