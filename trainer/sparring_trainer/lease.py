"""One writer per game: a lease in the store, beside the game's rounds.

``{store}/{namespace}/{game}/_LEASE`` holds who plays the game, since when, and until when:
the holder renews it while it plays (a heartbeat) and deletes it when it stops. Another writer
that finds a live lease refuses at once and names the holder and when the lease expires; a
lease that was not renewed in time (its holder was killed) is taken over, at once when the
holder was a process on this machine that no longer exists. Every change is a
compare-and-swap (`ArtifactStore.swap`), so of two writers racing for the same lease exactly
one gets it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from types import TracebackType

from sparring_trainer.store import ArtifactNotFound, ArtifactStore, StoreError, check_key

LEASE = "_LEASE"
DEFAULT_SECONDS = 60.0


class LeaseHeld(StoreError):
    """Another live writer plays this game on this store."""


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    acquired_at: float
    renewed_at: float
    seconds: float  # valid this long after each renewal
    # The holding process, when it is one process on one machine (`sparring run`): a writer
    # on the same machine can see that it has died and need not wait for the lease to expire.
    host: str = ""
    pid: int = 0

    def holder_died(self) -> bool:
        if not self.pid or self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, under another user
            return False
        return False

    @property
    def expires_at(self) -> float:
        return self.renewed_at + self.seconds

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def this_process(what: str) -> str:
    """A holder name that says who to look for: the command, the machine and the process."""
    return f"{what} on {socket.gethostname()} (pid {os.getpid()})"


def _clock_text(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class GameLease:
    """The lease of one game; a context manager that acquires it, renews it from a background
    thread every third of its duration, and releases it on exit."""

    def __init__(
        self,
        store: ArtifactStore,
        namespace: str,
        game: str,
        holder: str,
        seconds: float = DEFAULT_SECONDS,
        clock: Callable[[], float] = time.time,
        local_process: bool = False,
        held: bytes | None = None,
    ) -> None:
        """`held`: the record this holder wrote last (`record`), for a holder that keeps it
        between uses instead of keeping this object (and its store's client) alive."""
        self.store, self.holder, self.seconds, self.clock = store, holder, seconds, clock
        self.process = (socket.gethostname(), os.getpid()) if local_process else ("", 0)
        self._mine = held
        self.key = check_key(f"{namespace}/{game}/{LEASE}")
        self.game = f"{namespace}/{game}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # why the heartbeat stopped holding the lease

    @property
    def record(self) -> bytes | None:
        """The lease as this holder last wrote it (None: not held)."""
        return self._mine

    def _read(self) -> tuple[bytes, LeaseRecord] | None:
        try:
            raw = self.store.get_bytes(self.key)
        except ArtifactNotFound:
            return None
        try:
            return raw, LeaseRecord(**json.loads(raw))
        except (ValueError, TypeError):  # unreadable: treat as expired, so it can be replaced
            return raw, LeaseRecord("an unreadable lease", 0.0, 0.0, 0.0)

    def acquire(self) -> None:
        now = self.clock()
        mine = LeaseRecord(self.holder, now, now, self.seconds, *self.process).encode()
        current = self._read()
        if current is not None:
            record = current[1]
            # A live lease under our own name is ours from before (a restarted operator).
            live = record.expires_at > now and not record.holder_died()
            if live and record.holder != self.holder:
                raise LeaseHeld(
                    f"game {self.game} on {self.store.uri} is being played by {record.holder} "
                    f"since {_clock_text(record.acquired_at)}; its lease expires at "
                    f"{_clock_text(record.expires_at)} unless renewed. Wait for it to finish, "
                    "or play under another game name or store"
                )
        if not self.store.swap(self.key, mine, None if current is None else current[0]):
            holder = (self._read() or (b"", LeaseRecord("another writer", 0, 0, 0)))[1].holder
            raise LeaseHeld(
                f"game {self.game} on {self.store.uri}: {holder} took the lease at the same "
                "moment; it plays the game"
            )
        self._mine = mine

    def hold(self) -> None:
        """Takes the lease, or renews it once a third of it has passed: cheap enough to call
        on every pass of a loop that runs more often than the lease lasts."""
        if self._mine is None:
            self.acquire()
            return
        renewed_at = LeaseRecord(**json.loads(self._mine)).renewed_at
        if self.clock() - renewed_at >= self.seconds / 3:
            try:
                self.renew()
            except LeaseHeld:  # it expired and was taken, or deleted: take it back if free
                self._mine = None
                self.acquire()

    def renew(self) -> None:
        """Extends the lease; LeaseHeld if it is no longer ours (expired and taken over)."""
        if self._mine is None:
            raise StoreError("renew before acquire")
        record = LeaseRecord(**json.loads(self._mine))
        renewed = LeaseRecord(
            record.holder, record.acquired_at, self.clock(), self.seconds, *self.process
        )
        if not self.store.swap(self.key, renewed.encode(), self._mine):
            current = self._read()
            holder = current[1].holder if current else "nobody (it was deleted)"
            raise LeaseHeld(f"lost the lease of game {self.game}: it is now held by {holder}")
        self._mine = renewed.encode()

    def release(self) -> None:
        """Removes the lease if it is still ours (a compare-and-swap to an expired record, so
        that a writer who took it over meanwhile keeps it)."""
        if self._mine is None:
            return
        expired = LeaseRecord(self.holder, 0.0, 0.0, 0.0).encode()
        self.store.swap(self.key, expired, self._mine)
        self._mine = None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except StoreError as exc:  # a store blip: try again next beat, until it expires
                if isinstance(exc, LeaseHeld):
                    self.lost = str(exc)
                    return

    def __enter__(self) -> GameLease:
        self.acquire()
        self._thread = threading.Thread(target=self._heartbeat, name="lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()


def live_lease(
    store: ArtifactStore, namespace: str, game: str, clock: Callable[[], float] = time.time
) -> LeaseRecord | None:
    """The game's lease if a live writer holds it now (not expired, its process not known to
    be gone); reads only."""
    found = GameLease(store, namespace, game, "a reader", clock=clock)._read()
    if found is None:
        return None
    record = found[1]
    return None if record.expires_at <= clock() or record.holder_died() else record
