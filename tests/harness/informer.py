"""List-then-watch caches of the process kubelet: one thread per collection keeps a dict of
its objects (by uid) current and wakes the kubelet's loop on every change. A watch answers
the loop's questions without a request per tick, so the API server's audit log (the tests'
request log) holds the kubelet's writes, not a poll every 100 ms."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

import kubernetes.client

from .rawclient import request_json

log = logging.getLogger("harness.kubelet")
WATCH_SECONDS = 60  # the server ends each watch after this; then it is resumed from its version


class Informer:
    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        path: str,
        query: dict[str, str],
        wake: threading.Event,
    ) -> None:
        self.client, self.path, self.query, self.wake = client, path, query, wake
        self.synced = threading.Event()
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch {path}")

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:  # wakes the thread blocked reading the watch
            with contextlib.suppress(Exception):
                response.shutdown()
        self._thread.join(timeout=5)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = request_json(self.client, "GET", self.path, query=self.query)
                with self._lock:
                    self._items = {o["metadata"]["uid"]: o for o in listing["items"]}
                version = listing["metadata"]["resourceVersion"]
                self.synced.set()
                self.wake.set()
                while not self._stop.is_set():
                    version = self._watch(version)
            except Exception as e:  # 410 Gone, a dropped connection, the API server down
                if not self._stop.is_set():
                    log.info("watch %s: %r; listing again", self.path, e)
                    self._stop.wait(0.5)

    def _watch(self, version: str) -> str:
        query = {
            **self.query,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        method, url, headers, _, _ = self.client.param_serialize(
            method="GET",
            resource_path=self.path,
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(
            method, url, header_params=headers, _request_timeout=(10, WATCH_SECONDS + 30)
        )
        if response.status >= 400:
            raise kubernetes.client.ApiException(status=response.status, reason=response.reason)
        self._response = raw = response.response
        pending = b""
        try:
            for chunk in raw.stream(amt=None, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        version = self._apply(json.loads(line), version)
        finally:
            self._response = None
            raw.release_conn()
        return version

    def _apply(self, event: dict[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":  # mostly 410 Gone: the version is too old to resume from
            raise kubernetes.client.ApiException(status=obj.get("code"), reason=obj.get("message"))
        meta = obj.get("metadata") or {}
        if kind != "BOOKMARK":
            with self._lock:
                if kind == "DELETED":
                    self._items.pop(meta["uid"], None)
                else:
                    self._items[meta["uid"]] = obj
            self.wake.set()
        return str(meta.get("resourceVersion") or version)
