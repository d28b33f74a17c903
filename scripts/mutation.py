"""The mutation-testing gate over the algorithm core: mutmut mutates the losses, the training-row
builders and the operator's decision core one change at a time and runs the fast tests that
cover each change. A mutant the tests do not catch fails the gate, unless
`tests/mutation_equivalent.txt` lists it with a one-line reason why no test can tell it from
the original (e.g. a clamp that the inputs never reach).

    python scripts/mutation.py            # the gate (CI runs it after the test suite)
    python scripts/mutation.py --show     # also print each surviving mutant's diff

mutmut imports the code from a copy it mutates and expects packages at the top of that copy;
this repository keeps them in trainer/ and operator/, so the gate runs in a work folder laid
out that way (the packages, tests/, and mutmut's settings).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tests" / "mutation_equivalent.txt"
MUTATE = [
    "sparring_trainer/losses.py",
    "sparring_trainer/apo_rows.py",
    "sparring_trainer/apl_core.py",
    "sparring_trainer/identity.py",
    "sparring_operator/machine.py",
    "sparring_trainer/training.py",
    "sparring_operator/core.py",
]
TESTS = [
    "tests/test_losses.py",
    "tests/test_builders.py",
    "tests/test_update_direction.py",
    "tests/test_apl.py",
    "tests/test_respec.py",
    "tests/test_machine.py",
    "tests/test_core.py",
    "tests/test_core_decisions.py",
    "tests/test_training_loop.py",
]
SETTINGS = """
[tool.mutmut]
source_paths = ["sparring_trainer", "sparring_operator"]
only_mutate = {mutate!r}
pytest_add_cli_args_test_selection = {tests!r}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not slow", "-k", "not refused_and_forked"]

[tool.pytest.ini_options]
filterwarnings = ["ignore::DeprecationWarning"]
markers = ["slow: slow", "cluster: cluster"]
"""


def settings(mutate: list[str]) -> str:
    return SETTINGS.format(mutate=mutate, tests=TESTS)


def listed() -> dict[str, str]:
    """Mutant name -> why it is equivalent, from the equivalents file."""
    out = {}
    for number, line in enumerate(EQUIVALENT.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, reason = line.partition("  # ")
        if not sep or not reason.strip():
            raise SystemExit(f"{EQUIVALENT}:{number}: expected 'MUTANT  # reason', got {line!r}")
        out[name.strip()] = reason.strip()
    return out


def _module(mutant: str) -> str:
    """sparring_trainer.losses.x_f__mutmut_3 -> sparring_trainer/losses.py"""
    package, module = mutant.split(".")[:2]
    return f"{package}/{module}.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print each survivor's diff")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument(
        "--only", action="append", choices=MUTATE, help="mutate this file alone (repeatable)"
    )
    args = parser.parse_args()
    mutate = args.only or MUTATE
    work = args.keep or Path(tempfile.mkdtemp(prefix="sparring-mutation-"))
    if work.exists():
        shutil.rmtree(work)
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
    for source in ("trainer/sparring_trainer", "operator/sparring_operator", "tests"):
        shutil.copytree(ROOT / source, work / Path(source).name, ignore=ignore)
    (work / "pyproject.toml").write_text(settings(mutate))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TERM": "dumb"}
    mutmut = [sys.executable, "-m", "mutmut"]
    run = subprocess.run([*mutmut, "run"], cwd=work, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"mutmut run failed (exit {run.returncode}) in {work}")
    results = subprocess.run(
        [*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True
    ).stdout
    states = dict(re.findall(r"^\s*(\S+): (.+)$", results, re.MULTILINE))
    # A timeout is a mutant the tests caught too: it made them run forever (a loop that no
    # longer ends), which CI would not let pass either.
    caught = ("killed", "timeout")
    killed = sorted(m for m, s in states.items() if s in caught)
    surviving = sorted(m for m, s in states.items() if s not in caught)
    equivalent = {m: why for m, why in listed().items() if _module(m) in mutate}
    unexplained = [m for m in surviving if m not in equivalent]
    stale = sorted(set(equivalent) - set(surviving))
    print(f"mutation gate: {len(states)} mutants of {len(mutate)} files: {len(killed)} killed, "
          f"{len(surviving)} survived ({len(surviving) - len(unexplained)} listed as "
          f"equivalent, {len(unexplained)} not)")  # fmt: skip
    for name in unexplained if not args.show else surviving:
        diff = subprocess.run([*mutmut, "show", name], cwd=work, env=env, capture_output=True,
                              text=True).stdout  # fmt: skip
        lines = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in
                 ("+++", "---")]  # fmt: skip
        print(f"  {states[name]}: {name}\n    " + "\n    ".join(lines))
    for name in stale:
        print(f"  listed as equivalent but not surviving (renumbered or killed): {name}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if unexplained or stale else 0


if __name__ == "__main__":
    sys.exit(main())
