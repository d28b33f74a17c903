"""`sparring validate`: broken game files are rejected with the file, line and camelCase field
path of each problem; every example game is accepted.

Each file under tests/bad_games/ starts with `# expect: <text>`: a part of the error that the
CLI must print for it. The CLI runs once over all of them (a subprocess costs ~1 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sparring_operator.cli import app
from sparring_operator.validate import InvalidGameFile, check_file, load_game, validate_file
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
BAD_GAMES = sorted((ROOT / "tests" / "bad_games").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MINIMAL = (ROOT / "examples" / "apo-minimal.yaml").read_text(encoding="utf-8")


def sparring(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sparring_operator", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def expected_error(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    return first.removeprefix("# expect: ")


@pytest.fixture(scope="module")
def bad_run() -> subprocess.CompletedProcess[str]:
    return sparring("validate", *map(rel, BAD_GAMES))


def test_bad_games_exist() -> None:
    assert len(BAD_GAMES) >= 14


def test_cli_fails_on_bad_games(bad_run: subprocess.CompletedProcess[str]) -> None:
    assert bad_run.returncode == 1, bad_run.stderr
    assert bad_run.stdout == "", "no bad game may be reported valid"


@pytest.mark.parametrize("path", BAD_GAMES, ids=lambda p: p.name)
def test_bad_game_error(path: Path, bad_run: subprocess.CompletedProcess[str]) -> None:
    # Every error line starts with the file's path, so a file's errors can be picked out.
    own = [line for line in bad_run.stderr.splitlines() if line.startswith(f"{rel(path)}:")]
    assert own, f"no error for {path.name} in:\n{bad_run.stderr}"
    assert any(expected_error(path) in line for line in own), "\n".join(own)


@pytest.mark.parametrize("path", BAD_GAMES, ids=lambda p: p.name)
def test_bad_game_alone_exits_1(path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert expected_error(path) in result.stderr


def test_examples_are_valid() -> None:
    assert EXAMPLES, "examples/ holds no *.yaml game"
    result = sparring("validate", *map(rel, EXAMPLES))
    assert (result.returncode, result.stderr) == (0, "")
    for path in EXAMPLES:
        assert f"{rel(path)}: valid (game " in result.stdout


def test_valid_line_and_mixed_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("rounds: 1 ", "rounds: 0 "), encoding="utf-8")
    result = CliRunner().invoke(
        app, ["validate", str(ROOT / "examples" / "apo-minimal.yaml"), str(bad)]
    )
    assert result.exit_code == 1
    assert "apo-minimal.yaml: valid (game apo-minimal, kind apo, 1 round)" in result.stdout
    assert f"{bad}:" in result.stderr and "spec.rounds" in result.stderr


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert validate_file(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file"]
    assert "is a directory" in validate_file(tmp_path)[0]


def test_json_game_with_tabs_and_line_numbers(tmp_path: Path) -> None:
    game = {
        "apiVersion": "sparring.dev/v1alpha1", "kind": "AdversarialGame",
        "metadata": {"name": "json-game"},
        "spec": {"rounds": 2, "game": {"policy": {"model": "tiny-random"},
                                       "adversary": {"model": "tiny-random"}}},
    }  # fmt: skip
    path = tmp_path / "game.json"
    path.write_text(json.dumps(game, indent="\t"), encoding="utf-8")
    assert [g.spec.rounds for g in check_file(path).games] == [2]
    game["spec"]["rounds"] = 0  # type: ignore[index]
    path.write_text(json.dumps(game, indent=2), encoding="utf-8")
    [error] = validate_file(path)
    assert error.startswith(f"{path}:8: spec.rounds: Input should be greater than or equal to 1")
    path.write_text('{"kind": }', encoding="utf-8")
    assert validate_file(path) == [f"{path}:1:10: JSON syntax error: Expecting value"]


def test_several_documents(tmp_path: Path) -> None:
    path = tmp_path / "games.yaml"
    second = MINIMAL.replace("name: apo-minimal", "name: second")
    path.write_text(f"{MINIMAL}---\n{second}---\n", encoding="utf-8")  # trailing empty document
    assert [g.metadata.name for g in check_file(path).games] == ["apo-minimal", "second"]
    with pytest.raises(InvalidGameFile, match="holds 2 games"):
        load_game(path)
    path.write_text(f"{MINIMAL}---\n{MINIMAL}", encoding="utf-8")
    [error] = validate_file(path)
    assert (
        ": document 2: metadata.name: game 'apo-minimal' in namespace 'default' is already" in error
    )


def test_load_game(tmp_path: Path) -> None:
    assert load_game(ROOT / "examples" / "apo-minimal.yaml").metadata.name == "apo-minimal"
    with pytest.raises(InvalidGameFile) as info:
        load_game(tmp_path / "nope.yaml")
    assert info.value.errors == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_unknown_field_without_close_match_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "game.yaml"
    path.write_text(MINIMAL.replace("  rounds: 1 ", "  zzz: 1\n  rounds: 1 "), encoding="utf-8")
    [error] = validate_file(path)
    assert "spec.zzz: unknown field (known: rounds, suspend, activeDeadlineSeconds" in error


def test_crd_check(tmp_path: Path) -> None:
    runner = CliRunner()
    good = ROOT / "crds" / "adversarialgames.sparring.dev.yaml"
    assert runner.invoke(app, ["crd", "--check", str(good)]).exit_code == 0
    stale = tmp_path / "crd.yaml"
    stale.write_text(good.read_text(encoding="utf-8").replace("maximum: 9999", "maximum: 99"))
    result = runner.invoke(app, ["crd", "--check", str(stale)])
    assert result.exit_code == 1
    assert (
        f"{stale}: differs from the models (2 lines); run: sparring crd > {stale}" in result.stderr
    )
    assert "+                  maximum: 9999" in result.stderr
    assert runner.invoke(app, ["crd", "--check", str(tmp_path / "none.yaml")]).exit_code == 1
    assert runner.invoke(app, ["crd"]).stdout == good.read_text(encoding="utf-8")


def test_several_gpus_are_accepted_where_the_phase_can_split_its_work(tmp_path: Path) -> None:
    """gpu > 1 runs data-parallel: valid when every training batch of the phase divides among
    its GPUs; vLLM sampling, one engine per rank, is not supported and is refused by name."""
    import yaml

    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["phases"] = {"default": {"resources": {"gpu": 4}}}
    doc["spec"]["game"]["policy"]["update"]["batchSize"] = 8
    doc["spec"]["game"]["evaluation"]["evalRmTrain"]["batchSize"] = 8
    path = tmp_path / "game.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert validate_file(path) == []

    doc["spec"]["game"]["sampling"]["engine"] = "vllm"
    doc["spec"]["game"]["adversary"]["update"]["batchSize"] = 6
    path.write_text(yaml.safe_dump(doc))
    errors = validate_file(path)
    assert any(
        "spec.game.adversary.update.batchSize: 6 does not divide among the 4 GPUs of the "
        "update-adversary phase" in e
        for e in errors
    ), errors
    assert any("vllm samples in one-GPU phases only" in e for e in errors), errors


def test_local_paths_must_exist_where_the_game_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model, tokenizer or data file given as a local path is read relative to the current
    folder when the game runs: validate finds a missing one first, with its line and field;
    `--no-local-files` leaves paths that name files inside a cluster's phase pods alone."""
    import yaml

    monkeypatch.chdir(tmp_path)
    doc = yaml.safe_load(MINIMAL)
    doc["spec"]["game"]["policy"]["model"] = "models/policy"
    doc["spec"]["game"]["data"] = {"preferences": {"path": f"file://{tmp_path}/pairs.jsonl"}}
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path}/store"}
    path = tmp_path / "game.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    text = path.read_text().splitlines()
    model_line = 1 + next(i for i, line in enumerate(text) if "models/policy" in line)
    data_line = 1 + next(i for i, line in enumerate(text) if "pairs.jsonl" in line)

    assert validate_file(path) == [
        f"{path}:{model_line}: spec.game.policy.model: no such file or folder: 'models/policy'",
        f"{path}:{data_line}: spec.game.data.preferences.path: no such file or folder: "
        f"'{tmp_path}/pairs.jsonl'",
    ]
    assert check_file(path, local_files=False).errors == []
    result = CliRunner().invoke(app, ["validate", "--no-local-files", str(path)])
    assert result.exit_code == 0, result.stderr

    # `sparring run` refuses the same game up front: exit 3, and no store was made.
    run = CliRunner().invoke(app, ["run", str(path)])
    assert run.exit_code == 3, run.output
    assert "spec.game.policy.model: no such file or folder: 'models/policy'" in run.output
    assert not (tmp_path / "store").exists()

    (tmp_path / "models" / "policy").mkdir(parents=True)
    (tmp_path / "pairs.jsonl").write_text("")
    assert validate_file(path) == []
