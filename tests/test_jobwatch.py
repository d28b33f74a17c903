"""Why a phase pod is not running, read from the pod status the kubelet and scheduler write
(`jobwatch.pod_waiting`); the states are those of the Kubernetes API reference."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodStatus,
)
from sparring_operator.jobwatch import pod_waiting

CREATED = datetime(2026, 12, 1, 10, 0, 0, tzinfo=timezone.utc)
SCHEDULED_FALSE_AT = datetime(2026, 12, 1, 10, 0, 5, tzinfo=timezone.utc)


def pod(
    conditions: list[V1PodCondition] | None = None, waiting: tuple[str, str] | None = None
) -> V1Pod:
    statuses = None
    if waiting is not None:
        state = V1ContainerState(
            waiting=V1ContainerStateWaiting(reason=waiting[0], message=waiting[1])
        )
        statuses = [
            V1ContainerStatus(
                name="phase", image="img", image_id="", ready=False, restart_count=0, state=state
            )
        ]
    return V1Pod(
        metadata=V1ObjectMeta(name="p", creation_timestamp=CREATED),
        status=V1PodStatus(phase="Pending", conditions=conditions, container_statuses=statuses),
    )


def test_unschedulable_names_the_scheduler_message_and_when_it_started() -> None:
    cond = V1PodCondition(
        type="PodScheduled", status="False", reason="Unschedulable",
        message="0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
        last_transition_time=SCHEDULED_FALSE_AT,
    )  # fmt: skip
    assert pod_waiting(pod([cond])) == (
        "Unschedulable",
        "0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
        SCHEDULED_FALSE_AT.timestamp(),
    )


@pytest.mark.parametrize(
    "reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"]
)
def test_a_container_that_cannot_start_is_stuck_since_the_pod_was_created(reason: str) -> None:
    message = 'Back-off pulling image "ghcr.io/team/trainer:nope"'
    # The kubelet alternates ErrImagePull and ImagePullBackOff: one reason for the situation.
    shown = "ImagePullBackOff" if reason == "ErrImagePull" else reason
    assert pod_waiting(pod(waiting=(reason, message))) == (shown, message, CREATED.timestamp())


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing"])
def test_a_pod_on_its_way_is_not_stuck(reason: str) -> None:
    scheduled = V1PodCondition(type="PodScheduled", status="True")
    assert pod_waiting(pod([scheduled], waiting=(reason, ""))) == ("", "", None)
    assert pod_waiting(pod()) == ("", "", None)  # not even scheduled yet: no condition


# ---- the copies passes decide from (jobwatch.JobWatch.seen, watchcache.GameCache) --------------


def _obj(name: str, rv: str, **labels: str) -> dict[str, object]:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": rv}
    return {"metadata": {**meta, "labels": labels}, "status": {"phase": rv}}


def test_the_newer_copy_of_a_game_wins_whichever_arrives_last() -> None:
    from sparring_operator.watchcache import GameCache

    def version(game: dict[str, Any] | None) -> Any:
        return None if game is None else game["status"]["phase"]  # _obj's status names its rv

    games = GameCache(api=None)  # type: ignore[arg-type]  # no request is made below
    games.remember(_obj("g", "120"))  # our status write's answer...
    games.remember(_obj("g", "119"))  # ...then the watch's older event for the same game
    assert version(games.read("ns", "g", fresh=False)) == "120"
    games.remember(_obj("g", "121"))  # someone changed the game since
    assert version(games.read("ns", "g", fresh=False)) == "121"
    games.forget("ns", "g")
    assert games.tracked() == set()


def test_the_cached_copy_keeps_what_passes_read_and_drops_the_bulk() -> None:
    from sparring_operator.watchcache import GameCache

    game = _obj("g", "7")
    game["metadata"] |= {  # type: ignore[operator]
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}] * 50,
        "annotations": {"sparring.dev/last-handled-configuration": "x" * 10_000},
        "generation": 3,
    }
    game["spec"] = {"rounds": 2}
    games = GameCache(api=None)  # type: ignore[arg-type]
    games.remember(game)
    kept = games.read("ns", "g", fresh=False)
    assert kept is not None
    assert kept["spec"] == {"rounds": 2} and kept["metadata"]["generation"] == 3
    assert kept["metadata"]["labels"] == {}  # kopf.adopt copies the owner's labels
    assert "managedFields" not in kept["metadata"] and "annotations" not in kept["metadata"]


def test_job_events_of_a_game_never_listed_are_not_kept() -> None:
    """A deleted game's Jobs go after it (garbage collection): their events must not bring the
    game's entry back, or a long-running operator would keep every deleted game's Jobs."""
    from sparring_operator.jobwatch import JobWatch

    watch = JobWatch(api=None)  # type: ignore[arg-type]  # no request is made below
    watch.seen(_obj("g-r0000-prepare-a1", "5", **{"sparring.dev/game": "g"}))
    watch.seen(_obj("g-r0000-prepare-a1", "6", **{"sparring.dev/game": "g"}), deleted=True)
    assert watch.tracked() == set()


def _ended_pod(created: str, message: str, code: int, game: str = "g") -> dict[str, object]:
    terminated = {"exitCode": code, "message": message, "reason": "Error"}
    return {
        "metadata": {
            "name": f"p-{created}", "namespace": "ns", "creationTimestamp": created,
            "labels": {"sparring.dev/game": game},
            "ownerReferences": [{"uid": "job-1", "controller": True, "kind": "Job"}],
        },
        "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": terminated}}]},
    }  # fmt: skip


def test_an_ended_pod_says_the_trainers_error_line_and_its_exit_code() -> None:
    from sparring_operator.jobwatch import outcome_of_pod

    pod = _ended_pod("2026-12-01T10:00:00Z", '{"error": "data row 7: no prompt", "exitCode": 3}', 3)
    outcome = outcome_of_pod(pod)
    assert (outcome.message, outcome.exit_code) == ("data row 7: no prompt", 3)
    evicted = {"metadata": {}, "status": {"phase": "Failed", "message": "The node was low on disk"}}
    assert outcome_of_pod(evicted).message == "The node was low on disk"
