"""One writer per game, on the real control plane (issue "Results you can trust", item 5): the
operator holds a game's lease in its store while it plays it. A game that another writer (a
`sparring run` somewhere) plays is Stalled, naming the holder, with no Job; once that lease
is released the operator takes it and plays; while the operator plays, a `sparring run` of the
same game on the same store is refused, naming the operator."""

from __future__ import annotations

from typing import Any

from harness.gameops import Operator, create, get, jobs, wait_phase
from harness.rawclient import wait_for
from sparring_trainer.document import StorageSpec
from sparring_trainer.lease import GameLease, LeaseHeld
from sparring_trainer.store import open_store


def test_the_operator_and_another_writer_never_play_one_game_at_once(
    kube_env: Any, operator: Operator, s3_storage: StorageSpec, s3_game: dict[str, Any]
) -> None:
    store = open_store(s3_storage)
    elsewhere = GameLease(store, kube_env.namespace, "apo-tiny", "sparring run on laptop (pid 7)")
    elsewhere.acquire()
    create(kube_env, s3_game)

    def stalled() -> dict[str, Any] | None:
        conditions = {c["type"]: c for c in (get(kube_env, "apo-tiny").get("status") or {})
                      .get("conditions", [])}  # fmt: skip
        held = conditions.get("Stalled", {})
        return held if held.get("reason") == "LeaseHeld" else None

    held = wait_for(stalled, 60, message=operator.tail)
    assert "being played by sparring run on laptop (pid 7)" in held["message"]
    assert not jobs(kube_env, "apo-tiny")

    elsewhere.release()  # the other run finished: the operator takes over on its next pass
    wait_for(lambda: jobs(kube_env, "apo-tiny") or None, 90, message=operator.tail)
    mine = GameLease(store, kube_env.namespace, "apo-tiny", "sparring run on laptop (pid 8)")
    try:
        mine.acquire()
        raise AssertionError("a second writer took the lease of a game the operator plays")
    except LeaseHeld as exc:
        assert "being played by the sparring operator" in str(exc)
    wait_phase(kube_env, "apo-tiny", "Succeeded", operator)
    # Done: the operator let the lease go, so the store is free for the next writer.
    mine.acquire()
    mine.release()
