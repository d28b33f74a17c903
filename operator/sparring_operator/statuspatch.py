"""The status write as a JSON merge patch (RFC 7386) from what is stored to what was computed.

A merge patch of only the computed fields never removes anything: a field that became empty
(``currentPhase`` after the game ends, the finished phase's ``activeJob``, a progress report
the new phase has not made yet) would stay in the stored status forever. The patch therefore
names every field that went away with an explicit ``null``, recursively, and is empty when
nothing changed, so that an unchanged pass writes nothing.
"""

from __future__ import annotations

from typing import Any


def merge_patch(stored: Any, computed: Any) -> Any:
    """The RFC 7386 patch that turns `stored` into `computed` (both JSON values). Objects are
    diffed key by key; anything else (lists included) is replaced whole. `{}` means equal."""
    if not isinstance(stored, dict) or not isinstance(computed, dict):
        return computed
    patch: dict[str, Any] = {}
    for key in stored.keys() - computed.keys():
        patch[key] = None
    for key, value in computed.items():
        if key not in stored:
            patch[key] = value
        elif stored[key] != value:  # (1 == 1.0: the API server writes 1.0 back as 1)
            patch[key] = merge_patch(stored[key], value)
    return patch
