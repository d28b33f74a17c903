"""Games that must not be played, and the events a change of the game's phase posts.

A refusal fails the game for good, with its reason on every condition and no Jobs: a spec the
schema let through but the operator cannot play (InvalidSpec), a store that holds another
spec's finished game of this name (SpecConflict), or phase output it cannot publish
(BadPhaseOutput).
"""

from __future__ import annotations

import hashlib
import json

from pydantic import ValidationError

from sparring_operator.actions import Action, Decision, RecordEvent
from sparring_operator.api import AdversarialGame, AdversarialGameStatus
from sparring_operator.observed import StoreView
from sparring_operator.respec import changes, compare_view
from sparring_operator.status import Outcome, game_status


def spec_hash(game: AdversarialGame) -> str:
    """Hash of what the game computes. Rounds, suspend, scheduling and phase settings are left
    out: they change how and how long it runs, not what a committed phase means."""
    essence = {"storage": game.spec.storage.model_dump(), "game": game.spec.game.model_dump()}
    return hashlib.sha256(json.dumps(essence, sort_keys=True).encode()).hexdigest()


# ---- refusals: the game fails for good, with a reason on every condition ------------------


def refused(
    reason: str,
    message: str,
    old: AdversarialGameStatus,
    now: float,
    generation: int | None,
    view: StoreView | None = None,
    total: int | None = None,
) -> Decision:
    """Failed for good with `reason` (InvalidSpec, SpecConflict, BadPhaseOutput) and no Jobs;
    the history already in status stays."""
    outcome = Outcome("Failed", reason, message)
    status = game_status(
        outcome,
        view or StoreView(),
        old.completed_rounds,
        total,
        old,
        now,
        generation,
    )
    status = status.model_copy(
        update={"rounds": old.rounds, "latest_checkpoint": old.latest_checkpoint}
    )
    return Decision(status, transition_events(old, outcome))


def invalid_spec_status(
    message: str, old: AdversarialGameStatus, now: float, generation: int | None
) -> AdversarialGameStatus:
    """A game that slipped past the schema: Failed, with the field named, and no Jobs."""
    return refused("InvalidSpec", message, old, now, generation).status


def refusal(
    game: AdversarialGame, view: StoreView, complete_hash: str | None
) -> tuple[str, str] | None:
    if complete_hash is not None and complete_hash != spec_hash(game):
        # The store holds a finished game of this name that computed something else: replaying
        # on top of its artifacts would mix two games. GitOps re-creation must keep the spec.
        return "SpecConflict", (
            "the store holds a finished game of this name with a different spec.game/storage; "
            "use a new game name (or remove its store prefix) to play a different game"
        )
    comparison = compare_view(view, game)
    if comparison.stale:
        # Committed phases played with another spec.game (a game re-created with a change):
        # continuing would publish their old results as this spec's.
        first_round, first_phase = comparison.stale[0]
        return "SpecConflict", (
            f"the store holds phases of this game played with a different spec.game "
            f"({changes(game, comparison)}); from round {first_round} {first_phase} on they "
            "would report the old spec's results. Use a new game name (or another store) to "
            "play the changed spec, or restore the old values"
        )
    if view.bad_output is not None:
        # Output the operator cannot publish (NaN, a non-number, hundreds of keys): retrying the
        # same image would commit the same, so the game fails, naming phase and key.
        return "BadPhaseOutput", view.bad_output[1]
    return None


def transition_events(old: AdversarialGameStatus, outcome: Outcome) -> list[Action]:
    """One event when the game's phase changes to Succeeded, Failed or Suspended."""
    if old.phase == outcome.phase:
        return []
    if outcome.phase == "Succeeded":
        return [RecordEvent("Normal", "GameSucceeded", outcome.message)]
    if outcome.phase == "Suspended":
        return [RecordEvent("Normal", "GameSuspended", outcome.message)]
    if outcome.phase == "Failed":
        reason = "GameFailed" if outcome.reason == "PhaseFailed" else outcome.reason
        return [RecordEvent("Warning", reason, outcome.message)]
    return []


MAX_SPEC_ERRORS = 10


def spec_errors(exc: ValidationError) -> str:
    """The first few validation errors, each cut short. The message lands in status five times
    (message and four conditions): a spec of thousands of unknown keys would otherwise grow the
    resource twentyfold, past etcd's object size limit, and its status write would fail."""
    found = exc.errors(include_url=False)
    shown = []
    for e in found[:MAX_SPEC_ERRORS]:
        # A model validator's error has no location of its own: its message names the field.
        where, message = ".".join(map(str, e["loc"]))[:200], e["msg"].removeprefix("Value error, ")
        shown.append(f"{where}: {message[:200]}" if where else message[:200])
    if len(found) > MAX_SPEC_ERRORS:
        shown.append(f"and {len(found) - MAX_SPEC_ERRORS} more")
    return "; ".join(shown)
