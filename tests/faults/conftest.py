"""Fixtures of the fault tests: the e2e helpers (tests/e2e/gameops.py) on the path, and the
`operator`/`s3_game` fixtures from faultops (see its docstring for why they are copies)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("e2e", "faults"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from faultops import operator, s3_game  # noqa: E402, F401
