"""Plain-JSON requests through a ``kubernetes.client.ApiClient`` (its auth, host and pool),
for code that wants dicts rather than the generated models; and a polling helper."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes.client

T = TypeVar("T")

MERGE_PATCH = "application/merge-patch+json"


def request_json(
    client: kubernetes.client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    content_type: str | None = None,
    query: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Any:
    """Send one request; return the parsed JSON; raise ``kubernetes.client.ApiException``
    (with ``.status``) for any answer >= 400."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    method, url, headers, body, _ = client.param_serialize(
        method=method,
        resource_path=path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(
        method, url, header_params=headers, body=body, _request_timeout=timeout
    )
    data = response.read()
    if response.status >= 400:
        raise kubernetes.client.ApiException(
            status=response.status, reason=response.reason, body=data.decode(errors="replace")
        )
    return json.loads(data) if data else None


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; return that value.
    Raises TimeoutError with ``message`` (a string, or a callable for late details)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for: {text}")
        time.sleep(interval)
