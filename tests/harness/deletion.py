"""Deletion semantics of the harness store (a mixin of :class:`harness.store.Store`):
finalizers, propagation policies, garbage collection by ownerReferences, namespaces and CRDs
taking their contents with them."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from . import resources
from .errors import ObjKey, conflict, now
from .resources import ResourceDef

_JOB_ORPHAN_WARNING = (
    "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background"
    " to remove them or set propagationPolicy=Orphan to suppress this warning"
)


class DeletionMixin:
    # Provided by Store.
    lock: threading.RLock
    objects: dict[ObjKey, dict[str, Any]]
    resources: dict[tuple[str, str, str], ResourceDef]
    _policies: dict[str, str]
    get: Callable[..., dict[str, Any]]
    _commit: Callable[..., dict[str, Any]]
    register: Callable[..., None]

    def delete(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        options: dict[str, Any],
        warnings: list[str],
    ) -> dict[str, Any]:
        """Returns the object: with deletionTimestamp if finalizers hold it, else its last state."""
        with self.lock:
            current = self.get(rdef, namespace, name)
            meta = current["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise conflict(rdef, name)
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise conflict(rdef, name)
            policy = options.get("propagationPolicy")
            if options.get("orphanDependents") is True:
                policy = "Orphan"
            if policy is None and rdef.key == ("batch", "v1", "jobs"):
                policy = "Orphan"  # batch/v1 keeps this default for backwards compatibility
                warnings.append(_JOB_ORPHAN_WARNING)
            policy = policy or "Background"
            key: ObjKey = (rdef.key, namespace, name)
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return current
                self._policies[meta["uid"]] = policy
                new = copy.deepcopy(current)
                new["metadata"]["deletionTimestamp"] = now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                if rdef.has_generation:
                    new["metadata"]["generation"] = int(meta.get("generation") or 0) + 1
                return self._commit(rdef, key, new, current, "MODIFIED")
            return self._remove(rdef, key, current, policy)

    def _remove(
        self, rdef: ResourceDef, key: ObjKey, obj: dict[str, Any], policy: str
    ) -> dict[str, Any]:
        old = self.objects.get(key)
        final = self._commit(rdef, key, None, obj, "DELETED")
        if old is not None:
            final_meta = final["metadata"]
            if rdef.key == ("", "v1", "namespaces"):
                for okey in [k for k in self.objects if k[1] == final_meta["name"]]:
                    if okey in self.objects:
                        self._delete_key(okey, "Background")
            if rdef.plural == "customresourcedefinitions" and not rdef.custom:
                for gone in resources.resource_from_crd(final):
                    for okey in [k for k in self.objects if k[0] == gone.key]:
                        self._commit(gone, okey, None, self.objects[okey], "DELETED")
                    self.register(None, remove=gone)
            self._collect_garbage(final_meta["uid"], policy)
        return final

    def _delete_key(self, key: ObjKey, policy: str) -> None:
        rdef = self.resources.get(key[0])
        if rdef is not None:
            self.delete(rdef, key[1], key[2], {"propagationPolicy": policy}, [])

    def _collect_garbage(self, owner_uid: str, policy: str) -> None:
        """Background GC, done at once: dependents whose every owner is gone are deleted
        (with Background propagation, as the real garbage collector does); dependents with
        another live owner, or all of them with Orphan, just lose the reference."""
        live_uids = {obj["metadata"]["uid"] for obj in self.objects.values()}
        for key, obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if key not in self.objects or not any(r.get("uid") == owner_uid for r in refs):
                continue
            remaining = [r for r in refs if r.get("uid") != owner_uid]
            if policy != "Orphan" and not any(r.get("uid") in live_uids for r in remaining):
                self._delete_key(key, "Background")
                continue
            new = copy.deepcopy(obj)
            if remaining:
                new["metadata"]["ownerReferences"] = remaining
            else:
                new["metadata"].pop("ownerReferences", None)
            self._commit(self.resources[key[0]], key, new, obj, "MODIFIED")
