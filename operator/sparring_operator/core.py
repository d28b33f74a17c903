"""The operator's pure decision core: (spec, status, observed Jobs, store) -> actions + status.

No API calls and no clock reads happen here: `reconcile.py` observes the world, calls `decide`
with the time, and carries out the actions. Every lifecycle rule (retries with backoff, bad
input, pods that never start, suspend, deadlines, growing rounds, GitOps re-creation) is a
plain unit test.

`decide` in named steps (kubebuilder's shape):
1. refuse what must not be played (a store holding another spec's game, unpublishable output);
2. the game machine says which (round, phase) is next, from committed store markers alone;
3. the first rule that applies to that phase's Jobs decides: deadline, suspend, running (or
   stuck before it runs), bad input, out of retries, retry after backoff, start;
4. status is computed once, in `status.game_status`; a change of the game's phase posts one
   event.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sparring_operator.actions import (
    STUCK_REASONS,
    Action,
    CreateJob,
    Decision,
    DeleteJob,
    FailJob,
    ObservedJob,
    RecordEvent,
    WriteComplete,
)
from sparring_operator.api import ActiveJob, AdversarialGame, AdversarialGameStatus
from sparring_operator.jobs import NON_RETRYABLE_EXIT_CODES
from sparring_operator.jobs import job_name as job_name_of
from sparring_operator.machine import EarlyStop, GameDone, RunPhase, completed_rounds, next_step
from sparring_operator.observed import StoreView
from sparring_operator.refusals import refusal, refused, spec_hash, transition_events
from sparring_operator.status import Outcome, game_status, iso

# ---- the decision ---------------------------------------------------------------------------


@dataclass
class Plan:
    """What one rule decided: the game's outcome, what to do, and when to look again."""

    outcome: Outcome
    actions: list[Action] = field(default_factory=list)
    requeue: float | None = None


@dataclass(frozen=True)
class PhaseJobs:
    """Everything the rules need to know about the phase to play."""

    game: AdversarialGame
    step: RunPhase
    jobs: list[ObservedJob]  # this phase's, oldest attempt first
    active: list[ObservedJob]  # every active Job of the game
    running: ObservedJob | None
    # Attempts that ended without committing: Failed Jobs, and "succeeded" ones whose outputs
    # never committed (the phase is still uncommitted, or it would not be played).
    failures: list[ObservedJob]
    # Attempts continue from the highest seen, in the API or in status, so that a Job deleted by
    # someone is recreated as the next attempt instead of reusing its name.
    last_attempt: int
    created_at: float
    now: float

    def attempt(self, attempt: int, started: float | None = None) -> ActiveJob:
        """An attempt of this phase, as status.activeJob shows it."""
        return ActiveJob(
            name=job_name_of(self.game.metadata.name, self.step.round, self.step.phase, attempt),
            round=self.step.round,
            phase=self.step.phase,
            attempt=attempt,
            started_at=iso(started) if started is not None else None,
        )

    @property
    def where(self) -> str:
        return f"round {self.step.round} {self.step.phase}"


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
    done = completed_rounds(kind, view.committed)
    # A game that succeeded and was not edited since is not judged again: only another reading
    # of the same spec (an upgrade that changed a default) could make it differ now, and its
    # results stand as they were played.
    settled = old.phase == "Succeeded" and generation == old.observed_generation
    if not settled and (why := refusal(game, view, complete_hash)) is not None:
        return refused(*why, old, now, generation, view, spec.rounds)
    early = (
        EarlyStop(spec.early_stop.metric, spec.early_stop.threshold, spec.early_stop.direction)
        if spec.early_stop
        else None
    )
    step = next_step(kind, spec.rounds, view.committed, view.round_metrics(), early)
    active = [j for j in jobs if j.state == "Active"]
    if isinstance(step, GameDone):
        plan = _game_done(game, step, active, view, complete_hash)
        # The last phase's commit is a transition too: its PhaseSucceeded comes before the
        # game's (it was missing, so a game's events listed one phase fewer than it played).
        plan.actions = [
            *_phase_committed(old, view),
            *plan.actions,
            *_retired(jobs, view, max((m[0] for m in view.committed), default=0)),
        ]
    else:
        phase = _phase_jobs(game, step, jobs, active, old, created_at, now)
        plan = (
            _deadline(phase)
            or _suspended(phase)
            or _running(phase)
            or _bad_input(phase)
            or _out_of_retries(phase)
            or _retry(phase)
            or _start(phase)
        )
        # Active Jobs of other phases: those that committed are finishing (left alone); any other
        # would run out of order (the spec changed under it), so it is stopped.
        stale = [
            j
            for j in active
            if (j.round, j.phase) not in ((step.round, step.phase), *view.committed)
        ]
        plan.actions = [
            *_phase_committed(old, view),
            *(DeleteJob(j.name) for j in stale if DeleteJob(j.name) not in plan.actions),
            *_retired(jobs, view, step.round),
            *plan.actions,
        ]
    status = game_status(plan.outcome, view, done, spec.rounds, old, now, generation)
    return Decision(status, plan.actions + transition_events(old, plan.outcome), plan.requeue)


