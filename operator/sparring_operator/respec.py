"""A game whose spec changed after phases were committed: refuse it, or fork it.

`sparring run` compares the spec with the one each committed phase recorded
(`sparring_trainer.identity`). If a change would make committed phases report results of the
old spec, it refuses, naming the changed fields and the ways forward; `--fork NEW_NAME` plays the
changed spec as a new game that starts from copies of the committed phases the change leaves
valid. `--reuse-from GAME` starts a new game from another game's phases the same way (an
APO game and its baseline share prepare and the first samples: a paired comparison).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sparring_trainer.config import PREPARE_PHASE
from sparring_trainer.identity import Marker, changed_fields, first_stale, game_record, order
from sparring_trainer.store import ArtifactStore, copy_committed, is_committed, phase_prefix

from sparring_operator.api import AdversarialGame
from sparring_operator.machine import phase_sequence
from sparring_operator.observed import StoreView, observe_store


class SpecChanged(ValueError):
    """Committed phases were played with a spec that differs where they depend on it."""


@dataclass(frozen=True)
class Comparison:
    changed: list[str]  # spec.game fields that differ from what some committed phase recorded
    stale: list[Marker]  # committed phases those changes invalidate, in play order
    valid: list[Marker]  # committed phases before the first stale one: reusable as they are
    old: dict[str, object]  # the recorded spec.game of the first stale phase


def compare(store: ArtifactStore, game: AdversarialGame) -> Comparison:
    spec, meta = game.spec, game.metadata
    return compare_view(observe_store(store, meta.namespace, meta.name, spec.game.kind,
                                      spec.rounds), game)  # fmt: skip


def compare_view(view: StoreView, game: AdversarialGame) -> Comparison:
    """What the store's committed phases (as observed) say about `game`'s spec."""
    spec, kind = game.spec, game.spec.game.kind
    now = game_record(spec.game)
    changed: set[str] = set()
    stale: list[Marker] = []
    old: dict[str, object] = {}
    for marker in phase_sequence(kind, spec.rounds):
        recorded = view.games.get(marker)
        if marker not in view.committed or recorded is None:
            continue
        fields = changed_fields(recorded, now)
        first = first_stale(kind, fields)
        if first is not None and order(kind, first) <= order(kind, marker):
            stale.append(marker)
            changed.update(fields)
            old = old or dict(recorded)
    cut = order(kind, stale[0]) if stale else None
    valid = [m for m in sorted(view.committed, key=lambda m: order(kind, m))
             if cut is None or order(kind, m) < cut]  # fmt: skip
    return Comparison(sorted(changed), stale, valid, old)


def _value(record: dict[str, object], field: str) -> str:
    node: object = record
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return "(unset)"
        node = node[part]
    return json.dumps(node)[:60]


def changes(game: AdversarialGame, comparison: Comparison) -> str:
    """The changed fields, old -> new (the first eight)."""
    now = game_record(game.spec.game)
    shown = comparison.changed[:8]
    fields = "; ".join(
        f"spec.game.{f}: {_value(comparison.old, f)} -> {_value(now, f)}" for f in shown
    )
    more = f" (and {len(comparison.changed) - len(shown)} more)" if comparison.changed[8:] else ""
    return fields + more


def refusal(path: str, game: AdversarialGame, comparison: Comparison) -> str:
    """The message that names what changed, what it invalidates, and the ways forward."""
    fields = changes(game, comparison)
    first_round, first_phase = comparison.stale[0]
    meta = game.metadata
    return (
        f"{path}: game {meta.namespace}/{meta.name} in {game.spec.storage.uri} was played with a "
        f"different spec. Changed: {fields}. Its committed phases from round "
        f"{first_round} {first_phase} on would report results of the old spec. Either give "
        "the game a new metadata.name or another store, or play the changed spec as a new game "
        f"that starts from the {len(comparison.valid)} committed phase(s) the change leaves "
        f"valid: sparring run {path} --fork NEW_NAME"
    )


def fork(store: ArtifactStore, game: AdversarialGame, new_name: str) -> AdversarialGame:
    """The game renamed `new_name` (validated as a game name); SpecChanged if that game has
    phases committed already."""
    meta = game.metadata.model_copy(update={"name": new_name})
    try:
        forked = AdversarialGame.model_validate(
            game.model_copy(update={"metadata": meta}).model_dump(by_alias=True)
        )
    except ValueError as exc:
        raise SpecChanged(f"--fork {new_name}: {' '.join(str(exc).split())[:300]}") from None
    if is_committed(store, phase_prefix(meta.namespace, new_name, 0, "prepare")):
        raise SpecChanged(
            f"--fork {new_name}: game {meta.namespace}/{new_name} already has committed phases "
            f"in {game.spec.storage.uri}; choose another name"
        )
    return forked


def reusable(store: ArtifactStore, game: AdversarialGame, source: str) -> list[Marker]:
    """The committed phases of game `source` (same store and namespace) that `game`'s spec
    would compute identically: those before the first one a difference invalidates, each with
    a recorded spec. Nothing when `game` has started already: it continues from its own."""
    meta, spec = game.metadata, game.spec
    if is_committed(store, phase_prefix(meta.namespace, meta.name, 0, PREPARE_PHASE)):
        return []
    view = observe_store(store, meta.namespace, source, spec.game.kind, spec.rounds)
    if not view.committed:
        raise SpecChanged(
            f"--reuse-from {source}: game {meta.namespace}/{source} has no committed phases "
            f"in {spec.storage.uri}"
        )
    valid = compare_view(view, game).valid
    # A phase whose manifest predates spec records cannot be shown to match: stop before it.
    unknown = [i for i, m in enumerate(valid) if view.games.get(m) is None]
    return valid[: unknown[0]] if unknown else valid


def copy_phases(
    store: ArtifactStore, namespace: str, source: str, markers: list[Marker], target: str
) -> None:
    """Copies the committed `markers` of game `source` to game `target` in the same store."""
    for marker in markers:
        copy_committed(
            store,
            phase_prefix(namespace, source, *marker),
            phase_prefix(namespace, target, *marker),
        )
