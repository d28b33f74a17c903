"""What the store says about a game.

Shared by `sparring run` and the operator: both derive status from committed markers in the
store (level-triggered), never from what a process remembers; `status.py` turns it into
`.status`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from sparring_trainer.config import PREPARE_PHASE
from sparring_trainer.store import ArtifactStore, is_committed, phase_prefix

from sparring_operator.machine import Marker, phase_sequence

# Headline metrics are copied into rounds[].metrics under their own names; the rest get the
# phase as a prefix so that e.g. the RM's and the policy's train_loss do not collide.
HEADLINE_PHASES = ("evaluate", PREPARE_PHASE)
# A phase's metrics.json is written by a user-chosen image: each key becomes a status entry and
# a Prometheus label value, each value a JSON number in the status (where NaN is not JSON).
MAX_METRICS = 64
METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")


class BadOutput(ValueError):
    """A committed phase's metrics.json that the operator refuses to publish."""


def checked_metrics(raw: bytes, where: str) -> dict[str, float]:
    """The metrics of `where` (a phase), or BadOutput naming the phase and the offending key."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadOutput(f"{where}: metrics.json is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadOutput(f"{where}: metrics.json must be an object, not {type(data).__name__}")
    if len(data) > MAX_METRICS:
        raise BadOutput(f"{where}: metrics.json has {len(data)} keys; at most {MAX_METRICS}")
    metrics = {}
    for key, value in data.items():
        if not METRIC_NAME.match(key):
            raise BadOutput(
                f"{where}: metric name {key[:80]!r} must be a letter and then up to 62 letters, "
                "digits, '_', '.' or '-'"
            )
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise BadOutput(f"{where}: metric {key!r} is {str(value)[:40]!r}: not a finite number")
        metrics[key] = float(value)
    return metrics


@dataclass
class StoreView:
    committed: set[Marker] = field(default_factory=set)
    metrics: dict[Marker, dict[str, float]] = field(default_factory=dict)
    uris: dict[Marker, str] = field(default_factory=dict)
    committed_at: dict[Marker, str] = field(default_factory=dict)
    # The spec.game each committed phase was played with (None: its manifest predates it).
    games: dict[Marker, dict[str, Any] | None] = field(default_factory=dict)
    # The first committed phase whose metrics were refused, and why: nothing after it counts.
    bad_output: tuple[Marker, str] | None = None

    def round_metrics(self) -> dict[int, dict[str, float]]:
        rounds: dict[int, dict[str, float]] = {}
        for (r, phase), values in sorted(self.metrics.items()):
            merged = rounds.setdefault(r, {})
            for key, value in values.items():
                name = key if phase in HEADLINE_PHASES else f"{phase.replace('-', '_')}_{key}"
                merged[name] = value
        return rounds


# (uri, committed_at, metrics, the spec.game it was played with)
CommittedPhase = tuple[str, str, dict[str, float], dict[str, Any] | None]


def observe_store(
    store: ArtifactStore,
    namespace: str,
    game: str,
    kind: str,
    rounds: int,
    cache: dict[tuple[str, int, str], CommittedPhase] | None = None,
) -> StoreView:
    """Reads the committed markers and metrics of the game's phases, in play order.

    Stops at the first uncommitted phase: that is the one the machine runs next, and nothing
    after it can count before it commits. A committed phase never changes, so `cache` (keyed by
    phase URI) saves the operator from reading its marker and metrics again on every pass.
    """
    view = StoreView()
    for marker in phase_sequence(kind, rounds):
        prefix = phase_prefix(namespace, game, *marker)
        key = (store.uri_for(prefix), *marker)
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            if not is_committed(store, prefix):
                break
            manifest = json.loads(store.get_bytes(prefix + "_SUCCESS"))
            where = f"round {marker[0]} {marker[1]}"
            try:
                metrics = checked_metrics(store.get_bytes(prefix + "metrics.json"), where)
            except BadOutput as exc:
                view.bad_output = (marker, str(exc))
                break
            played = manifest.get("game") if isinstance(manifest.get("game"), dict) else None
            hit = (store.uri_for(prefix), str(manifest.get("committed_at", "")), metrics, played)
            if cache is not None:
                cache[key] = hit
        view.committed.add(marker)
        view.uris[marker], view.committed_at[marker], view.metrics[marker], played = hit
        view.games[marker] = played
    return view
