"""`SparringRuntime` (namespaced) and `ClusterSparringRuntime`: what the platform team owns and a
game's author only picks (`spec.runtimeRef`), as Kubeflow Trainer's TrainingRuntime and
ClusterTrainingRuntime do for training jobs.

A runtime says which trainer images may run, with which pull policy and ServiceAccount (the
phase pods' cloud identity), the default resources and scheduling of phase pods, the store a
game writes to and the credentials the operator reads it with, which other store endpoints and
prefixes a game may name, which model sources it may load, and which of these a game may
override. `runtimes.apply_runtime` enforces it; `crdgen` renders both CRDs from these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from sparring_trainer.document import SecretRef, StorageSpec

from sparring_operator.api import ResourceList, SchedulingSpec
from sparring_operator.apitypes import MODEL_CONFIG
from sparring_operator.endpoints import ANY, Allowed
from sparring_operator.podsettings import DNS_LABEL, DNS_SUBDOMAIN

RUNTIME_KIND = "SparringRuntime"
CLUSTER_RUNTIME_KIND = "ClusterSparringRuntime"
RUNTIME_PLURAL = "sparringruntimes"
CLUSTER_RUNTIME_PLURAL = "clustersparringruntimes"

Overridable = Literal["resources", "scheduling", "runtimeClassName", "storage", "imagePullPolicy"]


class _Model(BaseModel):
    model_config = MODEL_CONFIG


class RuntimePhase(_Model):
    """Defaults of one phase's pods."""

    image: str | None = None
    """Trainer image of the phase when the game names none (default: the first of `images`)."""
    resources: ResourceList | None = None
    """Requests/limits of the phase when the game sets none."""
    scheduling: SchedulingSpec | None = None
    """Where the phase's pods run: each field given here replaces `scheduling`'s (e.g.
    sampling on inference nodes)."""


class RuntimePhases(_Model):
    """Per-phase defaults; `default` applies to every phase not named."""

    default: RuntimePhase = RuntimePhase()
    """Applies to every phase."""
    prepare: RuntimePhase | None = None
    """Round 0."""
    sample: RuntimePhase | None = None
    """Sampling."""
    score: RuntimePhase | None = None
    """Scoring."""
    update_adversary: RuntimePhase | None = None
    """RM / attacker training."""
    update_policy: RuntimePhase | None = None
    """Policy / defender training."""
    evaluate: RuntimePhase | None = None
    """Round evaluation."""

    def for_phase(self, phase: str) -> RuntimePhase:
        override = getattr(self, phase.replace("-", "_"), None)
        return override if override is not None else self.default


class RuntimeStorage(_Model):
    """The store of the runtime's games, and which others a game may name."""

    uri: str | None = None
    """s3://bucket[/prefix]: the store of every game that names none of its own (a game whose
    spec.storage.uri is a file:// folder, the local `sparring run` store, plays here). Each game
    writes under {uri}/{namespace}/{game}/."""
    endpoint: str | None = None
    """S3 endpoint URL of `uri`; unset for AWS."""
    region: str | None = None
    """S3 region of `uri`."""
    path_style: bool = False
    """Path-style addressing for `uri`."""
    secret_ref: SecretRef | None = None
    """Secret with the credentials for `uri`, looked up in the game's own namespace (the platform
    puts one per tenant namespace, its keys scoped to that namespace's prefix). The operator
    never falls back to its own identity: without it (and without the game's own secretRef) a
    game is Stalled."""
    allowed_uris: list[str] = []
    """Stores a game may name in spec.storage.uri when `storage` is overridable: each exactly
    (a game still writes only under {uri}/{namespace}/{game}/). None may lie inside another.
    '*' allows any store: on a cluster of one team only, as a game could then name a folder
    inside another team's store."""
    allowed_endpoints: list[str] = []
    """Endpoints a game may name in spec.storage.endpoint: scheme://host[:port] or
    scheme://*.domain[:port]. Checked before any connection, on every address the host resolves
    to; link-local addresses (cloud metadata) are refused whatever this says."""

    @field_validator("uri")
    @classmethod
    def _store_uri(cls, value: str | None) -> str | None:
        return None if value is None else StorageSpec(uri=value).uri

    @field_validator("allowed_uris")
    @classmethod
    def _not_nested(cls, values: list[str]) -> list[str]:
        # {uri}/{namespace}/{game} is unique per game only if no allowed store lies inside
        # another: s3://b/team-b/g (namespace team-b, game g under s3://b) is also game g's
        # namespace folder under s3://b/team-b.
        uris = [value if value == ANY else StorageSpec(uri=value).uri for value in values]
        for a in uris:
            for b in uris:
                if a != b and b.startswith(a.rstrip("/") + "/"):
                    raise ValueError(f"allowed store {b!r} lies inside {a!r}")
        return uris

    @model_validator(mode="after")
    def _uri_not_nested(self) -> RuntimeStorage:
        # The same rule between the runtime's own store and those a game may name.
        own = self.uri
        for other in self.allowed_uris:
            if own is None or other in (ANY, own):
                continue
            if other.startswith(own.rstrip("/") + "/") or own.startswith(other.rstrip("/") + "/"):
                raise ValueError(f"allowedUris: {other!r} and uri {own!r} lie one inside the other")
        return self

    @field_validator("allowed_endpoints")
    @classmethod
    def _endpoints(cls, values: list[str]) -> list[str]:
        for value in values:
            Allowed.parse(value)
        return values


