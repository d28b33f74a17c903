"""The `AdversarialGame` resource (group sparring.dev, version v1alpha1) as pydantic models.

One source of truth: `crdgen` renders the CRD in `crds/` from these models, `sparring validate`
checks files against them, and the operator parses live objects with them. The game block itself
(`spec.game`, `spec.storage`) lives in `sparring_trainer.config` so that the trainer can read it
without the operator.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from sparring_trainer.config import GameConfig, unsupported_parallelism
from sparring_trainer.document import StorageSpec, TrackingSpec

from sparring_operator.apitypes import DISK_QUANTITY, MODEL_CONFIG
from sparring_operator.placement import Affinity, TopologySpreadConstraint
from sparring_operator.podsettings import DNS_SUBDOMAIN, ModelCache, PodSettings

GROUP = "sparring.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AdversarialGame"
PLURAL = "adversarialgames"
SINGULAR = "adversarialgame"
SHORT_NAMES = ("ag", "advgame")

# Job names are "{game}-r{round:04d}-{phase}-a{attempt}" and must fit in 63 characters. The
# longest phase is "update-adversary" (16), rounds take 6 ("-r0001"), attempts up to "-a99": so
# 63 - len("-r0001-update-adversary-a99") = 36 characters are left for the game name.
MAX_GAME_NAME = 36
GAME_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_ROUNDS = 9999
_CREDENTIAL_KEYS = {
    "accesskey", "accesskeyid", "secretkey", "secretaccesskey", "password", "credentials",
    "token", "sessiontoken", "awsaccesskeyid", "awssecretaccesskey",
}  # fmt: skip


class _Model(BaseModel):
    model_config = MODEL_CONFIG


class Toleration(_Model):
    """A pod toleration (core/v1 shape)."""

    key: str | None = None
    """Taint key; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal."""
    value: str | None = None
    """Taint value for Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty means all."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class SchedulingSpec(_Model):
    """Where phase pods run."""

    queue_name: Annotated[str, Field(max_length=63)] | None = None
    """Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label (Kueue then owns Job suspend)."""
    priority_class_name: Annotated[str, Field(max_length=253)] | None = None
    """PriorityClass of phase pods."""
    node_selector: dict[str, str] = {}
    """Node labels phase pods must match."""
    tolerations: list[Toleration] = []
    """Taints phase pods tolerate (e.g. nvidia.com/gpu)."""
    affinity: Affinity | None = None
    """Node and pod (anti-)affinity of phase pods."""
    topology_spread_constraints: list[TopologySpreadConstraint] = []
    """How phase pods spread over zones or nodes."""
    runtime_class_name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = None
    """RuntimeClass of phase pods (e.g. nvidia, or a sandboxed runtime)."""


def overlay(base: SchedulingSpec, top: SchedulingSpec | None) -> SchedulingSpec:
    """`base` with each field `top` gives a value (not empty) replacing its own."""
    if top is None:
        return base
    given = {f: getattr(top, f) for f in type(top).model_fields}
    return base.model_copy(update={f: v for f, v in given.items() if v not in (None, {}, [])})


class ResourceList(_Model):
    """Requests/limits of one phase container."""

    cpu: str | None = None
    """CPU quantity, e.g. '4'."""
    memory: str | None = None
    """Memory quantity, e.g. '32Gi'."""
    gpu: Annotated[int, Field(ge=0, le=64)] = 0
    """nvidia.com/gpu count; more than 1 runs the phase data-parallel, one torchrun rank per GPU
    (each training batchSize is split evenly among them, so it must be a multiple)."""
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    """Nodes (pods) the phase runs on, each with `gpu` ranks: more than 1 makes each attempt an
    Indexed Job of that many pods, all started or none (Kueue admits them as one workload),
    meeting at pod 0's stable name through a headless Service; any pod failing fails the
    attempt. Training batch sizes must divide among nodes x GPUs ranks."""
    scratch: Annotated[str, Field(pattern=DISK_QUANTITY)] | None = None
    """Local scratch disk, e.g. '200Gi': the scratch volume's size limit and the pod's
    ephemeral-storage request (default: the operator's, 50Gi)."""


