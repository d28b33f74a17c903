"""A game on its runtime: what the runtime refuses, and the game as the operator plays it.

Pure: `apply_runtime` takes the game, the runtime's spec and a resolver, and either raises
`RuntimeRefused` naming the first field the runtime does not allow, or returns the effective
game (images, resources, scheduling, pull policy and store filled in from the runtime) with the
operator settings of its phase pods. Everything downstream (the store the operator opens, the
Jobs, the game document the phases read) sees only the effective game, so a boundary enforced
here holds everywhere. It is applied on every pass, to the runtime as `tenancy` last read it
(kept up to RUNTIME_TTL_SECONDS): a runtime change reaches the phases that start after that
long, never a running one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel
from sparring_trainer.document import StorageSpec

from sparring_operator.api import (
    AdversarialGame,
    PhaseSpec,
    PhasesSpec,
    SchedulingSpec,
    overlay,
)
from sparring_operator.endpoints import ANY, Resolver, endpoint_refusal, system_resolver
from sparring_operator.jobs import OperatorSettings
from sparring_operator.refusals import spec_errors
from sparring_operator.runtimeapi import RuntimeSpec, RuntimeStorage
from sparring_operator.validate import model_and_data_refs

PHASE_FIELDS = tuple(PhasesSpec.model_fields)  # default, prepare, sample, ...


class RuntimeRefused(Exception):
    """The game asks for something its runtime does not allow; the message names the field.
    When the game fails its own checks on the runtime, `errors` holds pydantic's errors whole
    (the message is cut short for the game's status; `sparring validate` shows each)."""

    def __init__(self, message: str, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class RuntimeUnavailable(Exception):
    """The runtime the game names does not exist or cannot be read (yet)."""


@dataclass(frozen=True)
class OnRuntime:
    """The game as played on its runtime, and the settings its phase Jobs are built with."""

    game: AdversarialGame
    settings: OperatorSettings
    runtime: str  # "ClusterSparringRuntime/default", for messages


def builtin_runtime(settings: OperatorSettings) -> RuntimeSpec:
    """The runtime of an operator started without a default runtime (development, tests that
    run the operator as a process): the operator's flags, any image or endpoint, everything
    overridable. The chart always names a real default runtime."""
    return RuntimeSpec(
        images=[settings.trainer_image, "*"],
        image_pull_policy=settings.image_pull_policy,
        service_account_name=settings.phase_service_account,
        storage=RuntimeStorage(allowed_uris=[ANY], allowed_endpoints=[ANY]),
        overridable=["resources", "scheduling", "runtimeClassName", "storage", "imagePullPolicy"],
    )


def apply_runtime(
    game: AdversarialGame,
    runtime: RuntimeSpec,
    name: str,
    settings: OperatorSettings,
    resolve: Resolver = system_resolver,
) -> OnRuntime:
    """The effective game on `runtime` (called `name` in messages), or RuntimeRefused."""
    spec = game.spec
    phases = {field: _phase(spec.phases, field, runtime, name) for field in PHASE_FIELDS}
    scheduling = _scheduling(spec.scheduling, runtime, name)
    pull = spec.pod.image_pull_policy
    if pull is not None and pull != runtime.image_pull_policy:
        _overridable(runtime, "imagePullPolicy", "spec.pod.imagePullPolicy", name)
    _check_models(game, runtime, name)
    storage = effective_storage(spec.storage, runtime, name, resolve)
    effective = game.model_copy(
        update={
            "spec": spec.model_copy(
                update={
                    "phases": PhasesSpec(**phases),
                    "scheduling": scheduling,
                    "storage": storage,
                    "pod": spec.pod.model_copy(
                        update={"image_pull_policy": pull or runtime.image_pull_policy}
                    ),
                }
            )
        }
    )
    try:  # the runtime's resources meet the game's own checks (batch sizes divide among GPUs)
        effective = AdversarialGame.model_validate(
            effective.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
    except ValidationError as exc:
        raise RuntimeRefused(
            f"on {name}: {spec_errors(exc)}", exc.errors(include_url=False)
        ) from None
    on = dataclasses.replace(
        settings,
        trainer_image=runtime.images[0],
        phase_service_account=runtime.service_account_name,
        image_pull_policy=runtime.image_pull_policy,
    )
    return OnRuntime(effective, on, name)


def effective_storage(
    storage: StorageSpec, runtime: RuntimeSpec, name: str, resolve: Resolver
) -> StorageSpec:
    """The store the game plays in, with the only credentials the operator may use for it.

    A file:// folder (the local `sparring run` store) stands for the runtime's store. A store
    the game names itself must be one the runtime lists, reached through an endpoint it allows,
    and opened with the game's own Secret: the runtime's Secret holds keys for the runtime's
    store, and lending them to another would make the operator a confused deputy.
    """
    own = runtime.storage
    if storage.uri.startswith("file:"):
        if own.uri is None:
            return storage  # a development operator's shared folder (allowFileStore)
        return StorageSpec(
            uri=own.uri,
            endpoint=own.endpoint,
            region=own.region,
            path_style=own.path_style,
            secret_ref=own.secret_ref,
        )
    if storage.uri == own.uri and storage.endpoint in (None, own.endpoint):
        secret = storage.secret_ref if _may(runtime, "storage") else None
        return StorageSpec(
            uri=own.uri,
            endpoint=own.endpoint,
            region=storage.region or own.region,
            path_style=own.path_style,
            secret_ref=secret or own.secret_ref,
        )
    _overridable(runtime, "storage", "spec.storage.uri", name)
    if ANY not in own.allowed_uris and storage.uri not in own.allowed_uris:
        allowed = ", ".join(own.allowed_uris) or "none"
        raise RuntimeRefused(
            f"spec.storage.uri: {storage.uri!r} is not a store {name} allows (allowed: "
            f"{allowed}); leave spec.storage out to play in the runtime's store"
        )
    lent = own.secret_ref.name if own.secret_ref else None
    if storage.secret_ref is not None and storage.secret_ref.name == lent:
        # The runtime's keys are for the runtime's store: named for another, they would go
        # wherever the game points them (the operator's reads and the phase pods' env).
        raise RuntimeRefused(
            f"spec.storage.secretRef: {lent!r} is {name}'s Secret, for its own store only; a "
            "store the game chooses needs the game's own Secret"
        )
    if storage.endpoint is not None:
        why = endpoint_refusal("spec.storage.endpoint", storage.endpoint,
                               own.allowed_endpoints, resolve)  # fmt: skip
        if why is not None:
            raise RuntimeRefused(f"{why} ({name})")
    return storage


def image_allowed(image: str, allowed: list[str]) -> bool:
    """Exactly one of `allowed`, or under an entry ending in '*'."""
    return any(
        image.startswith(entry[:-1]) if entry.endswith("*") else image == entry for entry in allowed
    )


def _phase(phases: PhasesSpec, field: str, runtime: RuntimeSpec, name: str) -> PhaseSpec | None:
    spec: PhaseSpec | None = getattr(phases, field)
    default = runtime.phases.for_phase(field.replace("_", "-"))
    where = f"spec.phases.{to_camel(field)}"
    if spec is None:
        if getattr(runtime.phases, field) is None:
            return None  # the game's default applies, as the runtime's default does
        # The runtime sets this phase apart: the game's default, with the runtime's phase.
        spec, where = phases.default, "spec.phases.default"
    if spec.image is not None and not image_allowed(spec.image, runtime.images):
        raise RuntimeRefused(
            f"{where}.image: {spec.image!r} is not an image {name} allows "
            f"({', '.join(runtime.images)})"
        )
    update: dict[str, Any] = {"image": spec.image or default.image or runtime.images[0]}
    if "resources" in spec.model_fields_set:
        _overridable(runtime, "resources", f"{where}.resources", name)
    elif default.resources is not None:
        update["resources"] = default.resources
    if spec.scheduling is not None:
        _check_scheduling(spec.scheduling, runtime, f"{where}.scheduling", name)
    if default.scheduling is not None or spec.scheduling is not None:
        update["scheduling"] = overlay(default.scheduling or SchedulingSpec(), spec.scheduling)
    return spec.model_copy(update=update)


def _scheduling(game: SchedulingSpec, runtime: RuntimeSpec, name: str) -> SchedulingSpec:
    _check_scheduling(game, runtime, "spec.scheduling", name)
    return overlay(runtime.scheduling, game) if game.model_fields_set else runtime.scheduling


def _check_scheduling(game: SchedulingSpec, runtime: RuntimeSpec, where: str, name: str) -> None:
    # The RuntimeClass is the sandbox (gVisor, Kata): its own override, never part of
    # `scheduling`'s, which moves pods between queues, priorities and nodes.
    if game.runtime_class_name is not None:
        _overridable(runtime, "runtimeClassName", f"{where}.runtimeClassName", name)
    chosen = sorted(game.model_fields_set - {"runtime_class_name"})
    if chosen:
        _overridable(runtime, "scheduling", f"{where}.{to_camel(chosen[0])}", name)


def _check_models(game: AdversarialGame, runtime: RuntimeSpec, name: str) -> None:
    sources = runtime.allowed_model_sources
    if sources is None:
        return
    for loc, ref in model_and_data_refs(game.spec.game, ("spec", "game")):
        if loc[-1] in ("model", "tokenizer") and not any(ref.startswith(s) for s in sources):
            field = ".".join(str(part) for part in loc)
            raise RuntimeRefused(
                f"{field}: {ref!r} is not a model source {name} allows ({', '.join(sources)})"
            )


def _may(runtime: RuntimeSpec, what: str) -> bool:
    return what in runtime.overridable


def _overridable(runtime: RuntimeSpec, what: str, field: str, name: str) -> None:
    if not _may(runtime, what):
        raise RuntimeRefused(
            f"{field}: {name} does not let a game set its {what} (it may override: "
            f"{', '.join(runtime.overridable) or 'nothing'})"
        )