def _game_done(
    game: AdversarialGame,
    step: GameDone,
    active: list[ObservedJob],
    view: StoreView,
    complete_hash: str | None,
) -> Plan:
    # A Job of an uncommitted phase beyond the game's end (rounds shrank) is stopped; one whose
    # phase committed is left to finish, so its record and message stay readable.
    actions: list[Action] = [
        DeleteJob(j.name) for j in active if (j.round, j.phase) not in view.committed
    ]
    this_hash = spec_hash(game)
    if complete_hash != this_hash:
        actions.append(WriteComplete(this_hash))
    return Plan(Outcome("Succeeded", step.reason, step.message, step), actions)


def _phase_jobs(
    game: AdversarialGame,
    step: RunPhase,
    jobs: list[ObservedJob],
    active: list[ObservedJob],
    old: AdversarialGameStatus,
    created_at: float,
    now: float,
) -> PhaseJobs:
    mine = sorted(
        (j for j in jobs if (j.round, j.phase) == (step.round, step.phase)), key=lambda j: j.attempt
    )
    remembered = old.active_job
    from_status = (
        remembered.attempt
        if remembered is not None
        and (remembered.round, remembered.phase) == (step.round, step.phase)
        else 0
    )
    return PhaseJobs(
        game=game,
        step=step,
        jobs=mine,
        active=active,
        running=next((j for j in reversed(mine) if j.state == "Active"), None),
        failures=[j for j in mine if j.state in ("Failed", "Succeeded")],
        last_attempt=max([j.attempt for j in mine] + [from_status]),
        created_at=created_at,
        now=now,
    )


def _running_outcome(
    p: PhaseJobs, job: ActiveJob | None, message: str = "", reason: str = "PhaseRunning"
) -> Outcome:
    return Outcome(
        "Running", reason, message or f"round {p.step.round}: {p.step.phase}", p.step, job
    )


def _deadline(p: PhaseJobs) -> Plan | None:
    limit = p.game.spec.active_deadline_seconds
    if not limit or p.now - p.created_at <= limit:
        return None
    message = f"game exceeded activeDeadlineSeconds={limit}"
    return Plan(
        Outcome("Failed", "PhaseFailed", message, p.step), [DeleteJob(j.name) for j in p.active]
    )


def _suspended(p: PhaseJobs) -> Plan | None:
    if not p.game.spec.suspend:
        return None
    # No Job runs while suspended, but the interrupted attempt stays named in status: the next
    # one after resume gets a new name, since pods of the deleted Job may still be terminating
    # under the old one.
    job = None
    if p.last_attempt:
        job = p.attempt(p.last_attempt)
    message = f"suspended before round {p.step.round} {p.step.phase}"
    stop: list[Action] = [DeleteJob(j.name) for j in p.jobs if j.state == "Active"]
    return Plan(Outcome("Suspended", "Suspended", message, p.step, job), stop)


def _running(p: PhaseJobs) -> Plan | None:
    job = p.running
    if job is None:
        return None
    shown = p.attempt(job.attempt, started=job.created_at)
    if not job.waiting:
        return Plan(_running_outcome(p, shown))
    # Its pod is not running: say why where `kubectl get` shows it, and give up on the attempt
    # once it waited too long for something that does not come by waiting.
    timeout = p.game.spec.phases.for_phase(p.step.phase).pending_timeout_seconds
    waited = p.now - (job.waiting_since or job.created_at)
    # Most telling first: status.message, a `kubectl get` column, keeps only the start.
    detail = f"Job {job.name}: {job.waiting_message}".rstrip(": ")
    if job.waiting not in STUCK_REASONS:
        return Plan(_running_outcome(p, shown, f"{p.where} {job.waiting}: {detail}", job.waiting))
    if waited < timeout:
        # An absolute time, not a countdown: status changes (and is written) only when the
        # situation does.
        at = iso((job.waiting_since or job.created_at) + timeout)
        what = f"{p.where} {job.waiting} (a failed attempt at {at}): {detail}"
        return Plan(_running_outcome(p, shown, what, job.waiting), requeue=timeout - waited)
    what = f"{p.where} {job.waiting}: {detail}"
    gave_up = (
        f"pod did not start within pendingTimeoutSeconds={timeout}: "
        f"{job.waiting}: {job.waiting_message}"
    )
    return Plan(
        _running_outcome(p, shown, what, job.waiting),
        [FailJob(job.name, job.waiting, gave_up, job.resource_version)],
    )


