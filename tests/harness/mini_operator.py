"""The smallest kopf operator that proves kopf works against the harness API server: it
answers the creation of an AdversarialGame by patching its status (through the status
subresource), adds and removes its finalizer on deletion, and creates an owned ConfigMap.

Run it with ``kopf run --standalone --namespace default tests/harness/mini_operator.py``
and ``KUBECONFIG`` pointing at :attr:`harness.KubeApi.kubeconfig`.
"""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes.client
import kubernetes.config

GROUP, VERSION, PLURAL = "sparring.dev", "v1alpha1", "adversarialgames"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Quick reactions in tests: no long waits between retries or for idle watch streams.
    settings.watching.server_timeout = 30
    settings.networking.error_backoffs = [0.2, 0.5, 1.0]
    settings.persistence.finalizer = "sparring.dev/mini-operator"


@kopf.on.create(GROUP, VERSION, PLURAL)
def created(name: str, namespace: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    config_map = {"metadata": {"name": f"{name}-seen"}, "data": {"game": name}}
    kopf.adopt(config_map, owner=body)
    client = kubernetes.config.new_client_from_config()  # KUBECONFIG from the environment
    with client:
        kubernetes.client.CoreV1Api(client).create_namespaced_config_map(namespace, config_map)
    return {"phase": "Seen", "seenGeneration": body.metadata.get("generation")}


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def updated(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    patch.status["phase"] = "Updated"
    patch.status["seenGeneration"] = body.metadata.get("generation")


@kopf.on.delete(GROUP, VERSION, PLURAL)
def deleted(**_: Any) -> None:
    """Non-optional: makes kopf put a finalizer on every game and remove it here."""
