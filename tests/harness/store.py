"""The in-memory object store behind the harness API server: the semantics that kmock 0.8's
``KubernetesEmulator`` lacks and that kopf and the operator rely on.

* ``metadata.uid``, ``creationTimestamp``, a cluster-wide monotonic ``resourceVersion``;
  ``generation`` bumped only when something outside metadata/status changes (and on the first
  step of a deletion with finalizers), never by status-subresource writes.
* A no-op write changes nothing and emits no watch event (kopf would loop otherwise).
* Status subresource: the main endpoint ignores ``.status``, ``/status`` changes only ``.status``,
  status is dropped on create (defaults aside).
* Optimistic concurrency: ``metadata.resourceVersion`` in a PUT / merge patch / delete
  precondition must match, else 409 Conflict.
* Deletion: finalizers -> ``deletionTimestamp`` first, removal when the last one goes; no new
  finalizers on an object being deleted. Garbage collection of dependents by ownerReferences
  (Background, or Orphan: refs stripped), run synchronously. As on a real cluster a batch/v1
  Job deleted without a propagationPolicy orphans its pods (with a Warning header).
* Namespaces: "default" exists; objects cannot be created in a missing namespace; deleting a
  namespace deletes everything in it.
* An event history by resourceVersion so that a watch can resume from a list's (or its last
  event's) resourceVersion; older than the retained history -> 410 Gone.

Every method runs under ``self.lock``; the HTTP layer calls them from its event loop thread.
"""

from __future__ import annotations

import collections
import copy
import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

from . import patching, resources
from .deletion import DeletionMixin
from .errors import ApiError, Event, ObjKey, conflict, not_found, now, qualified
from .resources import ResourceDef
from .selectors import Predicate

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the real apiserver uses for generateName


def _spec_part(rdef: ResourceDef, obj: dict[str, Any]) -> dict[str, Any]:
    """What counts for metadata.generation: everything but metadata (and status if it is a
    subresource, since then status writes go elsewhere)."""
    skip = {"metadata", "kind", "apiVersion"} | (
        {"status"} if "status" in rdef.subresources else set()
    )
    return {k: v for k, v in obj.items() if k not in skip}


