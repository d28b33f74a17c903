"""Passes woken by a Job or pod event decide from what the watches delivered, with the
operator's own writes applied: they read nothing from the API server (issue "The operator,
correct on a real cluster", 13: "list less"), and still never repeat a transition.

The operator runs here with a resync far longer than the game, so that every pass after the
game's first is woken by a watch event: each of those would list the game's Jobs and read the
game again if the cache were not used, and would start a phase twice (and post its event twice)
if the cache missed the Job the previous pass created.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.cluster import Kube
from harness.fixtures import running_operator
from harness.gameops import Operator, create, wait_phase


@pytest.fixture
def slow_resync_operator(kube_env: Kube, tmp_path: Path) -> Iterator[Operator]:
    with running_operator(kube_env, tmp_path, resync_seconds=3600) as op:
        yield op


def test_event_passes_read_the_watch_and_still_start_each_phase_once(
    kube_env: Kube, kubelet: Any, slow_resync_operator: Operator, s3_game: dict[str, Any]
) -> None:
    op = slow_resync_operator
    s3_game["spec"]["rounds"] = 1
    create(kube_env, s3_game)
    wait_phase(kube_env, "apo-tiny", "Succeeded", op)

    requests = [r for r in kube_env.audit(op.user) if r.namespace == kube_env.namespace]
    created = [r for r in requests if r.resource == "jobs" and r.verb == "create"]
    lists = [r for r in requests if r.resource == "jobs" and r.verb == "list"]
    reads = [r for r in requests if r.resource == "adversarialgames" and r.verb == "get"]
    assert len(created) == 6, [r.uri for r in created]  # prepare + five phases, once each
    # The create handler's pass reads afresh (one list, one get; a retried handler one more);
    # the dozens of passes the six Jobs and their pods woke read the watch's copies.
    assert len(lists) <= 2, [r.uri for r in lists]
    assert len(reads) <= 2, [r.uri for r in reads]

    events = kube_env.list("v1/events")
    posted = [(e["reason"], e["message"]) for e in events for _ in range(e.get("count") or 1)]
    started = [p for p in posted if p[0] == "PhaseStarted"]
    succeeded = [p for p in posted if p[0] == "PhaseSucceeded"]
    assert len(started) == len(set(started)) == 6, sorted(started)
    assert len(succeeded) == len(set(succeeded)) == 6, sorted(succeeded)
    assert [r for r, _ in posted].count("GameSucceeded") == 1, posted
