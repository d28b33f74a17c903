"""Packaging: the layout does not shadow the standard library, the trainer stays operator-free."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_operator_folder_does_not_shadow_the_stdlib_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).parent == Path(sysconfig.get_paths()["stdlib"]), out
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_trainer_never_imports_the_operator_or_kubernetes() -> None:
    code = (
        "import sys, sparring_trainer.__main__, sparring_trainer.apo, sparring_trainer.store; "
        "banned = ('sparring_operator', 'kopf', 'kubernetes'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in banned]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_models_import_without_torch() -> None:
    """The operator imports the game config to validate specs; it must not drag in torch."""
    code = "import sys, sparring_operator.api; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
