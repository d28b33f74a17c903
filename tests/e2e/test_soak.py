"""500 games created, played and deleted: the operator's memory stays flat (issue "The operator,
correct on a real cluster", item 11).

The operator (`sparring operator`, a child process, as the chart's ServiceAccount) runs against
the real control plane with moto S3. Each game is a one-round apo-tiny whose store already holds
every phase but the last, so a game costs the operator what a real one does at its end: it reads
the committed phases, creates the last phase's Job and ConfigMap (this test commits that phase,
as the phase pod would), sees it commit, writes `_COMPLETE`, posts events, writes status and
exports the game's series. Then the game is deleted. Games go 25 at a time.

Everything the operator keeps per game (store reads, Job outcomes, locks, the resync set,
metric series) must go with the game: after each batch its `sparring_operator_tracked_games`
gauge is back to 0 and no series of a deleted game is left on /metrics, and the operator's RSS
after 500 games is within 10% of its RSS after the first 50.
"""

from __future__ import annotations

import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from pathlib import Path
from typing import Any

import pytest
from harness import chartops
from harness.controlplane import free_port
from harness.fixtures import operator_kubeconfig
from harness.gameops import Operator, apo_tiny, create, create_secret, get
from harness.rawclient import wait_for
from kubernetes import client as k8s
from sparring_operator.api import GROUP, PLURAL, VERSION
from sparring_operator.machine import phase_sequence
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import ArtifactStore, commit, open_store, phase_prefix

# SPARRING_SOAK_GAMES=100 for a shorter look; the figure is 500.
GAMES, BATCH, WARM = int(os.environ.get("SPARRING_SOAK_GAMES", "500")), 25, 50
TIMEOUT = 120.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def scrape(port: int) -> str:
    return str(
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    )


def series_of_games(port: int) -> set[str]:
    """Names of the games that have a `sparring_game_status` series on /metrics."""
    return {
        line.split('name="', 1)[1].split('"', 1)[0]
        for line in scrape(port).splitlines()
        if line.startswith("sparring_game_status{")
    }


def tracked_games(port: int) -> float:
    """How many games the operator keeps per-game state for, by its own gauge."""
    for line in scrape(port).splitlines():
        if line.startswith("sparring_operator_tracked_games "):
            return float(line.split()[1])
    raise AssertionError("no sparring_operator_tracked_games on /metrics")


def commit_phase(store: ArtifactStore, namespace: str, game: str, marker: tuple[int, str]) -> None:
    prefix = phase_prefix(namespace, game, *marker)
    store.put_bytes(prefix + "metrics.json", b'{"compute_seconds": 0.0}')
    commit(store, prefix)


@pytest.mark.slow  # ~5 min on 2 cores
def test_the_operator_forgets_deleted_games(
    kube_env: Any, tmp_path: Path, s3_storage: StorageSpec
) -> None:
    create_secret(kube_env, "s3-credentials", "testing", "testing")
    store, ns = open_store(s3_storage), kube_env.namespace
    *before_last, last = phase_sequence("apo", 1)
    release = f"op-{ns}"
    kubeconfig, _ = operator_kubeconfig(kube_env, tmp_path / "operator.kubeconfig", release)
    port = free_port()
    op = Operator(kubeconfig, tmp_path / "operator.log", metrics_port=port, namespace=ns).start()
    custom, batch = k8s.CustomObjectsApi(kube_env.client), k8s.BatchV1Api(kube_env.client)
    rss: dict[int, int] = {}
    try:
        for first in range(0, GAMES, BATCH):
            names = [f"soak-{i:03d}" for i in range(first, first + BATCH)]
            with ThreadPoolExecutor(8) as pool:  # moto answers each request in a few ms
                list(pool.map(lambda m: commit_phase(store, ns, *m), product(names, before_last)))
            for name in names:
                doc = apo_tiny(s3_storage, rounds=1)
                doc["metadata"] = {"name": name, "namespace": ns}
                create(kube_env, doc)
            pending = set(names)
            while pending:  # the last phase's Job appears: commit it, as its pod would
                jobs = batch.list_namespaced_job(ns, label_selector="sparring.dev/game").items
                for job in jobs:
                    game = job.metadata.labels["sparring.dev/game"]
                    if game in pending:
                        commit_phase(store, ns, game, last)
                        pending.discard(game)
                if pending:
                    seen = len(jobs)
                    wait_for(
                        lambda: len(batch.list_namespaced_job(ns).items) > seen,  # noqa: B023 (called at once)
                        TIMEOUT,
                        message=op.tail,
                    )
            for name in names:
                wait_for(
                    lambda n=name: (
                        (get(kube_env, n).get("status") or {}).get("phase") == "Succeeded"
                    ),
                    TIMEOUT,
                    message=op.tail,
                )
                custom.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, name, propagation_policy="Foreground"
                )
            # Gone from the API (Foreground: their Jobs and ConfigMaps first) and from /metrics.
            wait_for(
                lambda: (
                    not custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
                ),
                TIMEOUT,
                message=op.tail,
            )
            wait_for(lambda: not series_of_games(port), TIMEOUT, message=op.tail)
            # ...and from every cache, lock and schedule the operator keeps per game.
            wait_for(lambda: tracked_games(port) == 0, TIMEOUT, message=op.tail)
            assert op.proc is not None and op.proc.poll() is None, op.tail()
            rss[first + BATCH] = rss_kib(op.proc.pid)
    finally:
        op.kill()
        chartops.delete_cluster_objects(kube_env.client, release)
    print(f"operator RSS (KiB) after n games: {rss}")
    assert rss[GAMES] <= rss[WARM] * 1.10, (
        f"RSS grew from {rss[WARM]} KiB after {WARM} games to {rss[GAMES]} KiB after {GAMES}"
    )
