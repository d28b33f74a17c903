"""The games as the operator last saw them, so that a pass woken by a watch event need not read
its game from the API server again.

Two sources feed it: the game watch (every change anyone makes) and the answers to our own
status writes, which are newer than the watch for a moment. The newer copy wins, by
resourceVersion: a pass must decide from the status the previous pass wrote, or it would repeat
that pass's transitions and their events.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from sparring_operator.api import GROUP, PLURAL, VERSION

GameKey = tuple[str, str]  # (namespace, game)


def resource_version(obj: dict[str, Any]) -> int:
    """An object's resourceVersion as a number, to keep the newer of two copies. Kubernetes
    calls it opaque, but every API server built on etcd issues increasing integers (the watch
    cache's own ordering relies on it); anything else counts as oldest."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


# What a pass reads of an object's metadata. The rest (managedFields, kopf's annotation with a
# copy of the spec) is most of an object's size: kept for every game and Job, it put 160 MB on
# the operator at 500 games. kopf.adopt copies the owner's labels onto children: they stay.
_META = ("name", "namespace", "uid", "generation", "resourceVersion", "creationTimestamp",
         "deletionTimestamp", "labels", "ownerReferences")  # fmt: skip


def slim(
    obj: dict[str, Any], keep: tuple[str, ...], annotations: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`obj` with only the metadata above, the named annotations and the top-level fields in
    `keep` (the client-go informers' transform, for the same reason)."""
    meta = obj.get("metadata") or {}
    out_meta = {k: meta[k] for k in _META if k in meta}
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k in annotations}
    if kept:
        out_meta["annotations"] = kept
    return {"metadata": out_meta, **{k: obj[k] for k in keep if k in obj}}


@dataclass
class GameCache:
    api: k8s.ApiClient
    _games: dict[GameKey, dict[str, Any]] = field(default_factory=dict)
    # The game watch writes on the event loop; passes read and write in their threads.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tracked(self) -> set[GameKey]:
        return set(self._games)

    def forget(self, namespace: str, name: str) -> None:
        self._games.pop((namespace, name), None)

    def remember(self, game: dict[str, Any]) -> None:
        """A game as a watch event or our own write returned it; the newer copy is kept."""
        game = slim(game, ("apiVersion", "kind", "spec", "status"))
        meta = game["metadata"]
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            known = self._games.get(key)
            if known is None or resource_version(game) >= resource_version(known):
                self._games[key] = game

    def read(self, namespace: str, name: str, fresh: bool) -> dict[str, Any] | None:
        """The game from the API server (`fresh`, or when there is no copy), else the copy;
        None when it is gone."""
        if not fresh and (known := self._games.get((namespace, name))) is not None:
            return known
        custom: Any = k8s.CustomObjectsApi(self.api)
        try:
            game = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        self.remember(game)
        return self._games.get((namespace, name)) or cast(dict[str, Any], game)
