"""The status stored on the API server, read back (not what the operator meant to write): fields
that become empty are removed, a new phase never shows the previous phase's progress, and a
pass that changes nothing writes nothing (issue "The operator, correct on a real cluster", 2)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from harness.gameops import Operator, create, get, wait_phase
from harness.rawclient import wait_for
from sparring_operator.statuspatch import merge_patch


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_merge_patch_removes_what_went_away_and_is_empty_when_equal() -> None:
    stored = {
        "phase": "Running",
        "currentPhase": "sample",
        "activeJob": {"name": "a", "progress": {"step": 3}},
    }
    computed = {"phase": "Succeeded", "activeJob": {"name": "b"}}
    assert merge_patch(stored, computed) == {
        "phase": "Succeeded",
        "currentPhase": None,
        "activeJob": {"name": "b", "progress": None},
    }
    assert merge_patch(computed, computed) == {}
    assert merge_patch({"n": 1}, {"n": 1.0}) == {}  # the API server writes 1.0 back as 1
    assert merge_patch({"l": [1, 2]}, {"l": [2]}) == {"l": [2]}  # lists are replaced whole


def test_stored_status_loses_stale_fields_and_unchanged_passes_write_nothing(
    kube_env: Any, kubelet: Any, operator: Operator, s3_game: dict[str, Any]
) -> None:
    s3_game["spec"]["rounds"] = 1
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            try:
                job = (get(kube_env, "apo-tiny").get("status") or {}).get("activeJob")
            except Exception:  # the game may not exist yet
                continue
            if job:
                seen.append(job)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        create(kube_env, s3_game)
        obj = wait_phase(kube_env, "apo-tiny", "Succeeded", operator)
    finally:
        stop.set()
        watcher.join(10)

    status = obj["status"]
    assert "currentPhase" not in status and "activeJob" not in status, status
    # One event per transition, even with passes queued behind each other (issue 13, item 5).
    events = kube_env.list("v1/events")
    posted = [(e["reason"], e["message"]) for e in events for _ in range(e.get("count") or 1)]
    assert [r for r, _ in posted].count("GameSucceeded") == 1, posted
    transitions = [p for p in posted if p[0] in ("PhaseStarted", "PhaseSucceeded")]
    assert len(transitions) == len(set(transitions)), sorted(transitions)
    assert [r for r, _ in transitions].count("PhaseStarted") == 6  # prepare + five phases
    assert {j["name"] for j in seen} >= {"apo-tiny-r0000-prepare-a1"}, seen
    for job in seen:
        progress = job.get("progress")
        if progress and job.get("startedAt"):
            # A phase's progress is reported after its Job started, never before.
            assert _when(progress["updatedAt"]) >= _when(job["startedAt"]) - timedelta(seconds=1), (
                job
            )

    # Over the next passes (resync every second here; each lists the game's Jobs), the
    # finished game's status is left alone.
    def status_writes() -> int:
        return sum(
            1
            for r in kube_env.audit(operator.user)
            if r.resource == "adversarialgames/status" and r.verb == "patch"
        )

    def job_lists() -> int:
        return sum(
            1 for r in kube_env.audit(operator.user) if r.resource == "jobs" and r.verb == "list"
        )

    writes, lists = status_writes(), job_lists()
    wait_for(lambda: job_lists() >= lists + 3, 60, message="the operator stopped reconciling")
    assert status_writes() == writes, "an unchanged status was written again"