class RetrySpec(_Model):
    """Retries of a failed phase Job (preemption does not count)."""

    limit: Annotated[int, Field(ge=0, le=20)] = 2
    """Extra attempts after the first failure."""
    backoff_seconds: Annotated[int, Field(ge=1, le=86400)] = 30
    """First retry delay; doubles on each further attempt."""
    disruption_limit: Annotated[int, Field(ge=0, le=20)] = 3
    """Pod disruptions (preemption, eviction, node drain) one attempt survives, its pod replaced
    each time without using a retry; one more fails the attempt."""


class PhaseSpec(_Model):
    """Settings of one phase's Jobs."""

    image: str | None = None
    """Container image (default: the operator's trainer image)."""
    resources: ResourceList = ResourceList()
    """Container requests/limits."""
    retry: RetrySpec = RetrySpec()
    """Retry policy."""
    deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """activeDeadlineSeconds of the phase Job."""
    scheduling: SchedulingSpec | None = None
    """Where this phase's pods run: each field set here replaces spec.scheduling's (e.g. the
    sampling phase on inference nodes, training on another queue)."""
    pending_timeout_seconds: Annotated[int, Field(ge=10, le=86400)] = 900
    """How long a pod may be kept from starting (unschedulable, image not pullable, missing
    Secret or ServiceAccount) before the attempt counts as failed; a Job queued by Kueue waits
    without limit."""


class PhasesSpec(_Model):
    """Per-phase overrides; `default` applies to every phase not named."""

    default: PhaseSpec = PhaseSpec()
    """Applies to every phase."""
    prepare: PhaseSpec | None = None
    """Round 0: materialise base models and the evaluation RM."""
    sample: PhaseSpec | None = None
    """Policy (and attacker) sampling."""
    score: PhaseSpec | None = None
    """Scoring of the samples."""
    update_adversary: PhaseSpec | None = None
    """RM / attacker training."""
    update_policy: PhaseSpec | None = None
    """Policy / defender training."""
    evaluate: PhaseSpec | None = None
    """Round evaluation."""

    def for_phase(self, phase: str) -> PhaseSpec:
        override = getattr(self, phase.replace("-", "_"), None)
        return override if override is not None else self.default


class EarlyStopSpec(_Model):
    """End the game early when a round's metric crosses a threshold."""

    metric: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_]*$")]
    """Round metric name, e.g. rm_accuracy or reward_mean."""
    threshold: float
    """Value to compare with."""
    direction: Literal["above", "below"] = "above"
    """Stop when the metric is above (or below) the threshold."""


class RuntimeRef(_Model):
    """The runtime a game runs on, owned by the platform team (see runtimeapi.py)."""

    kind: Literal["ClusterSparringRuntime", "SparringRuntime"] = "ClusterSparringRuntime"
    """ClusterSparringRuntime, or SparringRuntime (looked up in the game's own namespace)."""
    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    """The runtime's name."""


class AdversarialGameSpec(_Model):
    """What game to play and how to run it."""

    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)] = 1
    """Rounds to play. May grow (the game continues) but never shrink."""
    suspend: bool = False
    """Pause: the running phase Job is deleted and started again on resume."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """Wall-clock limit of the whole game."""
    runtime_ref: RuntimeRef | None = None
    """The runtime this game runs on: images, identity, store and limits (default: the
    operator's default runtime, the chart's)."""
    storage: StorageSpec = StorageSpec()
    """Artifact store (checkpoints, samples, metrics). On a cluster a file:// folder stands for
    the runtime's store; another store only where the runtime allows it."""
    game: GameConfig
    """The game itself: models, data, algorithm settings."""
    phases: PhasesSpec = PhasesSpec()
    """Per-phase image, resources, retries and deadlines."""
    scheduling: SchedulingSpec = SchedulingSpec()
    """Queue, priority and placement of phase pods."""
    pod: PodSettings = PodSettings()
    """What every phase pod gets beside the operator's settings: environment (e.g. HF_TOKEN
    from a Secret), image pull secrets, extra volumes, labels and annotations, /dev/shm size,
    pull policy."""
    model_cache: ModelCache | None = None
    """A shared volume for base models and base checkpoints (default: each pod's scratch)."""
    early_stop: EarlyStopSpec | None = None
    """Optional early stop on a round metric."""
    tracking: TrackingSpec = TrackingSpec()
    """Experiment tracking besides the TensorBoard events every phase commits (MLflow, W&B)."""

    @field_validator("storage", mode="before")
    @classmethod
    def _no_inline_credentials(cls, storage: Any) -> Any:
        # Credentials belong in a Secret. Name every offending key with a pointed message
        # rather than a generic "extra field" error.
        if isinstance(storage, dict):
            inline = [k for k in storage if k.lower().replace("_", "") in _CREDENTIAL_KEYS]
            if inline:
                raise ValueError(
                    f"credentials must not be written inline ({', '.join(inline)}); put them "
                    "in a Secret and reference it with spec.storage.secretRef"
                )
        return storage


