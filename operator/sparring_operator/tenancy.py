"""What a tenant's game may use, read from the API: the runtime it runs on and the credentials of
its store. The rules themselves are in `runtimes` (pure); this module only reads.

- A game names a runtime (`spec.runtimeRef`): a ClusterSparringRuntime, or a SparringRuntime of
  the game's own namespace, never another's. With none, the operator's default runtime (the
  chart's); where the chart names none, the game must name one (`require_runtime`). Only an
  operator started by hand, with neither setting, plays on `runtimes.builtin_runtime`.
- The store is opened only with a Secret the effective game names, read in the game's own
  namespace. The operator never falls back to its own identity (boto3's default chain): an s3
  store without a Secret stalls the game.

A runtime read is kept for `RUNTIME_TTL_SECONDS`, shared by every game on it: read on every
pass, one GET per pass made a 100-game burst 1.45-1.61x slower end to end
(benchmarks/operator_scale.py --runtimes builtin cluster), each pass holding a reconcile thread
on one more round trip. A change to a runtime (its deletion, or the operator losing the right
to read it, included) therefore reaches the passes that start more than that long after it; a
runtime found missing or unreadable is not kept, and is asked for again on the next pass.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from pydantic import ValidationError
from sparring_trainer.store import ArtifactStore, StoreError, open_store

from sparring_operator.api import GROUP, VERSION, AdversarialGame
from sparring_operator.jobs import OperatorSettings
from sparring_operator.refusals import spec_errors
from sparring_operator.runtimeapi import (
    CLUSTER_RUNTIME_KIND,
    CLUSTER_RUNTIME_PLURAL,
    RUNTIME_PLURAL,
    RuntimeSpec,
)
from sparring_operator.runtimes import (
    OnRuntime,
    RuntimeUnavailable,
    apply_runtime,
    builtin_runtime,
)

RUNTIME_TTL_SECONDS = 5.0


class SecretUnavailable(StoreError):
    """The game's storage Secret is missing, unreadable or lacks a key: the store cannot be
    opened until someone fixes it, so the game is Stalled (not Failed) meanwhile."""


class NoStoreCredentials(SecretUnavailable):
    """Neither the game nor its runtime names a Secret for an s3 store."""


@dataclass
class Tenancy:
    api: k8s.ApiClient
    settings: OperatorSettings
    default_runtime: str | None = None  # a ClusterSparringRuntime's name
    # No default runtime and no built-in one: a game must name its runtime (the chart with an
    # empty defaultRuntime.name). The built-in runtime is for an operator run by hand.
    require_runtime: bool = False
    clock: Callable[[], float] = time.monotonic
    # (kind, namespace or "", name) -> (when read, label, spec): see RUNTIME_TTL_SECONDS.
    _runtimes: dict[tuple[str, str, str], tuple[float, str, RuntimeSpec]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def place(self, game: AdversarialGame) -> OnRuntime:
        """The game on its runtime (RuntimeRefused / RuntimeUnavailable when it cannot be)."""
        name, runtime = self.runtime_of(game)
        return apply_runtime(game, runtime, name, self.settings)

    def runtime_of(self, game: AdversarialGame) -> tuple[str, RuntimeSpec]:
        ref = game.spec.runtime_ref
        kind: str
        if ref is not None:
            kind, name = ref.kind, ref.name
        elif self.default_runtime is not None:
            kind, name = CLUSTER_RUNTIME_KIND, self.default_runtime
        elif self.require_runtime:
            raise RuntimeUnavailable(
                "spec.runtimeRef: required: this operator has no default runtime; name a "
                "ClusterSparringRuntime, or a SparringRuntime of the game's namespace"
            )
        else:
            return "the operator's built-in runtime", builtin_runtime(self.settings)
        ref_field = "spec.runtimeRef" if ref else "spec.runtimeRef (unset: the operator's default)"
        namespace = game.metadata.namespace
        where = "" if kind == CLUSTER_RUNTIME_KIND else f" in namespace {namespace!r}"
        label = f"{kind} {name!r}"
        key = (kind, "" if kind == CLUSTER_RUNTIME_KIND else namespace, name)
        now = self.clock()
        known = self._runtimes.get(key)
        if known is not None and now - known[0] < RUNTIME_TTL_SECONDS:
            return known[1], known[2]
        custom: Any = k8s.CustomObjectsApi(self.api)
        try:
            if kind == CLUSTER_RUNTIME_KIND:
                obj = custom.get_cluster_custom_object(GROUP, VERSION, CLUSTER_RUNTIME_PLURAL, name)
            else:  # only the game's own namespace: a game cannot borrow another team's runtime
                obj = custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, RUNTIME_PLURAL, name
                )
        except ApiException as exc:
            if exc.status not in (403, 404):
                raise
            self._runtimes.pop(key, None)
            problem = "not found" if exc.status == 404 else "not readable by the operator"
            raise RuntimeUnavailable(f"{ref_field}: {label} {problem}{where}") from None
        try:
            spec = RuntimeSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:  # the CRD's schema let it through: say what is wrong
            raise RuntimeUnavailable(
                f"{ref_field}: {label} is invalid: {spec_errors(exc)}"
            ) from None
        self._runtimes[key] = (now, label, spec)
        return label, spec

    def open_store(self, game: AdversarialGame) -> ArtifactStore:
        """The effective game's store, opened with its Secret's keys and nothing else."""
        storage = game.spec.storage
        if storage.uri.startswith("file:"):
            return open_store(storage)
        if storage.secret_ref is None:
            raise NoStoreCredentials(
                f"spec.storage.secretRef: no Secret for {storage.uri}: the game names none and "
                "its runtime none; the operator never opens a game's store with its own identity"
            )
        name, namespace = storage.secret_ref.name, game.metadata.namespace
        core: Any = k8s.CoreV1Api(self.api)
        try:  # only a Secret in the game's own namespace: never another team's keys
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status not in (403, 404):
                raise
            problem = "not found" if exc.status == 404 else "not readable by the operator"
            raise SecretUnavailable(
                f"spec.storage.secretRef: Secret {name!r} {problem} in namespace "
                f"{namespace!r} (a game can only use Secrets in its own namespace)"
            ) from None
        data = secret.data or {}
        try:
            credentials = (
                base64.b64decode(data[storage.secret_ref.access_key_id_key]).decode(),
                base64.b64decode(data[storage.secret_ref.secret_access_key_key]).decode(),
            )
        except KeyError as exc:
            # Stalled, not Failed: the Secret can still be fixed (the game then goes on).
            raise SecretUnavailable(
                f"spec.storage.secretRef: Secret {name!r} in namespace {namespace!r} "
                f"has no key {exc.args[0]!r}"
            ) from None
        return open_store(storage, credentials=credentials)
