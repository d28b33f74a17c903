"""The operator's side of "one writer per game": the lease of each game it plays.

A pass of an active game takes or renews the game's lease in its store (`GameLease.hold` is a
read and at most one conditional write, and writes only once a third of the lease has passed);
the lease goes when the game ends or is deleted. The name on it is the same across restarts,
so a restarted operator takes back its own leases at once.
"""

from __future__ import annotations

import contextlib
import os

from sparring_trainer.lease import DEFAULT_SECONDS, GameLease
from sparring_trainer.store import ArtifactStore, StoreError

from sparring_operator.api import AdversarialGame

OPERATOR_HOLDER = os.environ.get("SPARRING_OPERATOR_ID") or "the sparring operator"
GameKey = tuple[str, str]


class GameLeases:
    """The leases this operator holds, as the records it wrote: never the `GameLease` objects,
    which keep their store, and so an S3 client of about 12 MB, alive between passes."""

    def __init__(self, seconds: float = DEFAULT_SECONDS) -> None:
        self.seconds = seconds
        self._held: dict[GameKey, bytes] = {}

    def tracked(self) -> set[GameKey]:
        return set(self._held)

    def _lease(self, store: ArtifactStore, key: GameKey) -> GameLease:
        return GameLease(store, *key, OPERATOR_HOLDER, self.seconds, held=self._held.get(key))

    def hold(self, store: ArtifactStore, game: AdversarialGame) -> None:
        """Holds the game's lease; LeaseHeld (a StoreError) if another writer plays it."""
        key = (game.metadata.namespace, game.metadata.name)
        lease = self._lease(store, key)
        try:
            lease.hold()
        finally:
            if lease.record is None:
                self._held.pop(key, None)
            else:
                self._held[key] = lease.record

    def release(self, namespace: str, name: str, store: ArtifactStore | None = None) -> None:
        """Lets the lease go: in the store when `store` is given (the game ended); otherwise
        (the game was deleted) it is only forgotten here, and expires by itself."""
        key = (namespace, name)
        if key in self._held and store is not None:
            with contextlib.suppress(StoreError):
                self._lease(store, key).release()
        self._held.pop(key, None)