class Condition(_Model):
    """A metav1.Condition."""

    type: str
    """Ready, Running, Suspended, Succeeded, Failed or Stalled."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """CamelCase machine-readable reason."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: str
    """RFC 3339 time the status last changed."""
    observed_generation: int | None = None
    """Spec generation the condition was computed from."""


class Progress(_Model):
    """How far the running phase is, from its own reports to the store."""

    step: int
    """Steps (or prompts) done."""
    total: int
    """Steps (or prompts) in the phase."""
    unit: str = "steps"
    """What is counted."""
    percent: float
    """step / total in percent."""
    eta_seconds: int | None = None
    """Estimated seconds left, from the pace since the Job started."""
    updated_at: str
    """When the phase last reported."""


class ActiveJob(_Model):
    """The phase Job now running."""

    name: str
    """Job name."""
    round: int
    """Round of the phase."""
    phase: str
    """Phase name."""
    attempt: int
    """Attempt number (1 = first)."""
    started_at: str | None = None
    """When the Job was created."""
    progress: Progress | None = None
    """Progress of the phase, when it has reported any."""


class RoundStatus(_Model):
    """What one round produced."""

    round: int
    """Round number (0 = prepare)."""
    metrics: dict[str, float] = {}
    """Round metrics (rm_accuracy, rm_ece, reward_mean, win_rate ...)."""
    artifacts: dict[str, str] = {}
    """Phase name -> URI of its committed outputs."""
    completed_at: str | None = None
    """When the round's last phase committed."""


class StoreLocation(_Model):
    """Where a store is (never its credentials)."""

    uri: str
    """s3://bucket[/prefix] or file://path."""
    endpoint: str | None = None
    """S3 endpoint URL."""
    region: str | None = None
    """S3 region."""
    path_style: bool = False
    """Path-style S3 addressing."""

    @classmethod
    def of(cls, storage: StorageSpec) -> StoreLocation:
        return cls.model_validate(storage.model_dump(exclude={"secret_ref"}))

    def spec(self) -> StorageSpec:
        """As a spec.storage, to open it with this machine's own credentials."""
        return StorageSpec.model_validate(self.model_dump())


GamePhase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]


class AdversarialGameStatus(_Model):
    """What the operator (or `sparring run`) observed."""

    phase: GamePhase = "Pending"
    """Pending, Running, Suspended, Succeeded or Failed."""
    current_round: int = 0
    """Round being played (0 = prepare)."""
    current_phase: str | None = None
    """Phase being played."""
    completed_rounds: int = 0
    """Rounds whose every phase committed."""
    rounds_done: str | None = None
    """Completed rounds out of spec.rounds, e.g. '2/3'."""
    observed_generation: int | None = None
    """Spec generation this status reflects."""
    conditions: list[Condition] = []
    """Standard conditions, one per type."""
    active_job: ActiveJob | None = None
    """The Job now running."""
    rounds: list[RoundStatus] = []
    """Recent rounds (bounded; older history stays in the store)."""
    latest_checkpoint: str | None = None
    """URI of the newest committed policy checkpoint."""
    storage: StoreLocation | None = None
    """The store the game plays in, as its runtime made it (a file:// spec.storage stands for
    the runtime's store); where `sparring status/report --kube` read it."""
    message: str | None = None
    """What the game is doing or why it stopped, in short (conditions hold the whole text)."""


