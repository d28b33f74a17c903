"""The shared vocabulary of the harness API server: errors in the Kubernetes ``Status`` shape,
watch events, timestamps."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from .resources import ResourceDef

ObjKey = tuple[tuple[str, str, str], "str | None", str]  # (resource key, namespace, name)


class ApiError(Exception):
    """A failure answered in the ``Status`` shape of the Kubernetes API."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    rkey: tuple[str, str, str]
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None  # the previous state, for selector transitions in watches


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def qualified(rdef: ResourceDef) -> str:
    return f"{rdef.plural}.{rdef.group}" if rdef.group else rdef.plural


def not_found(rdef: ResourceDef, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(rdef)} "{name}" not found',
        name=name,
        group=rdef.group,
        kind=rdef.plural,
    )


def conflict(rdef: ResourceDef, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rdef.plural} "{name}":'
        " the object has been modified; please apply your changes to the latest"
        " version and try again",
        name=name,
        group=rdef.group,
        kind=rdef.plural,
    )