def _bad_input(p: PhaseJobs) -> Plan | None:
    # The trainer exited "bad input" (exit 3) or "bad usage" (2): the same input fails again,
    # so no retry.
    fatal = [
        j
        for j in p.failures
        if j.reason == "PodFailurePolicy" and j.exit_code in NON_RETRYABLE_EXIT_CODES
    ]
    if not fatal:
        return None
    last = fatal[-1]
    message = f"{p.where}: Job {last.name} failed on bad input: {last.message or last.reason}"
    return Plan(Outcome("Failed", "PhaseFailed", message, p.step))


def _out_of_retries(p: PhaseJobs) -> Plan | None:
    if len(p.failures) <= p.game.spec.phases.for_phase(p.step.phase).retry.limit:
        return None
    last = p.failures[-1]
    message = (
        f"{p.where}: Job {last.name} failed after {len(p.failures)} attempt(s): "
        f"{last.message or last.reason or 'no message'}"
    )
    return Plan(Outcome("Failed", "PhaseFailed", message, p.step))


def _retry(p: PhaseJobs) -> Plan | None:
    if not p.failures:
        return None
    last = max(p.failures, key=lambda j: j.finished_at or j.created_at)
    backoff = p.game.spec.phases.for_phase(p.step.phase).retry.backoff_seconds
    ready_at = (last.finished_at or last.created_at) + backoff * 2 ** (len(p.failures) - 1)
    shown = p.attempt(p.last_attempt)
    if p.now < ready_at:
        wait = ready_at - p.now
        outcome = replace(
            _running_outcome(p, shown), backing_off=f"retrying {p.where} at {iso(ready_at)}"
        )
        return Plan(outcome, requeue=wait)
    attempt = p.last_attempt + 1
    started = p.attempt(attempt, started=p.now)
    if p.last_attempt != last.attempt:  # the failed Job is gone already; a newer attempt is due
        return Plan(
            _running_outcome(p, started),
            [CreateJob(p.step.round, p.step.phase, attempt, "JobDeleted")],
        )
    why = last.message or last.reason
    return Plan(
        _running_outcome(p, started),
        [
            CreateJob(p.step.round, p.step.phase, attempt, _retry_reason(last)),
            RecordEvent(
                "Warning",
                "PhaseRetried",
                f"{p.where}: attempt {attempt} after {last.name} failed: {why}",
            ),
        ],
    )


def _retry_reason(failed: ObservedJob) -> str:
    """Why an attempt is retried, as the retries metric's label: a crash (any exit but bad
    input ends the Job through its pod failure policy) is PodFailed, not the policy's name."""
    if failed.reason == "PodFailurePolicy":
        return "PodFailed"
    return failed.reason or "Failed"


def _start(p: PhaseJobs) -> Plan:
    # No Job of this phase exists (decide's earlier branches answer for any that does). A later
    # attempt than 1 means its Job vanished (deleted by someone): the next gets a new name.
    attempt = p.last_attempt + 1
    started = p.attempt(attempt, started=p.now)
    return Plan(
        _running_outcome(p, started),
        [
            CreateJob(p.step.round, p.step.phase, attempt, "JobDeleted" if attempt > 1 else None),
            RecordEvent("Normal", "PhaseStarted", f"{p.where} (attempt {attempt})"),
        ],
    )


def _phase_committed(old: AdversarialGameStatus, view: StoreView) -> list[Action]:
    """One PhaseSucceeded event when the phase status last showed has committed."""
    marker = (old.current_round, old.current_phase)
    if old.current_phase is None or marker not in view.committed:
        return []
    seconds = view.metrics.get((old.current_round, old.current_phase), {}).get("compute_seconds")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    return [
        RecordEvent(
            "Normal",
            "PhaseSucceeded",
            f"round {old.current_round} {old.current_phase} committed{took}",
        )
    ]


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