class Store(DeletionMixin):
    """Objects by (resource, namespace, name), the resourceVersion counter and the event
    history; see the module docstring for the semantics."""

    def __init__(self, history_limit: int = 10000) -> None:
        self.lock = threading.RLock()
        self.resources: dict[tuple[str, str, str], ResourceDef] = {}
        self.objects: dict[ObjKey, dict[str, Any]] = {}
        self.rv = 1000
        self.history: collections.deque[Event] = collections.deque()
        self.history_limit = history_limit
        self.compacted_rv = 0  # watches from below this resourceVersion get 410 Gone
        self.listeners: list[Callable[[Event], None]] = []
        self.on_register: list[Callable[[ResourceDef | None, ResourceDef | None], None]] = []
        self._policies: dict[str, str] = {}  # uid -> propagation policy of a pending deletion

    # -- resources ---------------------------------------------------------------------------
    def register(self, rdef: ResourceDef | None, *, remove: ResourceDef | None = None) -> None:
        """Serve a resource (or stop serving ``remove``); callbacks update the discovery."""
        with self.lock:
            if rdef is not None:
                self.resources[rdef.key] = rdef
            if remove is not None:
                self.resources.pop(remove.key, None)
            for callback in self.on_register:
                callback(rdef, remove)

    def resource(self, group: str, version: str, plural: str) -> ResourceDef | None:
        return self.resources.get((group, version, plural))

    # -- events ------------------------------------------------------------------------------
    def _commit(
        self,
        rdef: ResourceDef,
        key: ObjKey,
        obj: dict[str, Any] | None,
        old: dict[str, Any] | None,
        etype: str,
    ) -> dict[str, Any]:
        self.rv += 1
        final = copy.deepcopy(obj if obj is not None else old)
        assert final is not None
        final["metadata"]["resourceVersion"] = str(self.rv)
        if etype == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = final
        event = Event(self.rv, rdef.key, etype, final, old)
        self.history.append(event)
        while len(self.history) > self.history_limit:
            self.compacted_rv = self.history.popleft().rv
        for listener in list(self.listeners):
            listener(event)
        return copy.deepcopy(final)

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: resuming watches get 410."""
        with self.lock:
            self.history.clear()
            self.compacted_rv = self.rv

    def events_since(self, rkey: tuple[str, str, str], rv: int) -> list[Event]:
        if rv < self.compacted_rv:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.compacted_rv})")
        return [e for e in self.history if e.rv > rv and e.rkey == rkey]

    # -- reads -------------------------------------------------------------------------------
    def get(self, rdef: ResourceDef, namespace: str | None, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get((rdef.key, namespace, name))
            if obj is None:
                raise not_found(rdef, name)
            return copy.deepcopy(obj)

    def list(
        self, rdef: ResourceDef, namespace: str | None, predicate: Predicate = lambda obj: True
    ) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            keys = sorted(
                (k for k in self.objects if k[0] == rdef.key), key=lambda k: (k[1] or "", k[2])
            )
            items = [
                copy.deepcopy(self.objects[k])
                for k in keys
                if (namespace is None or k[1] == namespace) and predicate(self.objects[k])
            ]
            return items, self.rv

    # -- writes ------------------------------------------------------------------------------
    def create(self, rdef: ResourceDef, namespace: str | None, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        with self.lock:
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            if rdef.namespaced:
                if meta.get("namespace") not in (None, "", namespace):
                    raise ApiError(
                        400,
                        "BadRequest",
                        "the namespace of the provided object does"
                        " not match the namespace sent on the request",
                    )
                meta["namespace"] = namespace
                ns_key: ObjKey = (("", "v1", "namespaces"), None, namespace or "")
                if ns_key[0] in self.resources and ns_key not in self.objects:
                    raise ApiError(
                        404,
                        "NotFound",
                        f'namespaces "{namespace}" not found',
                        name=namespace,
                        kind="namespaces",
                    )
            else:
                meta.pop("namespace", None)
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise ApiError(
                        422,
                        "Invalid",
                        "metadata.name: Required value: name or generateName is required",
                    )
                while True:
                    suffix = "".join(random.choices(_NAME_CHARS, k=5))
                    meta["name"] = f"{meta['generateName']}{suffix}"
                    if (rdef.key, meta.get("namespace"), meta["name"]) not in self.objects:
                        break
            key: ObjKey = (rdef.key, meta.get("namespace"), meta["name"])
            if key in self.objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{qualified(rdef)} "{meta["name"]}" already exists',
                    name=meta["name"],
                    group=rdef.group,
                    kind=rdef.plural,
                )
            obj["kind"], obj["apiVersion"] = rdef.kind, rdef.api_version
            for field in (
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "managedFields",
            ):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            if rdef.has_generation:
                meta["generation"] = 1
            if "status" in rdef.subresources:
                obj.pop("status", None)
            try:
                resources.prepare_create(rdef, obj)
                resources.validate_metadata(rdef, obj)
            except resources.Invalid as e:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rdef.kind} "{meta["name"]}" is invalid: {e}',
                    name=meta["name"],
                    group=rdef.group,
                    kind=rdef.kind,
                ) from None
            result = self._commit(rdef, key, obj, None, "ADDED")
            if rdef.plural == "customresourcedefinitions" and not rdef.custom:
                for crd_resource in resources.resource_from_crd(obj):
                    self.register(crd_resource)
            return result

    def replace(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None,
    ) -> dict[str, Any]:
        with self.lock:
            current = self.get(rdef, namespace, name)
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
            expected = (body.get("metadata") or {}).get("resourceVersion")
            if expected and expected != current["metadata"]["resourceVersion"]:
                raise conflict(rdef, name)
            return self._update(rdef, current, copy.deepcopy(body), subresource)

    def patch(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        subresource: str | None,
    ) -> dict[str, Any]:
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind == patching.STRATEGIC_MERGE_PATCH and rdef.custom:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an"
                " unknown format - accepted media types include:"
                " application/json-patch+json, application/merge-patch+json,"
                " application/apply-patch+yaml",
            )
        with self.lock:
            current = self.get(rdef, namespace, name)
            if kind != patching.JSON_PATCH and isinstance(patch, dict):
                expected = (patch.get("metadata") or {}).get("resourceVersion")
                if expected and expected != current["metadata"]["resourceVersion"]:
                    raise conflict(rdef, name)
            try:
                candidate = patching.apply_patch(current, patch, content_type)
            except patching.PatchError as e:
                raise ApiError(422, "Invalid", str(e), name=name, kind=rdef.kind) from None
            return self._update(rdef, current, candidate, subresource)

    def _update(
        self,
        rdef: ResourceDef,
        current: dict[str, Any],
        candidate: dict[str, Any],
        subresource: str | None,
    ) -> dict[str, Any]:
        meta = current["metadata"]
        key: ObjKey = (rdef.key, meta.get("namespace"), meta["name"])
        if subresource == "status":
            new = copy.deepcopy(current)
            if candidate.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = candidate["status"]
        elif subresource:
            raise ApiError(405, "MethodNotAllowed", f"{rdef.plural}/{subresource}: not writable")
        else:
            new = candidate
            new["kind"], new["apiVersion"] = rdef.kind, rdef.api_version
            new_meta = new.setdefault("metadata", {})
            for field in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
                "resourceVersion",
            ):
                if field in meta:
                    new_meta[field] = meta[field]
                else:
                    new_meta.pop(field, None)
            if "status" in rdef.subresources:
                new.pop("status", None)
                if "status" in current:
                    new["status"] = current["status"]
            if meta.get("deletionTimestamp"):
                added = set(new_meta.get("finalizers") or []) - set(meta.get("finalizers") or [])
                if added:
                    raise ApiError(
                        422,
                        "Invalid",
                        f"metadata.finalizers: Forbidden: no new"
                        f" finalizers can be added if the object is being deleted,"
                        f" found new finalizers {sorted(added)}",
                    )
            try:
                resources.check_update(rdef, current, new)
                resources.validate_metadata(rdef, new)
            except resources.Invalid as e:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rdef.kind} "{meta["name"]}" is invalid: {e}',
                    name=meta["name"],
                    kind=rdef.kind,
                ) from None
            if rdef.has_generation and _spec_part(rdef, new) != _spec_part(rdef, current):
                new_meta["generation"] = int(meta.get("generation") or 0) + 1
        if new == current:
            return current  # a no-op: no new resourceVersion, no watch event
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            policy = self._policies.pop(meta["uid"], "Background")
            return self._remove(rdef, key, new, policy)
        return self._commit(rdef, key, new, current, "MODIFIED")