class ObjectMeta(_Model):
    """The part of metav1.ObjectMeta a game file carries."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=MAX_GAME_NAME, pattern=GAME_NAME_PATTERN)]
    """Game name: a DNS label of at most 36 characters, so Job names fit in 63."""
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=GAME_NAME_PATTERN)] = (
        "default"
    )
    """Namespace of the game."""
    labels: dict[str, str] = {}
    """Labels."""
    annotations: dict[str, str] = {}
    """Annotations."""


class AdversarialGame(_Model):
    """The whole resource as written in a game file."""

    api_version: Literal["sparring.dev/v1alpha1"]
    """sparring.dev/v1alpha1"""
    kind: Literal["AdversarialGame"]
    """AdversarialGame"""
    metadata: ObjectMeta
    """Name and namespace."""
    spec: AdversarialGameSpec
    """Desired state."""
    status: AdversarialGameStatus | None = None
    """Observed state."""

    @model_validator(mode="after")
    def _runnable(self) -> AdversarialGame:
        # Refused here, so before any Job (sparring validate, the operator): a combination the
        # phases cannot run would otherwise fail hours in, after the GPUs were scheduled.
        problems = unsupported_quantization(self.spec) + unsplittable_phases(self.spec)
        problems += unsupported_parallelism(self.spec.game)
        if problems:
            raise ValueError("; ".join(problems))
        return self


# The phase that trains each role's LoRA adapter, and where its settings are written.
_TRAINED_IN = (
    ("update-policy", "updatePolicy", "game.policy.update", lambda g: g.policy.update),
    ("update-adversary", "updateAdversary", "game.adversary.update", lambda g: g.adversary.update),
    ("prepare", "prepare", "game.evaluation.evalRmTrain", lambda g: g.evaluation.eval_rm_train),
)


def unsupported_quantization(spec: AdversarialGameSpec) -> list[str]:
    """QLoRA (the frozen base loaded in 8 or 4 bits through bitsandbytes, on a CUDA GPU) is
    part of the API but not implemented yet: every role that asks for it, named as written.
    Refused up front, not when the update phase starts after the round's sampling."""
    problems = []
    for phase, _, where, update_of in _TRAINED_IN:
        lora = update_of(spec.game).lora
        if lora is not None and lora.quantization != "none":
            problems.append(
                f"spec.{where}.lora.quantization: {lora.quantization} (QLoRA, for the {phase} "
                "phase) is not implemented yet; use quantization: none"
            )
    return problems


def unsplittable_phases(spec: AdversarialGameSpec) -> list[str]:
    """Phases with several ranks (GPUs, nodes) that could not run as asked: a training batch
    that the ranks cannot split evenly, or vLLM sampling (one engine per rank is not supported
    yet)."""
    from sparring_trainer.config import ALL_PHASES, batch_fields

    problems = []
    for phase in ALL_PHASES:
        res = spec.phases.for_phase(phase).resources
        ranks = res.nodes * max(res.gpu, 1)
        if ranks <= 1:
            continue
        where = f"{res.gpu} GPUs" if res.nodes == 1 else f"{res.nodes} nodes x {res.gpu} GPUs"
        among = (
            f"the {res.gpu} GPUs of the {phase} phase (one rank each)"
            if res.nodes == 1
            else f"the {ranks} ranks of the {phase} phase ({where})"
        )
        for field, batch in batch_fields(spec.game, phase):
            if batch % ranks:
                problems.append(
                    f"{field}: {batch} does not divide among {among}: use a multiple of {ranks}"
                )
        if phase in ("prepare", "sample", "evaluate") and spec.game.sampling.engine == "vllm":
            problems.append(
                f"spec.game.sampling.engine: vllm samples in one-GPU phases only, and the {phase} "
                f"phase has {where}: use auto (transformers, sharded across the ranks)"
            )
    return problems
