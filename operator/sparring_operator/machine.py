"""The game machine: which phase of which round runs next, from what the store holds.

Pure: it takes the spec's facts and the set of committed (round, phase) markers and returns a
decision. `sparring run` and the operator both call it, so a game plays the same way locally
and on a cluster, and either can pick up a game the other started.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sparring_trainer.config import PREPARE_PHASE, ROUND_PHASES

Marker = tuple[int, str]  # (round, phase)


@dataclass(frozen=True)
class RunPhase:
    """Run this phase next."""

    round: int
    phase: str


@dataclass(frozen=True)
class GameDone:
    """Nothing left to run."""

    completed_rounds: int
    reason: str  # AllRoundsPlayed | EarlyStopped
    message: str


@dataclass(frozen=True)
class EarlyStop:
    metric: str
    threshold: float
    direction: str  # above | below

    def triggered(self, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(self.metric)
        if value is None:
            return False
        return value > self.threshold if self.direction == "above" else value < self.threshold


def phase_sequence(kind: str, rounds: int) -> list[Marker]:
    """Every (round, phase) of a game in play order: prepare, then each round's phases."""
    return [(0, PREPARE_PHASE)] + [(r, p) for r in range(1, rounds + 1) for p in ROUND_PHASES[kind]]


def completed_rounds(kind: str, committed: Collection[Marker]) -> int:
    """Rounds (from 1, without gaps) whose every phase is committed."""
    done, phases = 0, ROUND_PHASES[kind]
    while all((done + 1, p) in committed for p in phases):
        done += 1
    return done


def next_step(
    kind: str,
    rounds: int,
    committed: Collection[Marker],
    round_metrics: Mapping[int, Mapping[str, float]] | None = None,
    early_stop: EarlyStop | None = None,
) -> RunPhase | GameDone:
    """The first uncommitted phase in play order, or why the game is over.

    Rounds may grow after a game finished: the next call then returns the new round's first
    phase. Early stop is checked on each fully committed round's metrics in order.
    """
    done = completed_rounds(kind, committed)
    if early_stop is not None and round_metrics:
        for r in range(1, min(done, rounds) + 1):
            if early_stop.triggered(round_metrics.get(r, {})):
                value = round_metrics[r][early_stop.metric]
                return GameDone(
                    r,
                    "EarlyStopped",
                    f"round {r}: {early_stop.metric}={value:.4g} is {early_stop.direction} "
                    f"{early_stop.threshold:g}",
                )
    for marker in phase_sequence(kind, rounds):
        if marker not in committed:
            return RunPhase(*marker)
    return GameDone(rounds, "AllRoundsPlayed", f"all {rounds} rounds played")
