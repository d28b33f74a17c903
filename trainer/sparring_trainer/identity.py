"""Which committed phases a changed game spec invalidates.

Every phase records the `spec.game` it was played with in its `_SUCCESS` manifest. When the
spec changes, each changed field is first read by some phase (`first_reader`); that phase and
every phase after it in play order would report results of the old spec, while every phase
before it is still exactly what the new spec would compute. Nothing here imports torch: the
operator and `sparring run` use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sparring_trainer.config import ALL_PHASES, PREPARE_PHASE, ROUND_PHASES, GameConfig

Marker = tuple[int, str]  # (round, phase)

# Where each part of spec.game is first read, for what prepare does not read. A longer path
# overrides a shorter one; everything else is read by prepare (round 0), the safe default.
# Audited against the phases: prepare scores with adversary.update.maxLength (APO) and computes
# harm with policy.update.maxLength (APL); APO's prepare samples greedily with
# sampling.batchSize and engine, its first round samples with the rest of sampling.
_FIRST_READ: dict[str, dict[str, str]] = {
    "apo": {
        "sampling.samplesPerQuery": "sample",
        "sampling.temperature": "sample",
        "sampling.topP": "sample",
        "sampling.maxNewTokens": "sample",
        # prepare trains RM_Base with the adversary's recipe; these parts it does not read.
        "adversary.update": PREPARE_PHASE,
        "adversary.update.mode": "update-adversary",
        "adversary.update.init": "update-adversary",
        "adversary.update.apoCoeff": "update-adversary",
        "adversary.update.parallelism": "update-adversary",
        "policy.update": "update-policy",
    },
    "apl": {
        "adversary.update": "update-adversary",
        "policy.update": "update-policy",
        "policy.update.maxLength": PREPARE_PHASE,
    },
}


def game_record(game: GameConfig) -> dict[str, Any]:
    """`spec.game` as a phase records it, every default included: what a later spec is
    compared with."""
    return dict(game.model_dump(by_alias=True, mode="json"))


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": {}} -> {"a.b": 1, "c": {}}; lists stay values (a changed list is
    one change); the whole of an empty mapping is nothing."""
    if isinstance(value, Mapping) and (value or not path):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= flatten(item, f"{path}.{key}" if path else str(key))
        return out
    return {path: value}


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted camelCase paths (under spec.game) whose values differ, sorted."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def first_reader(kind: str, field: str) -> Marker:
    """The first phase, in play order, whose result depends on `field`."""
    table = _FIRST_READ[kind]
    best = ""
    for prefix in table:
        if (field == prefix or field.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    phase = table[best] if best else PREPARE_PHASE
    return (0, PREPARE_PHASE) if phase == PREPARE_PHASE else (1, phase)


def order(kind: str, marker: Marker) -> tuple[int, int]:
    """A sort key of `marker` in play order."""
    round_, phase = marker
    phases = (PREPARE_PHASE,) if round_ == 0 else ROUND_PHASES[kind]
    assert phase in ALL_PHASES
    return (round_, phases.index(phase))


def first_stale(kind: str, changed: Sequence[str]) -> Marker | None:
    """The first phase a change of `changed` invalidates (None: nothing changed)."""
    if not changed:
        return None
    return min((first_reader(kind, f) for f in changed), key=lambda m: order(kind, m))
