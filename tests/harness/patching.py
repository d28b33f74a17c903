"""The three patch formats of the Kubernetes API, applied to plain JSON-like dicts.

kmock 0.8 only deep-merges dicts. Real clients send three formats and the differences matter:

* ``application/merge-patch+json`` (RFC 7386): kopf and ``CustomObjectsApi`` use it; ``null``
  deletes a key, lists are replaced as a whole.
* ``application/json-patch+json`` (RFC 6902): kopf uses it for finalizers, guarded by a
  ``test`` of ``/metadata/resourceVersion``; a failed ``test`` must answer 422 so that kopf
  retries on its next cycle (applied with the ``jsonpatch`` library, a kopf dependency).
* ``application/strategic-merge-patch+json``: what the ``kubernetes`` client sends for any
  dict body to a built-in resource. Some lists are merged by a key (containers by name,
  conditions by type, ...) instead of being replaced. Only the merge keys and directives
  that matter for Jobs, Pods and metadata are implemented here.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# patchMergeKey of the lists of the built-in types that the operator and the kubelet touch.
# Lists not named here are replaced as a whole, as in the real API for lists without a key.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}
# Lists of scalars with patchStrategy=merge: union instead of replace.
_MERGED_SCALAR_LISTS = {"finalizers"}


class PatchError(ValueError):
    """A patch that cannot be applied; the server answers 422 Unprocessable Entity."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and leaves both arguments untouched."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], ops: Any) -> dict[str, Any]:
    """RFC 6902 JSON patch; any failure (including a failed ``test``) is a PatchError."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        result = jsonpatch.JsonPatch(ops).apply(target, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError) as e:
        raise PatchError(f"the JSON patch cannot be applied: {e}") from e
    if not isinstance(result, dict):
        raise PatchError("the JSON patch replaced the whole object with a non-object")
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A subset of the strategic merge patch: keyed list merges and the common directives
    (``$patch: replace|delete``, ``$deleteFromPrimitiveList/<key>``, ``$retainKeys``);
    ``$setElementOrder/<key>`` is accepted and ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
        elif key.startswith("$setElementOrder/") or key == "$patch":
            continue
        elif key == "$retainKeys":
            result = {k: v for k, v in result.items() if k in value or k in patch}
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in _MERGE_KEYS:
            result[key] = _merge_keyed_list(result.get(key) or [], value, _MERGE_KEYS[key])
        elif isinstance(value, list) and key in _MERGED_SCALAR_LISTS:
            old = list(result.get(key) or [])
            result[key] = old + [v for v in value if v not in old]
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_keyed_list(old: list[Any], patch: list[Any], key: str) -> list[Any]:
    result = copy.deepcopy(old)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"an item of a list merged by {key!r} has no {key!r}: {item!r}")
        index = next((i for i, o in enumerate(result) if o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Dispatch on the Content-Type (parameters such as ``; charset=utf-8`` are ignored).

    Server-side apply is approximated by a merge patch (no field ownership, no conflicts)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == JSON_PATCH:
        return json_patch(target, patch)
    if not isinstance(patch, dict):
        raise PatchError(f"a {kind} patch must be a JSON object")
    if kind == STRATEGIC_MERGE_PATCH:
        result = strategic_merge_patch(target, patch)
    else:
        result = merge_patch(target, patch)
    if not isinstance(result, dict):
        raise PatchError("the patch deleted the whole object")
    return result
