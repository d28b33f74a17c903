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
    def __init__(self, seconds: float = DEFAULT_SECONDS) -> None:
        self.seconds = seconds
        self._held: dict[GameKey, GameLease] = {}

    def tracked(self) -> set[GameKey]:
        return set(self._held)

    def hold(self, store: ArtifactStore, game: AdversarialGame) -> None:
        """Holds the game's lease; LeaseHeld (a StoreError) if another writer plays it."""
        key = (game.metadata.namespace, game.metadata.name)
        lease = self._held.get(key)
        if lease is None or lease.store.uri != store.uri:
            lease = GameLease(store, *key, OPERATOR_HOLDER, self.seconds)
            self._held[key] = lease
        lease.hold()

    def release(self, namespace: str, name: str) -> None:
        lease = self._held.pop((namespace, name), None)
        if lease is not None:
            with contextlib.suppress(StoreError):  # unreleased, it expires on its own
                lease.release()
