"""One writer per game (issue "Results you can trust", item 5): the store's compare-and-swap on
a file store and on a real S3 server (moto), the lease built on it with an injected clock, and
two `sparring run` of one game on one store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from sparring_trainer.document import StorageSpec
from sparring_trainer.lease import GameLease, LeaseHeld, LeaseRecord
from sparring_trainer.store import (
    ArtifactStore,
    open_store,
    phase_prefix,
    require_committed,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return open_store(StorageSpec(uri=f"file://{tmp_path / 'store'}"))
    return open_store(request.getfixturevalue("s3_storage"))


def test_swap_writes_only_over_what_was_expected(store: ArtifactStore) -> None:
    assert store.swap("g/_LEASE", b"one", None)
    assert not store.swap("g/_LEASE", b"two", None)  # it exists now
    assert not store.swap("g/_LEASE", b"two", b"not what is there")
    assert store.get_bytes("g/_LEASE") == b"one"
    assert store.swap("g/_LEASE", b"two", b"one")
    assert store.get_bytes("g/_LEASE") == b"two"


def test_of_racing_writers_exactly_one_swaps(store: ArtifactStore) -> None:
    start, results = threading.Barrier(8), []

    def race(i: int) -> None:
        start.wait()
        results.append(store.swap("race/_LEASE", f"writer {i}".encode(), None))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_live_lease_refuses_a_second_writer_and_an_expired_one_is_taken_over(
    store: ArtifactStore,
) -> None:
    clock = Clock()
    first = GameLease(store, "team", "game", "run A", seconds=60, clock=clock)
    second = GameLease(store, "team", "game", "run B", seconds=60, clock=clock)
    first.acquire()
    with pytest.raises(LeaseHeld, match=r"being played by run A .* expires at 1970-01-12 13:47"):
        second.acquire()
    clock.now += 30
    first.renew()  # renewed at +30: valid until +90
    clock.now += 59
    with pytest.raises(LeaseHeld, match="run A"):
        second.acquire()
    clock.now += 2  # +91: first stopped renewing (killed)
    second.acquire()
    with pytest.raises(LeaseHeld, match="now held by run B"):
        first.renew()
    first.release()  # not its lease any more: run B keeps it
    with pytest.raises(LeaseHeld, match="run B"):
        GameLease(store, "team", "game", "run C", clock=clock).acquire()
    second.release()
    GameLease(store, "team", "game", "run C", clock=clock).acquire()
    # Another game of the same store is another lease.
    GameLease(store, "team", "other", "run D", clock=clock).acquire()


def test_two_runs_of_one_game_on_one_store(tmp_path: Path) -> None:
    """The second exits at once naming the first as the holder; the first plays to the end and
    every committed phase's manifest verifies."""
    store_dir = tmp_path / "store"
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"] = {"uri": f"file://{store_dir}"}
    doc["spec"]["rounds"] = 1
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "sparring_operator", "run", str(game)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path)  # fmt: skip
    try:
        lease = store_dir / "default" / "apo-tiny" / "_LEASE"
        deadline = time.monotonic() + 120
        while not lease.exists():  # the first run holds the lease before its first phase
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took the lease"
            time.sleep(0.05)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                                cwd=tmp_path)  # fmt: skip
        _, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert second.returncode != 0
    assert f"being played by sparring run on {os.uname().nodename} (pid {first.pid})" in (
        " ".join(second.stderr.split())
    ), second.stderr
    assert "✓" not in second.stderr and "round 0" not in second.stderr  # it ran no phase
    assert first.returncode == 0, err[-3000:]
    store = open_store(StorageSpec(uri=f"file://{store_dir}"))
    phases = ["prepare", "sample", "update-adversary", "score", "update-policy", "evaluate"]
    for rnd, phase in [(0, "prepare")] + [(1, p) for p in phases[1:]]:
        require_committed(store, phase_prefix("default", "apo-tiny", rnd, phase), verify=True)


def test_a_lease_of_a_dead_process_on_this_machine_is_taken_over_at_once(
    store: ArtifactStore,
) -> None:
    """A `sparring run` killed mid-game leaves its lease live for a minute; a rerun on the
    same machine sees that the holder is gone and continues at once. A live holder still
    refuses, as does one on another machine."""
    clock = Clock()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = LeaseRecord("sparring run on here (pid gone)", clock.now, clock.now, 60,
                         socket.gethostname(), int(dead.stdout))  # fmt: skip
    assert store.swap("team/game/_LEASE", record.encode(), None)
    GameLease(store, "team", "game", "the rerun", clock=clock, local_process=True).acquire()

    alive = LeaseRecord("live run", clock.now, clock.now, 60, socket.gethostname(), os.getppid())
    elsewhere = LeaseRecord("remote run", clock.now, clock.now, 60, "another-host", 1)
    for other, game in ((alive, "g2"), (elsewhere, "g3")):
        assert store.swap(f"team/{game}/_LEASE", other.encode(), None)
        with pytest.raises(LeaseHeld, match=other.holder):
            GameLease(store, "team", game, "the rerun", clock=clock, local_process=True).acquire()
