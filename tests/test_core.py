"""The operator's pure decision core, one lifecycle rule per test, no server involved."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sparring_operator.actions import (
    CreateJob,
    DeleteJob,
    FailJob,
    ObservedJob,
    RecordEvent,
    WriteComplete,
)
from sparring_operator.api import AdversarialGame, AdversarialGameStatus
from sparring_operator.core import decide
from sparring_operator.machine import phase_sequence
from sparring_operator.observed import StoreView
from sparring_operator.refusals import spec_hash

T0 = 1_700_000_000.0


def game(**spec: Any) -> AdversarialGame:
    body = {
        "apiVersion": "sparring.dev/v1alpha1",
        "kind": "AdversarialGame",
        "metadata": {"name": "g", "namespace": "ns"},
        "spec": {
            "rounds": 1,
            "storage": {"uri": "s3://bucket"},
            "game": {"policy": {"model": "tiny-random"}, "adversary": {"model": "tiny-random"}},
            "phases": {"default": {"retry": {"limit": 2, "backoffSeconds": 10}}},
            **spec,
        },
    }
    return AdversarialGame.model_validate(body)


def view(
    *markers: tuple[int, str], metrics: dict[int, dict[str, float]] | None = None
) -> StoreView:
    v = StoreView()
    for m in markers:
        v.committed.add(m)
        v.uris[m] = f"s3://bucket/ns/g/round-{m[0]:04d}/{m[1]}/"
        v.committed_at[m] = "2026-01-01T00:00:00Z"
        v.metrics[m] = (metrics or {}).get(m[0], {}) if m[1] == "evaluate" else {}
    return v


def job(
    phase: str,
    attempt: int,
    state: str,
    rnd: int = 1,
    finished: float | None = None,
    reason: str = "",
    message: str = "",
) -> ObservedJob:
    return ObservedJob(
        f"g-r{rnd:04d}-{phase}-a{attempt}",
        rnd,
        phase,
        attempt,
        state,
        created_at=T0,
        finished_at=finished,
        reason=reason,
        message=message,
    )


def run(
    g: AdversarialGame,
    jobs: list[ObservedJob],
    v: StoreView,
    now: float = T0,
    old: AdversarialGameStatus | None = None,
    complete: str | None = None,
) -> Any:
    return decide(g, 1, old or AdversarialGameStatus(), jobs, v, complete, T0, now)


def creates(decision: Any) -> list[CreateJob]:
    return [a for a in decision.actions if isinstance(a, CreateJob)]


def test_a_new_game_starts_with_prepare() -> None:
    d = run(game(), [], view())
    assert creates(d) == [CreateJob(0, "prepare", 1)]
    assert d.status.phase == "Running" and d.status.current_phase == "prepare"
    assert d.status.active_job is not None and d.status.active_job.name == "g-r0000-prepare-a1"


def test_a_running_job_is_left_alone() -> None:
    d = run(game(), [job("prepare", 1, "Active", rnd=0)], view())
    assert d.actions == []
    assert d.status.active_job is not None and d.status.active_job.attempt == 1


def test_failure_is_retried_after_exponential_backoff_then_gives_up() -> None:
    g, v = game(), view((0, "prepare"))
    first = [job("sample", 1, "Failed", finished=T0, message="boom")]
    waiting = run(g, first, v, now=T0 + 5)
    assert creates(waiting) == [] and waiting.requeue_after == 5
    conditions = {c.type: c for c in waiting.status.conditions}
    assert conditions["Reconciling"].status == "True"
    assert conditions["Reconciling"].reason == "BackingOff"
    assert conditions["Stalled"].status == "False"  # kstatus: backing off is not failing
    assert creates(run(g, first, v, now=T0 + 10)) == [CreateJob(1, "sample", 2, "Failed")]
    second = [*first, job("sample", 2, "Failed", finished=T0 + 20)]
    assert creates(run(g, second, v, now=T0 + 39)) == []  # 10 s * 2**1 after the 2nd failure
    assert creates(run(g, second, v, now=T0 + 40)) == [CreateJob(1, "sample", 3, "Failed")]
    third = [*second, job("sample", 3, "Failed", finished=T0 + 50, message="still boom")]
    d = run(g, third, v, now=T0 + 1000)
    assert creates(d) == [] and d.status.phase == "Failed"
    assert "g-r0001-sample-a3" in (d.status.message or "") and "still boom" in (
        d.status.message or ""
    )
    assert any(isinstance(a, RecordEvent) and a.reason == "GameFailed" for a in d.actions)
    assert {c.type: c.status for c in d.status.conditions}["Stalled"] == "True"


def test_bad_input_is_not_retried_but_a_crash_is() -> None:
    """Every non-zero exit fails the Job by its pod failure policy; the exit code tells bad
    input (3, 2: fail the game) from a crash (retried)."""
    bad = replace(
        job("sample", 1, "Failed", finished=T0, reason="PodFailurePolicy", message="no such file"),
        exit_code=3,
    )
    d = run(game(), [bad], view((0, "prepare")), now=T0 + 1000)
    assert creates(d) == [] and d.status.phase == "Failed"
    assert "no such file" in (d.status.message or "")
    crash = replace(bad, exit_code=1, message="Segmentation fault")
    d = run(game(), [crash], view((0, "prepare")), now=T0 + 1000)
    assert creates(d) == [CreateJob(1, "sample", 2, "PodFailed")]


def test_a_job_that_succeeded_without_committing_counts_as_a_failed_attempt() -> None:
    done_but_nothing_committed = job("sample", 1, "Succeeded", finished=T0)
    d = run(game(), [done_but_nothing_committed], view((0, "prepare")), now=T0 + 10)
    assert creates(d) == [CreateJob(1, "sample", 2, "Failed")]
    limit = game(phases={"default": {"retry": {"limit": 0}}})
    d = run(limit, [done_but_nothing_committed], view((0, "prepare")), now=T0 + 10)
    assert creates(d) == [] and d.status.phase == "Failed"
    assert "g-r0001-sample-a1 failed after 1 attempt(s)" in (d.status.message or "")


def waiting(reason: str, message: str, since: float = T0) -> ObservedJob:
    return replace(
        job("sample", 1, "Active"), waiting=reason, waiting_message=message, waiting_since=since
    )


def test_a_pod_that_cannot_start_is_shown_then_fails_the_attempt_after_the_timeout() -> None:
    g = game(phases={"default": {"pendingTimeoutSeconds": 300, "retry": {"limit": 1}}})
    stuck = waiting("ImagePullBackOff", 'Back-off pulling image "nope:1"')
    d = run(g, [stuck], view((0, "prepare")), now=T0 + 100)
    running = {c.type: c for c in d.status.conditions}["Running"]
    assert (running.status, running.reason) == ("True", "ImagePullBackOff")
    assert 'Back-off pulling image "nope:1"' in running.message
    assert d.status.message is not None and d.requeue_after == 200
    assert d.status.message.startswith(
        "round 1 sample ImagePullBackOff (a failed attempt at 2023-11-14T22:18:20Z)"
    )
    assert not any(isinstance(a, FailJob) for a in d.actions)
    later = run(g, [stuck], view((0, "prepare")), now=T0 + 150, old=d.status)
    assert later.status == d.status  # no countdown in status: nothing to write on each pass
    d = run(g, [stuck], view((0, "prepare")), now=T0 + 300)
    [fail] = [a for a in d.actions if isinstance(a, FailJob)]
    assert (fail.name, fail.reason) == ("g-r0001-sample-a1", "ImagePullBackOff")
    assert "pendingTimeoutSeconds=300" in fail.message and "nope:1" in fail.message
    assert not creates(d)  # the next attempt comes from the failed Job, after its backoff


def test_a_job_queued_by_kueue_is_shown_but_never_timed_out() -> None:
    queued = waiting("Queued", "suspended, waiting for admission by Kueue queue team-a")
    d = run(game(), [queued], view((0, "prepare")), now=T0 + 86_400 * 7)
    assert not any(isinstance(a, FailJob) for a in d.actions) and d.requeue_after is None
    assert "Kueue queue team-a" in (d.status.message or "")
    assert {c.type: c.reason for c in d.status.conditions}["Running"] == "Queued"


def test_status_depends_on_the_injected_clock_only() -> None:
    """The same observations at the same `now` give the same status, to the character."""
    jobs, v = [job("sample", 1, "Failed", finished=T0)], view((0, "prepare"))
    first = run(game(), jobs, v, now=T0 + 5)
    assert run(game(), jobs, v, now=T0 + 5).status == first.status
    stamps = {c.last_transition_time for c in first.status.conditions}
    assert stamps == {"2023-11-14T22:13:25Z"}, stamps  # T0 + 5, not the wall clock
    assert first.status.rounds_done == "0/1"


def test_a_deleted_job_is_recreated_as_the_next_attempt() -> None:
    old = run(game(), [], view((0, "prepare"))).status  # status remembers attempt 1 of sample
    assert old.active_job is not None and old.active_job.attempt == 1
    d = run(game(), [], view((0, "prepare")), old=old)  # the Job vanished
    assert creates(d) == [CreateJob(1, "sample", 2, "JobDeleted")]


def test_suspend_deletes_the_running_job_and_resume_starts_the_phase_again() -> None:
    running = [job("sample", 1, "Active")]
    d = run(game(suspend=True), running, view((0, "prepare")))
    assert DeleteJob("g-r0001-sample-a1") in d.actions and d.status.phase == "Suspended"
    resumed = run(game(), [], view((0, "prepare")), old=d.status)
    assert resumed.status.phase == "Running" and len(creates(resumed)) == 1


def test_success_writes_complete_and_rounds_may_grow() -> None:
    done = view(*phase_sequence("apo", 1), metrics={1: {"rm_accuracy": 0.6}})
    d = run(game(), [], done)
    assert d.status.phase == "Succeeded" and d.status.completed_rounds == 1
    assert WriteComplete(spec_hash(game())) in d.actions
    assert d.status.rounds[-1].metrics["rm_accuracy"] == 0.6
    grown = run(game(rounds=2), [], done, old=d.status, complete=spec_hash(game()))
    assert creates(grown) == [CreateJob(2, "sample", 1)] and grown.status.phase == "Running"


def test_every_phase_commit_is_one_event_the_last_one_included() -> None:
    """Playing a game pass by pass, each pass deciding from the status the previous one wrote,
    posts one PhaseSucceeded per phase (the last one used to be missing) and GameSucceeded once."""
    sequence = phase_sequence("apo", 1)
    status, posted = AdversarialGameStatus(), []
    for done in range(len(sequence) + 1):
        committed = view(*sequence[:done])
        for _ in range(2):  # a second pass with nothing new posts nothing
            d = run(game(), [], committed, old=status)
            posted += [(a.reason, a.message) for a in d.actions if isinstance(a, RecordEvent)]
            status = d.status
    succeeded = [m for r, m in posted if r == "PhaseSucceeded"]
    assert succeeded == [f"round {r} {p} committed" for r, p in sequence]
    assert [r for r, _ in posted].count("GameSucceeded") == 1
    assert status.phase == "Succeeded"


def test_recreated_game_with_the_same_spec_is_succeeded_without_jobs() -> None:
    done = view(*phase_sequence("apo", 1))
    d = run(game(), [], done, complete=spec_hash(game()))
    assert d.status.phase == "Succeeded" and not creates(d)
    assert not any(isinstance(a, WriteComplete) for a in d.actions)


def test_recreated_game_with_another_spec_fails_instead_of_mixing_artifacts() -> None:
    other = game(
        game={"seed": 7, "policy": {"model": "tiny-random"}, "adversary": {"model": "tiny-random"}}
    )
    d = run(other, [], view(*phase_sequence("apo", 1)), complete=spec_hash(game()))
    assert d.status.phase == "Failed" and not creates(d)
    assert {c.reason for c in d.status.conditions if c.type == "Failed"} == {"SpecConflict"}


def test_unfinished_game_recreated_with_a_changed_field_fails_naming_it() -> None:
    """Phases committed under lr 1e-4; the game comes back with 2e-4: the change invalidates
    round 1's update-policy, so the operator refuses it, naming the field, old and new values."""
    from sparring_trainer.identity import game_record

    played = game()
    changed = game(game={"policy": {"model": "tiny-random", "update": {"learningRate": 2e-4}},
                         "adversary": {"model": "tiny-random"}})  # fmt: skip
    markers = phase_sequence("apo", 1)[:5]  # through update-policy: evaluate still to run
    v = view(*markers)
    for m in markers:
        v.games[m] = game_record(played.spec.game)
    assert run(played, [], v).status.phase != "Failed"  # the same spec plays on
    d = run(changed, [], v)
    assert d.status.phase == "Failed" and not creates(d)
    failed = [c for c in d.status.conditions if c.type == "Failed"]
    assert {c.reason for c in failed} == {"SpecConflict"}
    assert "spec.game.policy.update.learningRate: 5e-05 -> 0.0002" in failed[0].message
    assert "from round 1 update-policy on" in failed[0].message
    # A change read only by phases not yet committed is no conflict: sampling is read from
    # round 1's sample on, which committed, but here nothing past prepare committed.
    early = view((0, "prepare"))
    early.games[(0, "prepare")] = game_record(played.spec.game)
    assert run(changed, [], early).status.phase != "Failed"


