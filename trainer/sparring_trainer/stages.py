"""What a phase is busy with while it has no steps to count (loading libraries, fetching and
loading checkpoints, saving): one ``[PHASE] stage: TEXT`` line on stderr from the main rank.
`sparring run` shows it in place of the progress bar's count, with the time it has taken; in a
pod it is a log line."""

from __future__ import annotations

import os
import sys

_current: list[str] = []  # the phase this process runs, once `begin` has named it


def begin(phase: str) -> None:
    _current[:] = [phase]


def stage(what: str) -> None:
    if _current and os.environ.get("RANK", "0") == "0":
        print(f"[{_current[0]}] stage: {what}", file=sys.stderr, flush=True)
