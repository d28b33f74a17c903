"""The fault tests play one-round games: `s3_game` is overridden here; `operator` and the
helpers come from tests/harness, and tests/faults (faultops) is put on the import path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from harness.gameops import apo_tiny, create_secret
from sparring_trainer.document import StorageSpec

_FAULTS = Path(__file__).resolve().parents[1] / "faults"
if str(_FAULTS) not in sys.path:
    sys.path.insert(0, str(_FAULTS))


@pytest.fixture
def s3_game(s3_storage: StorageSpec, kube_env: Any) -> dict[str, Any]:
    """apo-tiny with ONE round, storing in moto with credentials from a Secret."""
    create_secret(kube_env, "s3-credentials", "testing", "testing")
    return apo_tiny(s3_storage, rounds=1)
