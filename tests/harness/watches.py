"""Watch streams of the harness API server, with the semantics kopf and the kubernetes client
rely on (kmock 0.8's watch ignores ``resourceVersion`` and never filters):

* no ``resourceVersion`` (or "0"): ADDED for every current object, then live events;
* ``resourceVersion=N``: the retained events after N, then live ones; N older than the retained
  history: one ERROR event with code 410 (Gone), after which clients re-list;
* ``sendInitialEvents=true``: the current objects, then a BOOKMARK annotated
  ``k8s.io/initial-events-end`` (kopf's ``settings.watching.initial_streaming``);
* label/field selectors, including objects that start or stop matching (ADDED / DELETED);
* ``timeoutSeconds``; a stream also ends when the client goes away or a test drops it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp.web

from . import selectors
from .errors import ApiError, Event
from .resources import ResourceDef
from .selectors import Predicate
from .store import Store


def query_predicate(query: Any, name: str | None) -> Predicate:
    """labelSelector, fieldSelector and (for a watch on a named path) the name."""
    try:
        labels = selectors.label_selector(query.get("labelSelector"))
        fields = selectors.field_selector(query.get("fieldSelector"))
    except selectors.SelectorError as e:
        raise ApiError(400, "BadRequest", str(e)) from None
    return lambda obj: (
        labels(obj) and fields(obj) and (name is None or obj["metadata"]["name"] == name)
    )


async def serve(
    raw: aiohttp.web.BaseRequest,
    store: Store,
    rdef: ResourceDef,
    ns: str | None,
    predicate: Predicate,
    open_queues: set[asyncio.Queue[Any]],
    started: Callable[[int], None],
) -> aiohttp.web.StreamResponse:
    """Stream the watch: initial or replayed events, then live ones until ``timeoutSeconds``,
    the client leaves, or a "close"/"abort" marker arrives in the queue (drop_watches)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    rv_param = raw.query.get("resourceVersion", "")
    initial: list[dict[str, Any]] = []
    gone: ApiError | None = None

    def listener(event: Event) -> None:
        if event.rkey == rdef.key:
            loop.call_soon_threadsafe(queue.put_nowait, event)

    with store.lock:  # the snapshot/replay and the subscription are atomic
        if raw.query.get("sendInitialEvents") == "true" or rv_param in ("", "0"):
            items, rv = store.list(rdef, ns, predicate)
            initial = [{"type": "ADDED", "object": obj} for obj in items]
            if raw.query.get("sendInitialEvents") == "true":
                initial.append(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": rdef.kind,
                            "apiVersion": rdef.api_version,
                            "metadata": {
                                "resourceVersion": str(rv),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        },
                    }
                )
        else:
            if not rv_param.isdigit():
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_param!r}")
            try:
                events = store.events_since(rdef.key, int(rv_param))
            except ApiError as e:
                gone, events = e, []
            for event in events:
                initial.extend(translate(event, ns, predicate))
        if gone is None:
            store.listeners.append(listener)
    response = aiohttp.web.StreamResponse(status=200)
    response.content_type = "application/json"
    await response.prepare(raw)
    started(200)
    if gone is not None:  # the real API answers 200, then an ERROR event with code 410
        await response.write(
            json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n"
        )
        return response
    open_queues.add(queue)
    timeout = float(raw.query.get("timeoutSeconds") or 0) or None
    deadline = loop.time() + timeout if timeout else None
    try:
        for line in initial:
            await response.write(json.dumps(line).encode() + b"\n")
        while deadline is None or loop.time() < deadline:
            try:
                item = await asyncio.wait_for(queue.get(), 1.0)
            except asyncio.TimeoutError:
                if raw.transport is None or raw.transport.is_closing():
                    break  # the client has gone away
                continue
            if item == "abort" and raw.transport is not None:
                raw.transport.abort()
                break
            if item == "close":
                break
            for line in translate(item, ns, predicate):
                await response.write(json.dumps(line).encode() + b"\n")
    except (ConnectionError, RuntimeError):
        pass  # the client disconnected while we were writing
    finally:
        open_queues.discard(queue)
        with store.lock:
            if listener in store.listeners:
                store.listeners.remove(listener)
    return response


def translate(event: Event, ns: str | None, predicate: selectors.Predicate) -> list[dict[str, Any]]:
    """An event as this watcher sees it: an object that starts or stops matching the
    selectors shows up as ADDED / DELETED, as in the real API."""

    def visible(obj: dict[str, Any] | None) -> bool:
        return (
            obj is not None
            and (ns is None or obj["metadata"].get("namespace") == ns)
            and predicate(obj)
        )

    now_ok, before_ok = visible(event.obj), visible(event.old)
    etype: str | None = None
    if event.type == "DELETED":
        etype = "DELETED" if now_ok or before_ok else None
    elif event.type == "ADDED" or not before_ok:
        etype = "ADDED" if now_ok else None
    else:
        etype = "MODIFIED" if now_ok else "DELETED"
    return [{"type": etype, "object": event.obj}] if etype else []
