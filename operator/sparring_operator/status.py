"""A game's `.status`, computed in one place from what was observed and an injected clock.

`core.decide` (the operator) and `local.run_game` (`sparring run`) say what they made of the
game as an `Outcome`; `game_status` turns it, the store view and the previous status into the
resource's status. Conditions come from one builder, times in one format, and a condition's
lastTransitionTime moves only when its status does (the metav1 rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sparring_operator.api import (
    ActiveJob,
    AdversarialGameStatus,
    Condition,
    GamePhase,
    Progress,
    RoundStatus,
)
from sparring_operator.machine import GameDone, RunPhase
from sparring_operator.observed import StoreView

MAX_STATUS_ROUNDS = 20  # older rounds stay in the store; the resource must stay small
MAX_SHORT_MESSAGE = 160  # status.message is a `kubectl get` column; conditions keep it whole
# Every game shows the same condition types in the same order (kstatus readers, `kubectl wait`).
CONDITION_TYPES = ("Ready", "Running", "Reconciling", "Suspended", "Succeeded", "Failed", "Stalled")
AS_EXPECTED = "AsExpected"


def iso(ts: float) -> str:
    """The one timestamp format of status: RFC 3339 in UTC, to the second (metav1.Time)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Outcome:
    """What a pass made of the game: its phase, why, and what is in flight."""

    phase: GamePhase  # Running | Suspended | Succeeded | Failed
    reason: str  # a CamelCase word, on the conditions that say the phase
    message: str
    step: RunPhase | GameDone | None = None  # None: not played at all (an invalid spec)
    active_job: ActiveJob | None = None
    backing_off: str | None = None  # a retry waits for its backoff: Reconciling says until when


def game_status(
    outcome: Outcome,
    view: StoreView,
    completed: int,
    total: int | None,
    old: AdversarialGameStatus,
    now: float,
    generation: int | None,
) -> AdversarialGameStatus:
    """The status a game shows after a pass: rounds and checkpoints from the store view, the
    phase and conditions from `outcome`; `total` is spec.rounds (None: unknown, an invalid
    spec)."""
    phase, step = outcome.phase, outcome.step
    says: dict[str, bool] = {
        "Ready": phase == "Succeeded",
        "Running": phase == "Running",
        "Suspended": phase == "Suspended",
        "Succeeded": phase == "Succeeded",
        "Failed": phase == "Failed",
        # kstatus (Flux, kubectl wait): a failed game is Stalled, i.e. it needs someone to act.
        "Stalled": phase == "Failed",
    }
    conditions = []
    for type_ in CONDITION_TYPES:
        if type_ == "Reconciling" and outcome.backing_off:
            # kstatus: Reconciling (in progress), not Stalled (which Flux reads as failed).
            conditions.append(_condition(type_, True, "BackingOff", outcome.backing_off))
        elif type_ in ("Reconciling", "Suspended", "Stalled") and not says.get(type_):
            conditions.append(_condition(type_, False, AS_EXPECTED, ""))
        else:
            conditions.append(_condition(type_, says[type_], outcome.reason, outcome.message))
    if isinstance(step, RunPhase):
        current_round, current_phase = step.round, step.phase
    elif isinstance(step, GameDone):
        current_round, current_phase = completed, None
    else:
        current_round, current_phase = old.current_round, None
    status = AdversarialGameStatus(
        phase=phase,
        current_round=current_round,
        current_phase=current_phase,
        completed_rounds=completed,
        rounds_done=f"{completed}/{total}" if total is not None else old.rounds_done,
        observed_generation=generation,
        conditions=[
            c.model_copy(
                update={"last_transition_time": iso(now), "observed_generation": generation}
            )
            for c in conditions
        ],
        active_job=outcome.active_job,
        rounds=_rounds(view) if step is not None else old.rounds,
        latest_checkpoint=_latest_checkpoint(view) if step is not None else old.latest_checkpoint,
        message=_short(outcome.message) or None,
    )
    return with_transition_times(status, old)


def stalled_status(
    old: AdversarialGameStatus, reason: str, message: str, now: float, generation: int | None
) -> AdversarialGameStatus:
    """The last status as it was, marked Stalled: something outside the game (its store, its
    Secret) keeps it from going on until someone fixes it; it resumes by itself then."""
    stalled = _condition("Stalled", True, reason, message[:500])
    stalled = stalled.model_copy(
        update={"last_transition_time": iso(now), "observed_generation": generation}
    )
    others = [c for c in old.conditions if c.type != "Stalled"]
    status = old.model_copy(
        update={"conditions": _ordered([*others, stalled]), "message": _short(message)}
    )
    return with_transition_times(status, old)


def with_progress(
    status: AdversarialGameStatus, report: dict[str, Any] | None
) -> AdversarialGameStatus:
    """The running phase's own progress report (step/total) on its activeJob, with a naive ETA
    from the rate so far."""
    job = status.active_job
    if job is None or report is None:
        return status
    try:
        step, total = int(report["step"]), max(1, int(report["total"]))
        reported = float(report["time"])
    except (ValueError, KeyError, TypeError):
        return status  # a torn or foreign report: progress is best-effort
    started = epoch(job.started_at) or reported
    eta = None
    if 0 < step < total and reported > started:
        eta = int((reported - started) / step * (total - step))
    progress = Progress(
        step=step,
        total=total,
        unit=str(report.get("unit", "steps")),
        percent=round(100.0 * step / total, 1),
        eta_seconds=eta,
        updated_at=iso(reported),
    )
    return status.model_copy(update={"active_job": job.model_copy(update={"progress": progress})})


def epoch(value: Any) -> float | None:
    """Seconds since the epoch of an API timestamp (a string as in status, or the client's
    datetime); None when absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def with_transition_times(
    status: AdversarialGameStatus, old: AdversarialGameStatus
) -> AdversarialGameStatus:
    """A condition keeps its lastTransitionTime while its status stays the same."""
    before = {c.type: c for c in old.conditions}
    kept = []
    for cond in status.conditions:
        previous = before.get(cond.type)
        if previous is not None and previous.status == cond.status:
            cond = cond.model_copy(update={"last_transition_time": previous.last_transition_time})
        kept.append(cond)
    return status.model_copy(update={"conditions": kept})


def _condition(type_: str, ok: bool, reason: str, message: str) -> Condition:
    # The time is set by the caller from its injected clock (and then kept, if unchanged).
    return Condition(
        type=type_,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        last_transition_time="",
    )


def _ordered(conditions: list[Condition]) -> list[Condition]:
    rank = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(conditions, key=lambda c: rank.get(c.type, len(rank)))


def _short(message: str) -> str:
    line = message.splitlines()[0] if message else ""
    return line if len(line) <= MAX_SHORT_MESSAGE else line[: MAX_SHORT_MESSAGE - 1] + "…"


def _rounds(view: StoreView) -> list[RoundStatus]:
    rounds = []
    round_metrics = view.round_metrics()
    for r in sorted({m[0] for m in view.committed})[-MAX_STATUS_ROUNDS:]:
        finished = [view.committed_at[m] for m in view.committed if m[0] == r]
        rounds.append(
            RoundStatus(
                round=r,
                metrics=round_metrics.get(r, {}),
                artifacts={p: uri for (rr, p), uri in view.uris.items() if rr == r},
                completed_at=max(finished) if finished else None,
            )
        )
    return rounds


def _latest_checkpoint(view: StoreView) -> str | None:
    policies = sorted(m for m in view.committed if m[1] == "update-policy")
    return view.uris[policies[-1]] + "policy/" if policies else None
