"""What the decision core reads (observed Jobs) and what it asks reconcile to do (actions).

Plain frozen records, so that `core.decide` stays a pure function of them and every rule can be
unit-tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparring_operator.api import AdversarialGameStatus

# ---- what reconcile observes --------------------------------------------------------------

# Why a phase's pod is not running, as the pod or the Job controller says it. These do not
# mend by waiting for long (a missing image, quota, Secret or ServiceAccount; no node fits), so
# after the phase's pendingTimeoutSeconds the attempt counts as failed. "Queued" (a Job that
# Kueue holds suspended until quota is free) is shown but never timed out: waiting in a queue
# is the admission system doing its job.
STUCK_REASONS = frozenset(
    {
        "Unschedulable",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "FailedCreate",
    }
)
QUEUED = "Queued"


@dataclass(frozen=True)
class ObservedJob:
    """A phase Job as seen in the API (plus what its pod says, when that matters)."""

    name: str
    round: int
    phase: str
    attempt: int
    state: str  # Active | Succeeded | Failed
    created_at: float  # epoch seconds
    finished_at: float | None = None
    reason: str = ""  # Job condition reason, e.g. BackoffLimitExceeded, DeadlineExceeded
    message: str = ""  # the pod's termination message (error summary) or condition message
    exit_code: int | None = None  # of the failed container, when known
    waiting: str = ""  # an Active Job whose pod is not running: why (STUCK_REASONS or QUEUED)
    waiting_message: str = ""
    waiting_since: float | None = None
    resource_version: str = ""  # what was seen, so that acting on it fails if it changed since


# ---- what reconcile does ------------------------------------------------------------------


@dataclass(frozen=True)
class CreateJob:
    round: int
    phase: str
    attempt: int
    retry_reason: str | None = None  # why an earlier attempt ended (for the retries metric)


@dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclass(frozen=True)
class FailJob:
    """End an attempt whose pod never started, keeping the Job as the record of the failure
    (the retry budget is counted from the Jobs, so a deleted one would not count)."""

    name: str
    reason: str
    message: str
    resource_version: str = ""  # the Job as judged stuck: a pod that started since wins


@dataclass(frozen=True)
class RecordEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class WriteComplete:
    """Mark the game finished in the store with a hash of its spec (GitOps re-creation)."""

    spec_hash: str


Action = CreateJob | DeleteJob | FailJob | RecordEvent | WriteComplete


@dataclass
class Decision:
    status: AdversarialGameStatus
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # seconds; None: wait for the next event or timer
