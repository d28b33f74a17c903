"""The Kubernetes API answers 429 and 500 and drops watches for the whole game; the operator
recovers every time, creates no duplicate Job, and the game completes.

While a one-round game plays, a chaos thread injects faults for a while (every 1.5 s, twice
through the list, so about half the game), in turn: 500s on the
Jobs collection (list, create, kopf's watch), 429s with Retry-After on the game resource
(kopf's list/watch/patch and the status writes), 500s on status writes, on the pod list the
termination messages come from, on the store's Secret, on Events and ConfigMaps; it drops every
watch stream (cleanly and by resetting the connection) and compacts the watch history (kopf
must re-list after 410 Gone). The faults come from a proxy in front of the real API server that
only the operator talks to. The operator must ride them out without
exiting (kopf gives up on a watch after ~9 failed attempts in a row; then only a restart by the
Deployment helps, which test_fault_operator_kill shows is safe).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from faultops import GAME, Watchdog, assert_store_intact, attempts
from harness.gameops import PHASES, Operator, create, wait_phase
from harness.rawclient import wait_for
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import open_store

FAULTS: list[tuple[int, int, str | None, str] | str] = [
    (4, 500, None, r"/namespaces/[^/]+/jobs(\?|$)"),
    (3, 429, None, r"/adversarialgames"),
    "drop",
    (3, 500, "PATCH", r"/adversarialgames/[^/?]+/status"),
    (3, 500, "GET", r"/namespaces/[^/]+/pods\?"),
    (2, 429, "GET", r"/namespaces/[^/]+/secrets/"),
    "compact",
    (2, 500, "POST", r"/namespaces/[^/]+/(events|configmaps)"),
    "drop-abrupt",
]


class Chaos:
    def __init__(self, api: Any, every: float = 1.5, rounds: int = 2) -> None:
        self.api, self.every, self.rounds = api, every, rounds
        self.applied = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos")

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.api.proxy.clear_faults()
        self.api.end_compaction()

    def _run(self) -> None:
        for fault in itertools.chain.from_iterable([FAULTS] * self.rounds):
            if self._stop.wait(self.every):
                return
            if fault == "drop":
                self.api.drop_watches()
            elif fault == "drop-abrupt":
                self.api.drop_watches(abrupt=True)
            elif fault == "compact":
                # etcd compacted past every watcher's resourceVersion: resumed watches get
                # 410 Gone until the client re-lists (kopf must), then watch again.
                self.api.compact_history()
                self.api.drop_watches()
                if self._stop.wait(self.every / 2):
                    return
                self.api.end_compaction()
            else:
                times, status, method, path = fault
                retry_after = 1 if status == 429 else None
                self.api.fail_next(times, status, method, path, retry_after=retry_after)
            self.applied += 1


@pytest.mark.slow  # ~45 s on 2 cores: run by .ci/run, not by default
def test_api_errors_and_dropped_watches_cost_no_attempt_and_no_duplicate(
    kube_env: Any,
    kubelet: Any,
    operator: Operator,
    s3_game: dict[str, Any],
    s3_storage: StorageSpec,
) -> None:
    with Watchdog(kube_env, kubelet) as dog:
        # The first Job create fails twice: the failed pass is retried after one resync
        # interval (1 s here), as a missed event would be, not after kopf's default 60 s.
        kube_env.fail_next(2, 500, "POST", r"/namespaces/[^/]+/jobs$")
        create(kube_env, s3_game)
        wait_for(lambda: attempts(kube_env), 20, message=operator.tail)
        with Chaos(kube_env) as chaos:
            obj = wait_phase(kube_env, GAME, "Succeeded", operator)
    dog.check()
    assert operator.proc is not None and operator.proc.poll() is None, "the operator exited"

    hit = [r for r in kube_env.requests if r.injected]  # the proxy sees the operator only
    assert chaos.applied == 2 * len(FAULTS), chaos.applied
    # 429/500 answers, and the 410 Expired events the proxy sent on resumed watches (HTTP 200,
    # as a real API server sends them).
    assert {r.status for r in hit} == {200, 429, 500}, "the faults never reached the operator"
    assert all(r.watch for r in hit if r.status == 200)
    assert {r.resource for r in hit} >= {"jobs", "adversarialgames/status", "pods"}, hit
    assert obj["status"]["completedRounds"] == 1
    assert attempts(kube_env) == {
        (r, p): [f"{GAME}-r{r:04d}-{p}-a1"] for r, p in [(0, "prepare")] + [(1, p) for p in PHASES]
    }
    assert_store_intact(open_store(s3_storage), kube_env.namespace)
