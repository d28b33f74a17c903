"""The operator's pure decision core: (spec, status, observed Jobs, store) -> actions + status.

No API calls and no clock reads happen here: `reconcile.py` observes the world, calls `decide`,
and carries out the actions. That makes every lifecycle rule (retries with backoff, preemption,
suspend, deadlines, growing rounds, GitOps re-creation) a plain unit test.

Reconcile, in numbered steps (kubebuilder's shape):
1. the spec is valid, or the game fails with the field named and no Jobs;
2. the game machine says which (round, phase) is next, from committed store markers alone;
3. the Jobs of that phase say whether it runs, failed (retry after backoff or give up), or has
   not started; preempted pods never use up the retry budget;
4. suspend and deadlines override;
5. status is recomputed from all of the above; conditions keep their transition times.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sparring_operator.api import (
    ActiveJob,
    AdversarialGame,
    AdversarialGameStatus,
    Condition,
)
from sparring_operator.jobs import job_name as job_name_of
from sparring_operator.machine import EarlyStop, GameDone, RunPhase, completed_rounds, next_step
from sparring_operator.observed import StoreView, build_status

# ---- what reconcile observes --------------------------------------------------------------


@dataclass(frozen=True)
class ObservedJob:
    """A phase Job as seen in the API (plus its pod's termination message when it ended)."""

    name: str
    round: int
    phase: str
    attempt: int
    state: str  # Active | Succeeded | Failed
    created_at: float  # epoch seconds
    finished_at: float | None = None
    reason: str = ""  # Job condition reason, e.g. BackoffLimitExceeded, DeadlineExceeded
    message: str = ""  # the pod's termination message (error summary) or condition message


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
class RecordEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class WriteComplete:
    """Mark the game finished in the store with a hash of its spec (GitOps re-creation)."""

    spec_hash: str


Action = CreateJob | DeleteJob | RecordEvent | WriteComplete


@dataclass
class Decision:
    status: AdversarialGameStatus
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # seconds; None: wait for the next event or timer


def spec_hash(game: AdversarialGame) -> str:
    """Hash of what the game computes. Rounds, suspend, scheduling and phase settings are left
    out: they change how and how long it runs, not what a committed phase means."""
    essence = {"storage": game.spec.storage.model_dump(), "game": game.spec.game.model_dump()}
    return hashlib.sha256(json.dumps(essence, sort_keys=True).encode()).hexdigest()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keep_transition_times(new: list[Condition], old: list[Condition]) -> list[Condition]:
    """A condition's lastTransitionTime changes only when its status does (metav1 rule)."""
    previous = {c.type: c for c in old}
    kept = []
    for cond in new:
        before = previous.get(cond.type)
        if before is not None and before.status == cond.status:
            cond = cond.model_copy(update={"last_transition_time": before.last_transition_time})
        kept.append(cond)
    return kept


def _with_condition(status: AdversarialGameStatus, cond: Condition) -> AdversarialGameStatus:
    others = [c for c in status.conditions if c.type != cond.type]
    return status.model_copy(update={"conditions": [*others, cond]})


def _cond(
    type_: str, ok: bool, reason: str, message: str, now: float, gen: int | None
) -> Condition:
    return Condition(
        type=type_,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        last_transition_time=_iso(now),
        observed_generation=gen,
    )


def invalid_spec_status(
    message: str, old: AdversarialGameStatus, now: float, gen: int | None
) -> AdversarialGameStatus:
    """A game that slipped past the schema: Failed, with the field named, and no Jobs."""
    status = AdversarialGameStatus(
        phase="Failed",
        observed_generation=gen,
        message=message,
        completed_rounds=old.completed_rounds,
        rounds=old.rounds,
        latest_checkpoint=old.latest_checkpoint,
        conditions=[
            _cond(t, t in ("Failed", "Stalled"), "InvalidSpec", message, now, gen)
            for t in ("Ready", "Running", "Succeeded", "Failed", "Stalled")
        ],
    )
    return status.model_copy(
        update={"conditions": _keep_transition_times(status.conditions, old.conditions)}
    )


def _refuse(
    reason: str, message: str, old: AdversarialGameStatus, now: float, gen: int | None
) -> Decision:
    """Failed for good with `reason` on every condition, one Warning event on the way in."""
    status = invalid_spec_status(message, old, now, gen)
    status = status.model_copy(
        update={"conditions": [c.model_copy(update={"reason": reason}) for c in status.conditions]}
    )
    events: list[Action] = (
        [] if old.phase == "Failed" else [RecordEvent("Warning", reason, message)]
    )
    return _finish(status, old, events, None)


def decide(
    game: AdversarialGame,
    generation: int | None,
    old: AdversarialGameStatus,
    jobs: list[ObservedJob],
    view: StoreView,
    complete_hash: str | None,
    created_at: float,
    now: float,
) -> Decision:
    spec = game.spec
    kind = spec.game.kind
    early = (
        EarlyStop(spec.early_stop.metric, spec.early_stop.threshold, spec.early_stop.direction)
        if spec.early_stop
        else None
    )
    done = completed_rounds(kind, view.committed)
    if complete_hash is not None and complete_hash != spec_hash(game):
        # The store holds a finished game of this name that computed something else: replaying
        # on top of its artifacts would mix two games. GitOps re-creation must keep the spec.
        message = (
            "the store holds a finished game of this name with a different spec.game/storage; "
            "use a new game name (or remove its store prefix) to play a different game"
        )
        return _refuse("SpecConflict", message, old, now, generation)
    if view.bad_output is not None:
        # Output the operator cannot publish (NaN, a non-number, hundreds of keys): retrying the
        # same image would commit the same, so the game fails, naming phase and key.
        return _refuse("BadPhaseOutput", view.bad_output[1], old, now, generation)
    step = next_step(kind, spec.rounds, view.committed, view.round_metrics(), early)
    actions: list[Action] = []
    requeue: float | None = None
    active = [j for j in jobs if j.state == "Active"]

    if isinstance(step, GameDone):
        status = build_status(view, step, done, generation=generation)
        # A Job of an uncommitted phase beyond the game's end (rounds shrank) is stopped; one
        # whose phase committed is left to finish, so its record and message stay readable.
        actions += [DeleteJob(j.name) for j in active if (j.round, j.phase) not in view.committed]
        last_round = max((m[0] for m in view.committed), default=0)
        actions += _retired(jobs, view, last_round)
        this_hash = spec_hash(game)
        if complete_hash != this_hash:
            actions.append(WriteComplete(this_hash))
        if old.phase != "Succeeded":
            actions.append(RecordEvent("Normal", "GameSucceeded", step.message))
        return _finish(status, old, actions, None)

    assert isinstance(step, RunPhase)
    if old.current_phase is not None and (old.current_round, old.current_phase) in view.committed:
        finished = view.metrics.get((old.current_round, old.current_phase), {})
        seconds = finished.get("compute_seconds")
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        done_msg = f"round {old.current_round} {old.current_phase} committed{took}"
        actions.append(RecordEvent("Normal", "PhaseSucceeded", done_msg))
    phase_jobs = sorted(
        (j for j in jobs if (j.round, j.phase) == (step.round, step.phase)), key=lambda j: j.attempt
    )
    # Active Jobs of other phases: those that committed are finishing (left alone); any other
    # would run out of order (the spec changed under it), so it is stopped.
    here = (step.round, step.phase)
    stale = [j for j in active if (j.round, j.phase) not in (here, *view.committed)]
    actions += [DeleteJob(j.name) for j in stale]
    actions += _retired(jobs, view, step.round)
    retry = spec.phases.for_phase(step.phase).retry
    failures = [j for j in phase_jobs if j.state == "Failed"]
    # A phase's Job that "succeeded" without committing its outputs counts as a failure too.
    failures += [j for j in phase_jobs if j.state == "Succeeded"]
    running = next((j for j in reversed(phase_jobs) if j.state == "Active"), None)
    # Attempts continue from the highest seen, in the API or in status, so that a Job deleted
    # by someone is recreated as the next attempt instead of reusing its name.
    last_attempt = max([j.attempt for j in phase_jobs] + [_status_attempt(old, step)], default=0)
    failed_message: str | None = None
    suspended = False

    if spec.active_deadline_seconds and now - created_at > spec.active_deadline_seconds:
        failed_message = f"game exceeded activeDeadlineSeconds={spec.active_deadline_seconds}"
        actions += [DeleteJob(j.name) for j in active]
    elif spec.suspend:
        suspended = True
        actions += [DeleteJob(j.name) for j in active if j not in stale]
    elif running is not None:
        pass
    elif fatal := [j for j in failures if j.reason == "PodFailurePolicy"]:
        # The trainer exited "bad input" (exit 3): the same input fails again, so no retry.
        failed_message = (
            f"round {step.round} {step.phase}: Job {fatal[-1].name} failed on bad input: "
            f"{fatal[-1].message or fatal[-1].reason}"
        )
    elif len(failures) > retry.limit:
        last = failures[-1]
        failed_message = (
            f"round {step.round} {step.phase}: Job {last.name} failed after {len(failures)} "
            f"attempt(s): {last.message or last.reason or 'no message'}"
        )
    elif failures:
        last = max(failures, key=lambda j: j.finished_at or j.created_at)
        delay = retry.backoff_seconds * 2 ** (len(failures) - 1)
        ready_at = (last.finished_at or last.created_at) + delay
        if now >= ready_at and last_attempt == last.attempt:
            reason = last.reason or "Failed"
            actions.append(CreateJob(step.round, step.phase, last_attempt + 1, reason))
            actions.append(
                RecordEvent(
                    "Warning",
                    "PhaseRetried",
                    f"round {step.round} {step.phase}: attempt {last_attempt + 1} after "
                    f"{last.name} failed: {last.message or last.reason}",
                )
            )
        elif now >= ready_at:  # the failed Job is gone already; a newer attempt is due
            actions.append(CreateJob(step.round, step.phase, last_attempt + 1, "JobDeleted"))
        else:
            requeue = ready_at - now
    else:
        attempt = last_attempt + 1 if last_attempt and not phase_jobs else max(1, last_attempt)
        deleted = "JobDeleted" if attempt > 1 else None  # its Job vanished (deleted by someone)
        actions.append(CreateJob(step.round, step.phase, attempt, deleted))
        actions.append(
            RecordEvent(
                "Normal", "PhaseStarted", f"round {step.round} {step.phase} (attempt {attempt})"
            )
        )

    status = build_status(view, step, done, failed=failed_message, generation=generation)
    creating = next((a for a in actions if isinstance(a, CreateJob)), None)
    if suspended and last_attempt:
        # No Job runs while suspended, but the interrupted attempt stays named here: the next
        # one after resume gets a new name, since pods of the deleted Job may still be
        # terminating under the old one.
        status = status.model_copy(
            update={
                "active_job": ActiveJob(
                    name=job_name_of(game.metadata.name, step.round, step.phase, last_attempt),
                    round=step.round,
                    phase=step.phase,
                    attempt=last_attempt,
                )
            }
        )
    if failed_message is None and not suspended:
        job_name, attempt, started = None, 0, None
        if running is not None:
            job_name, attempt, started = running.name, running.attempt, _iso(running.created_at)
        elif creating is not None:
            attempt, started = creating.attempt, _iso(now)
        elif failures:
            attempt = last_attempt
        if attempt:
            job_name = job_name or job_name_of(game.metadata.name, step.round, step.phase, attempt)
            status = status.model_copy(
                update={
                    "active_job": ActiveJob(
                        name=job_name,
                        round=step.round,
                        phase=step.phase,
                        attempt=attempt,
                        started_at=started,
                    )
                }
            )
        if requeue is not None:
            status = _with_condition(
                status,
                # kstatus: Reconciling (in progress), not Stalled (which Flux reads as failed).
                _cond(
                    "Reconciling",
                    True,
                    "BackingOff",
                    f"retrying round {step.round} {step.phase} in {requeue:.0f} s",
                    now,
                    generation,
                ),
            )
    if suspended:
        msg = f"suspended before round {step.round} {step.phase}"
        status = status.model_copy(
            update={
                "phase": "Suspended",
                "conditions": [
                    _cond("Ready", False, "Suspended", msg, now, generation),
                    _cond("Running", False, "Suspended", msg, now, generation),
                    _cond("Suspended", True, "Suspended", msg, now, generation),
                    _cond("Succeeded", False, "Suspended", msg, now, generation),
                    _cond("Failed", False, "Suspended", msg, now, generation),
                ],
            }
        )
        if old.phase != "Suspended":
            actions.append(RecordEvent("Normal", "GameSuspended", msg))
    if failed_message is not None and old.phase != "Failed":
        actions.append(RecordEvent("Warning", "GameFailed", failed_message))
    return _finish(status, old, actions, requeue)


# Finished Jobs (and, through their owner references, their pods and logs) of the last rounds
# stay for debugging; older ones go, so a long game does not pile up objects without bound.
# Their outcome is already in the store and in status.rounds; decisions need only the Jobs of
# the phase being played.
KEEP_JOB_ROUNDS = 2


def _retired(jobs: list[ObservedJob], view: StoreView, current_round: int) -> list[Action]:
    """Delete finished Jobs of committed phases older than the last KEEP_JOB_ROUNDS rounds."""
    oldest_kept = current_round - KEEP_JOB_ROUNDS + 1
    return [
        DeleteJob(j.name)
        for j in jobs
        if j.state != "Active" and j.round < oldest_kept and (j.round, j.phase) in view.committed
    ]


def _status_attempt(old: AdversarialGameStatus, step: RunPhase) -> int:
    job = old.active_job
    if job is not None and (job.round, job.phase) == (step.round, step.phase):
        return job.attempt
    return 0


def _finish(
    status: AdversarialGameStatus,
    old: AdversarialGameStatus,
    actions: list[Action],
    requeue: float | None,
) -> Decision:
    types = {c.type for c in status.conditions}
    failed = next((c for c in status.conditions if c.type == "Failed" and c.status == "True"), None)
    if failed is not None and "Stalled" not in types:
        # kstatus (Flux, kubectl wait): a failed game is Stalled, i.e. it needs someone to act.
        status = _with_condition(status, failed.model_copy(update={"type": "Stalled"}))
        types.add("Stalled")
    for needed in ("Suspended", "Stalled", "Reconciling"):
        if needed not in types:
            status = _with_condition(
                status,
                Condition(
                    type=needed,
                    status="False",
                    reason="AsExpected",
                    message="",
                    last_transition_time=status.conditions[0].last_transition_time
                    if status.conditions
                    else _iso(0),
                    observed_generation=status.observed_generation,
                ),
            )
    order = ["Ready", "Running", "Reconciling", "Suspended", "Succeeded", "Failed", "Stalled"]
    conditions = sorted(
        status.conditions, key=lambda c: order.index(c.type) if c.type in order else 99
    )
    status = status.model_copy(
        update={"conditions": _keep_transition_times(conditions, old.conditions)}
    )
    return Decision(status, actions, requeue)