def test_game_deadline_fails_and_stops_the_job() -> None:
    d = run(
        game(activeDeadlineSeconds=60),
        [job("sample", 1, "Active")],
        view((0, "prepare")),
        now=T0 + 61,
    )
    assert d.status.phase == "Failed" and DeleteJob("g-r0001-sample-a1") in d.actions


def test_early_stop() -> None:
    g = game(rounds=3, earlyStop={"metric": "rm_accuracy", "threshold": 0.5})
    d = run(g, [], view(*phase_sequence("apo", 1), metrics={1: {"rm_accuracy": 0.7}}))
    assert d.status.phase == "Succeeded" and not creates(d)
    assert {c.reason for c in d.status.conditions if c.type == "Succeeded"} == {"EarlyStopped"}


def test_condition_transition_time_only_moves_when_status_changes() -> None:
    first = run(game(), [job("prepare", 1, "Active", rnd=0)], view())
    later = run(
        game(), [job("prepare", 1, "Active", rnd=0)], view(), now=T0 + 500, old=first.status
    )
    assert later.status == first.status


def test_finished_jobs_of_rounds_before_the_last_two_are_deleted() -> None:
    """Retention (issue 13, item 12): the last two rounds' Jobs stay; older finished ones of
    committed phases go; a running Job and an uncommitted phase's Jobs are never retired."""
    from sparring_operator.core import _retired

    view = StoreView(committed={(0, "prepare"), (1, "sample"), (1, "score"), (2, "sample")})
    jobs = [
        ObservedJob("g-r0000-prepare-a1", 0, "prepare", 1, "Succeeded", 0.0),
        ObservedJob("g-r0001-sample-a1", 1, "sample", 1, "Failed", 0.0),
        ObservedJob("g-r0001-sample-a2", 1, "sample", 2, "Succeeded", 0.0),
        ObservedJob("g-r0001-score-a1", 1, "score", 1, "Active", 0.0),
        ObservedJob("g-r0002-sample-a1", 2, "sample", 1, "Succeeded", 0.0),
    ]
    assert [a.name for a in _retired(jobs, view, 2)] == ["g-r0000-prepare-a1"]
    assert [a.name for a in _retired(jobs, view, 3)] == [
        "g-r0000-prepare-a1",
        "g-r0001-sample-a1",
        "g-r0001-sample-a2",
    ]
    assert _retired(jobs, view, 1) == []