class RuntimeSpec(_Model):
    """What phases of games on this runtime may run, and where."""

    images: Annotated[list[str], Field(min_length=1)]
    """Trainer images a game may run (spec.phases.*.image); an entry ending in '*' allows every
    image it prefixes (e.g. registry.example.com/ml/sparring-trainer:*). The first is the
    default and must be a whole image name."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "Always"
    """Pull policy of phase containers. Always makes the kubelet check the pod's pull
    credentials, so a game cannot run another team's private image cached on a node."""
    service_account_name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = None
    """ServiceAccount of phase pods in the game's namespace: their cloud identity (IRSA,
    workload identity annotations). Its token is never mounted."""
    phases: RuntimePhases = RuntimePhases()
    """Default image and resources per phase."""
    scheduling: SchedulingSpec = SchedulingSpec()
    """Queue, priority, node selector, tolerations ... of phase pods."""
    storage: RuntimeStorage = RuntimeStorage()
    """The store, its credentials, and the stores a game may name instead."""
    allowed_model_sources: list[str] | None = None
    """Prefixes a model or tokenizer reference must start with (e.g. hf://meta-llama/,
    s3://models/, tiny-random); unset: any."""
    overridable: list[Overridable] = ["resources", "scheduling"]
    """What a game may set itself: resources (spec.phases.*.resources), scheduling
    (spec.scheduling and spec.phases.*.scheduling: queue, priority, node selector, tolerations,
    affinity, spread; these can place pods on any node the tolerations reach), runtimeClassName
    (the sandbox), storage (spec.storage: one of allowedUris, with its own secretRef) and
    imagePullPolicy (spec.pod.imagePullPolicy)."""

    @model_validator(mode="after")
    def _default_image(self) -> RuntimeSpec:
        if self.images[0].endswith("*"):
            raise ValueError(  # field first: `sparring validate` points at its line
                "images[0]: the default image must be a whole image name (not a '*' prefix)"
            )
        return self


# ---- the resources as written in a file (`sparring validate`) --------------------------------
class RuntimeMeta(_Model):
    """The part of metav1.ObjectMeta a runtime file carries."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    """The runtime's name (a game's spec.runtimeRef.name)."""
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)] | None = None
    """A SparringRuntime's namespace: only that namespace's games may use it."""


class SparringRuntime(_Model):
    """A namespaced runtime as written in a file."""

    api_version: Literal["sparring.dev/v1alpha1"]
    kind: Literal["SparringRuntime"]
    metadata: RuntimeMeta
    spec: RuntimeSpec


class ClusterSparringRuntime(_Model):
    """A cluster-wide runtime as written in a file."""

    api_version: Literal["sparring.dev/v1alpha1"]
    kind: Literal["ClusterSparringRuntime"]
    metadata: RuntimeMeta
    spec: RuntimeSpec
