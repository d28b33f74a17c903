"""Label and field selectors as in ``?labelSelector=...&fieldSelector=...`` (kmock 0.8 has none).

Label selector grammar (the set-based one of the real API): ``a=b``, ``a==b``, ``a!=b``,
``a`` (exists), ``!a`` (does not exist), ``a in (x,y)``, ``a notin (x,y)``, comma = AND.
Field selectors: ``path=value``, ``path==value``, ``path!=value`` on dotted paths such as
``metadata.name``, ``metadata.namespace`` or ``status.phase`` (the real API only allows a few
paths per resource; here any path works, which is more lenient, never stricter).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]

_SET_EXPR = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


class SelectorError(ValueError):
    """A selector that cannot be parsed; the server answers 400 Bad Request."""


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``(...)``."""
    terms: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


def _label_term(term: str) -> Callable[[Mapping[str, str]], bool]:
    match = _SET_EXPR.match(term)
    if match:
        key, op, raw_values = match.groups()
        values = {v.strip() for v in raw_values.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (part.strip() for part in term.split(op, 1))
            if not key:
                raise SelectorError(f"invalid label selector term: {term!r}")
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if re.fullmatch(r"[A-Za-z0-9._/-]+", term):
        return lambda labels: term in labels
    raise SelectorError(f"invalid label selector term: {term!r}")


def label_selector(text: str | None) -> Predicate:
    """A predicate over whole objects that checks ``metadata.labels``."""
    terms = [_label_term(term) for term in _split_terms(text or "")]

    def check(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(term(labels) for term in terms)

    return check


def _lookup(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(text: str | None) -> Predicate:
    checks: list[Predicate] = []
    for term in _split_terms(text or ""):
        for op in ("!=", "==", "="):
            if op in term:
                path, value = (part.strip() for part in term.split(op, 1))
                if op == "!=":
                    checks.append(lambda obj, p=path, v=value: _lookup(obj, p) != v)
                else:
                    checks.append(lambda obj, p=path, v=value: _lookup(obj, p) == v)
                break
        else:
            raise SelectorError(f"invalid field selector term: {term!r}")
    return lambda obj: all(check(obj) for check in checks)


def match_labels(selector: Mapping[str, Any] | None) -> Predicate:
    """A ``metav1.LabelSelector`` (matchLabels + matchExpressions) as a predicate."""
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op in ("In", "NotIn"):
            parts.append(f"{key} {op.lower()} ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return label_selector(",".join(parts))
