"""The operator's decision core (`core.decide`), each branch pinned by the whole plan it returns:
the outcome (phase, reason, message, step) and the exact actions, so that the mutation gate
(scripts/mutation.py) catches any change to what the operator would do.

Each test compares the whole `Decision` with one built from the expected `Outcome` through the
one status builder (`status.game_status`, not mutated with the core): a wrong reason, message,
step or activeJob shows as a different status, a wrong or extra action as a different list."""

from __future__ import annotations

from dataclasses import replace

from sparring_operator.actions import (
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
from sparring_operator.machine import GameDone, RunPhase, completed_rounds, phase_sequence
from sparring_operator.observed import StoreView
from sparring_operator.refusals import spec_hash
from sparring_operator.status import Outcome, game_status
from test_core import T0, game, job, run, view

AT_T0 = "2023-11-14T22:13:20Z"  # iso(T0), spelled out so that a wrong time shows
AT_T0_10 = "2023-11-14T22:13:30Z"  # T0 + 10
SAMPLE = RunPhase(1, "sample")  # what a game plays once round 0 (prepare) committed
ADV = "update-adversary"  # an APO round's phase after sample


def prepared() -> StoreView:
    return view((0, "prepare"))


def shown(
    attempt: int, started: str | None = None, rnd: int = 1, phase: str = "sample"
) -> ActiveJob:
    """status.activeJob of an attempt, its name spelled out (not derived by the code tested)."""
    name = f"g-r{rnd:04d}-{phase}-a{attempt}"
    return ActiveJob(name=name, round=rnd, phase=phase, attempt=attempt, started_at=started)


def running(
    job: ActiveJob | None,
    message: str = "round 1: sample",
    reason: str = "PhaseRunning",
    step: RunPhase = SAMPLE,
    **more: str,
) -> Outcome:
    return Outcome("Running", reason, message, step, job, **more)


def expected(
    outcome: Outcome,
    actions: list[Action],
    *,
    v: StoreView | None = None,
    g: AdversarialGame | None = None,
    now: float = T0,
    old: AdversarialGameStatus | None = None,
    requeue: float | None = None,
) -> Decision:
    """The decision `run` (generation 1) must return for this outcome, actions and requeue."""
    g, v, old = g or game(), v if v is not None else prepared(), old or AdversarialGameStatus()
    done = completed_rounds(g.spec.game.kind, v.committed)
    status = game_status(outcome, v, done, g.spec.rounds, old, now, 1)
    return Decision(status, actions, requeue)


def game_failed(message: str) -> RecordEvent:
    return RecordEvent("Warning", "GameFailed", message)


def was_running(active: ActiveJob) -> AdversarialGameStatus:
    """What status said last pass: this attempt of round 1's sample running."""
    return AdversarialGameStatus(
        phase="Running", current_round=1, current_phase="sample", active_job=active
    )


# ---- deadline -------------------------------------------------------------------------------


def test_the_game_deadline_is_not_reached_at_exactly_active_deadline_seconds() -> None:
    g, jobs = game(activeDeadlineSeconds=60), [job("sample", 1, "Active")]
    # Shown as started when its Job was created (T0), not at the time of the pass.
    assert run(g, jobs, prepared(), now=T0 + 60) == expected(
        running(shown(1, AT_T0)), [], g=g, now=T0 + 60
    )


def test_past_the_deadline_every_active_job_of_the_game_is_deleted_once() -> None:
    g = game(activeDeadlineSeconds=60)
    # An active Job of another uncommitted phase is stale as well: deleted by the deadline's
    # plan, and not a second time as stale.
    jobs = [job("sample", 1, "Active"), job("score", 1, "Active")]
    message = "game exceeded activeDeadlineSeconds=60"
    assert run(g, jobs, prepared(), now=T0 + 61) == expected(
        Outcome("Failed", "PhaseFailed", message, SAMPLE),
        [DeleteJob("g-r0001-sample-a1"), DeleteJob("g-r0001-score-a1"), game_failed(message)],
        g=g,
        now=T0 + 61,
    )


# ---- suspend --------------------------------------------------------------------------------


def test_suspend_stops_the_running_attempt_and_keeps_it_named() -> None:
    g = game(suspend=True)
    jobs = [job("sample", 1, "Failed", finished=T0, message="boom"), job("sample", 2, "Active")]
    message = "suspended before round 1 sample"
    assert run(g, jobs, prepared()) == expected(
        Outcome("Suspended", "Suspended", message, SAMPLE, shown(2)),
        [DeleteJob("g-r0001-sample-a2"), RecordEvent("Normal", "GameSuspended", message)],
        g=g,
    )


def test_suspended_before_any_attempt_names_no_job() -> None:
    g = game(suspend=True)
    message = "suspended before round 1 sample"
    assert run(g, [], prepared()) == expected(
        Outcome("Suspended", "Suspended", message, SAMPLE, None),
        [RecordEvent("Normal", "GameSuspended", message)],
        g=g,
    )


# ---- a running attempt whose pod does not run -------------------------------------------------


def stuck(reason: str, message: str, since: float | None, version: str = "") -> ObservedJob:
    return replace(
        job("sample", 1, "Active"),
        waiting=reason,
        waiting_message=message,
        waiting_since=since,
        resource_version=version,
    )


def test_a_queued_job_without_a_message_shows_its_name_alone() -> None:
    # "Job NAME: " loses its trailing ": " when the pod says nothing.
    queued = stuck("Queued", "", since=None)
    assert run(game(), [queued], prepared(), now=T0 + 10**6) == expected(
        running(shown(1, AT_T0), "round 1 sample Queued: Job g-r0001-sample-a1", "Queued"),
        [],
        now=T0 + 10**6,
    )


def test_a_stuck_pod_is_timed_from_when_it_started_waiting() -> None:
    g = game(phases={"default": {"pendingTimeoutSeconds": 300}})
    pod = stuck("Unschedulable", "0/4 nodes are available", since=T0 + 100)
    # Waiting since T0 + 100 (not since the Job's creation at T0): 150 s of 300 waited, and the
    # attempt fails at T0 + 400.
    what = (
        "round 1 sample Unschedulable (a failed attempt at 2023-11-14T22:20:00Z): "
        "Job g-r0001-sample-a1: 0/4 nodes are available"
    )
    assert run(g, [pod], prepared(), now=T0 + 250) == expected(
        running(shown(1, AT_T0), what, "Unschedulable"), [], g=g, now=T0 + 250, requeue=150
    )


def test_a_stuck_pod_fails_its_attempt_at_exactly_the_pending_timeout() -> None:
    g = game(phases={"default": {"pendingTimeoutSeconds": 300}})
    # A message ending in "X" tells rstrip(": ") from stripping other characters.
    pod = stuck("Unschedulable", "quota exceeded: GPU_MAX", since=None, version="42")
    fail = FailJob(
        "g-r0001-sample-a1",
        "Unschedulable",
        "pod did not start within pendingTimeoutSeconds=300: Unschedulable: "
        "quota exceeded: GPU_MAX",
        "42",  # the Job as judged stuck: a pod started since makes the fail a conflict
    )
    what = "round 1 sample Unschedulable: Job g-r0001-sample-a1: quota exceeded: GPU_MAX"
    assert run(g, [pod], prepared(), now=T0 + 300) == expected(
        running(shown(1, AT_T0), what, "Unschedulable"), [fail], g=g, now=T0 + 300
    )


# ---- failed attempts: bad input, out of retries, retry ----------------------------------------


def failed(
    attempt: int,
    message: str = "",
    reason: str = "",
    exit_code: int | None = None,
) -> ObservedJob:
    return replace(
        job("sample", attempt, "Failed", finished=T0, reason=reason, message=message),
        exit_code=exit_code,
    )


def test_bad_usage_fails_the_game_naming_the_job_and_its_reason_without_a_message() -> None:
    crash = failed(1, "Segmentation fault", "PodFailurePolicy", exit_code=1)
    bad_usage = failed(2, "", "PodFailurePolicy", exit_code=2)
    message = "round 1 sample: Job g-r0001-sample-a2 failed on bad input: PodFailurePolicy"
    assert run(game(), [crash, bad_usage], prepared(), now=T0 + 1000) == expected(
        Outcome("Failed", "PhaseFailed", message, SAMPLE), [game_failed(message)], now=T0 + 1000
    )


def test_out_of_retries_names_the_last_attempt_and_its_reason() -> None:
    g = game(phases={"default": {"retry": {"limit": 1}}})
    jobs = [failed(1, "boom"), failed(2, "", "DeadlineExceeded")]
    message = "round 1 sample: Job g-r0001-sample-a2 failed after 2 attempt(s): DeadlineExceeded"
    assert run(g, jobs, prepared(), now=T0 + 1000) == expected(
        Outcome("Failed", "PhaseFailed", message, SAMPLE),
        [game_failed(message)],
        g=g,
        now=T0 + 1000,
    )


def test_out_of_retries_without_message_or_reason_says_so() -> None:
    g = game(phases={"default": {"retry": {"limit": 0}}})
    message = "round 1 sample: Job g-r0001-sample-a1 failed after 1 attempt(s): no message"
    assert run(g, [failed(1)], prepared(), now=T0 + 1000) == expected(
        Outcome("Failed", "PhaseFailed", message, SAMPLE),
        [game_failed(message)],
        g=g,
        now=T0 + 1000,
    )


def test_backing_off_shows_the_failed_attempt_and_when_the_next_one_starts() -> None:
    outcome = running(shown(1), backing_off=f"retrying round 1 sample at {AT_T0_10}")
    assert run(game(), [failed(1, "boom")], prepared(), now=T0 + 4) == expected(
        outcome, [], now=T0 + 4, requeue=6
    )


def test_a_retry_starts_the_next_attempt_with_an_event_saying_why() -> None:
    # No Job condition reason: the retries metric says "Failed"; the event gives the message.
    assert run(game(), [failed(1, "boom")], prepared(), now=T0 + 10) == expected(
        running(shown(2, AT_T0_10)),
        [
            CreateJob(1, "sample", 2, "Failed"),
            RecordEvent(
                "Warning",
                "PhaseRetried",
                "round 1 sample: attempt 2 after g-r0001-sample-a1 failed: boom",
            ),
        ],
        now=T0 + 10,
    )


def test_a_retry_after_a_failure_without_message_gives_the_job_reason() -> None:
    d = run(game(), [failed(1, "", "BackoffLimitExceeded")], prepared(), now=T0 + 10)
    assert d.actions == [
        CreateJob(1, "sample", 2, "BackoffLimitExceeded"),
        RecordEvent(
            "Warning",
            "PhaseRetried",
            "round 1 sample: attempt 2 after g-r0001-sample-a1 failed: BackoffLimitExceeded",
        ),
    ]


def test_a_retry_whose_job_vanished_starts_the_attempt_after_it() -> None:
    """Attempt 1 failed, attempt 2 was started (status names it) and then deleted by someone:
    attempt 3 comes, since pods of attempt 2 may still be terminating under its name."""
    old = was_running(shown(2, AT_T0))
    assert run(game(), [failed(1, "boom")], prepared(), now=T0 + 10, old=old) == expected(
        running(shown(3, AT_T0_10)),
        [CreateJob(1, "sample", 3, "JobDeleted")],  # no PhaseSucceeded: sample never committed
        now=T0 + 10,
        old=old,
    )


# ---- start ----------------------------------------------------------------------------------


def test_a_phase_starts_with_attempt_one_and_an_event() -> None:
    assert run(game(), [], prepared(), now=T0 + 10) == expected(
        running(shown(1, AT_T0_10)),
        [
            CreateJob(1, "sample", 1, None),
            RecordEvent("Normal", "PhaseStarted", "round 1 sample (attempt 1)"),
        ],
        now=T0 + 10,
    )


def test_a_phase_whose_job_vanished_starts_the_next_attempt() -> None:
    old = was_running(shown(1, AT_T0))
    assert run(game(), [], prepared(), now=T0 + 10, old=old) == expected(
        running(shown(2, AT_T0_10)),
        [
            CreateJob(1, "sample", 2, "JobDeleted"),
            RecordEvent("Normal", "PhaseStarted", "round 1 sample (attempt 2)"),
        ],
        now=T0 + 10,
        old=old,
    )


# ---- commits, stale and retired Jobs ----------------------------------------------------------


def test_the_commit_of_the_phase_status_showed_is_one_event_with_its_compute_time() -> None:
    v = view((0, "prepare"), (1, "sample"))
    v.metrics[(1, "sample")] = {"compute_seconds": 12.4}
    old = was_running(shown(1, AT_T0))
    assert run(game(), [], v, old=old) == expected(
        running(shown(1, AT_T0, phase=ADV), f"round 1: {ADV}", step=RunPhase(1, ADV)),
        [
            RecordEvent("Normal", "PhaseSucceeded", "round 1 sample committed in 12 s"),
            CreateJob(1, ADV, 1, None),
            RecordEvent("Normal", "PhaseStarted", f"round 1 {ADV} (attempt 1)"),
        ],
        v=v,
        old=old,
    )


def test_a_commit_without_metrics_is_an_event_without_compute_time() -> None:
    v = view((0, "prepare"), (1, "sample"))
    del v.metrics[(1, "sample")]  # a phase that wrote no metrics.json
    d = run(game(), [], v, old=was_running(shown(1, AT_T0)))
    assert d.actions[0] == RecordEvent("Normal", "PhaseSucceeded", "round 1 sample committed")


def test_stale_jobs_are_stopped_and_old_rounds_finished_jobs_retired_before_the_plan() -> None:
    g, v = game(rounds=3), view(*phase_sequence("apo", 2))  # round 3's sample is next
    jobs = [
        job("sample", 1, "Succeeded", rnd=1),  # committed, two rounds back: retired
        job("evaluate", 1, "Active", rnd=2),  # committed, still finishing: left alone
        job("score", 1, "Active", rnd=3),  # would run out of order: stopped
    ]
    assert run(g, jobs, v) == expected(
        running(shown(1, AT_T0, rnd=3), "round 3: sample", step=RunPhase(3, "sample")),
        [
            DeleteJob("g-r0003-score-a1"),
            DeleteJob("g-r0001-sample-a1"),
            CreateJob(3, "sample", 1, None),
            RecordEvent("Normal", "PhaseStarted", "round 3 sample (attempt 1)"),
        ],
        v=v,
        g=g,
    )


def test_a_finished_game_stops_jobs_beyond_its_end_and_retires_old_ones() -> None:
    """Rounds shrank from 4 to 3 while round 4's sample ran: it is stopped; round 3's evaluate,
    committed, is left to finish; round 1's Jobs go as usual; the store is marked complete."""
    g = game(rounds=3)
    v = view(*phase_sequence("apo", 3), metrics={3: {"compute_seconds": 7.0}})
    jobs = [
        job("sample", 1, "Succeeded", rnd=1),
        job("evaluate", 1, "Active", rnd=3),
        job("sample", 1, "Active", rnd=4),
    ]
    old = AdversarialGameStatus(phase="Running", current_round=3, current_phase="evaluate")
    message = "all 3 rounds played"
    assert run(g, jobs, v, old=old) == expected(
        Outcome("Succeeded", "AllRoundsPlayed", message, GameDone(3, "AllRoundsPlayed", message)),
        [
            RecordEvent("Normal", "PhaseSucceeded", "round 3 evaluate committed in 7 s"),
            DeleteJob("g-r0004-sample-a1"),
            WriteComplete(spec_hash(g)),
            DeleteJob("g-r0001-sample-a1"),
            RecordEvent("Normal", "GameSucceeded", message),
        ],
        v=v,
        g=g,
        old=old,
    )


# ---- refusals -------------------------------------------------------------------------------


def test_a_refused_game_reports_this_generation_and_its_rounds() -> None:
    # The store holds a finished game of another spec: SpecConflict, no Jobs.
    old = AdversarialGameStatus(phase="Running", completed_rounds=1, rounds_done="1/1")
    d = run(game(rounds=2), [], view(*phase_sequence("apo", 1)), old=old, complete="other")
    assert d.status.rounds_done == "1/2"  # of spec.rounds now, not as status last said
    assert d.status.observed_generation == 1
    assert {c.observed_generation for c in d.status.conditions} == {1}
    [failed_condition] = [c for c in d.status.conditions if c.type == "Failed"]
    assert failed_condition.reason == "SpecConflict"
    assert d.actions == [RecordEvent("Warning", "SpecConflict", failed_condition.message)]


def test_a_game_that_succeeded_is_not_judged_again_until_it_is_edited() -> None:
    """An operator upgrade can change what an unchanged spec means (a new default): a game that
    had succeeded keeps its verdict, and its completion record is rewritten under the new
    reading; once edited (a new generation), or while it still runs, it is judged as usual."""
    g = game()
    done = view(*phase_sequence("apo", 1))
    settled = AdversarialGameStatus(phase="Succeeded", observed_generation=1)
    d = run(g, [], done, old=settled, complete="hash-of-another-reading")
    assert d.status.phase == "Succeeded"
    assert d.actions == [WriteComplete(spec_hash(g))]

    edited = settled.model_copy(update={"observed_generation": 0})
    d = run(g, [], done, old=edited, complete="hash-of-another-reading")
    assert d.status.phase == "Failed"
    assert [c.reason for c in d.status.conditions if c.type == "Failed"] == ["SpecConflict"]

    running = settled.model_copy(update={"phase": "Running"})
    d = run(g, [], done, old=running, complete="hash-of-another-reading")
    assert d.status.phase == "Failed"
