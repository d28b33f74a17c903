"""`sparring validate` on runtime files, and on games checked against the runtimes given with them:
what the operator would stall on a cluster (RuntimeRefused) is an error at the game's own line
and camelCase field before the game is applied."""

from __future__ import annotations

from pathlib import Path

from sparring_operator.cli import app
from sparring_operator.validate import check_file
from sparring_operator.validate_runtimes import check_files
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ROOT / "examples" / "platform" / "runtimes.yaml"

RUNTIME = """\
apiVersion: sparring.dev/v1alpha1
kind: ClusterSparringRuntime
metadata:
  name: gpu
spec:
  images: [registry.example.com/ml/trainer:0.1.0, registry.example.com/ml/trainer:*]
  storage:
    uri: s3://ml-artifacts/sparring
    secretRef: {name: store}
    allowedUris: [s3://team-a-experiments]
    allowedEndpoints: ["https://minio.team-a.svc:9000"]
  overridable: [resources, scheduling, storage]
"""


def game(extra: str = "", runtime_ref: str = "{name: gpu}", namespace: str = "team-a") -> str:
    return f"""\
apiVersion: sparring.dev/v1alpha1
kind: AdversarialGame
metadata:
  name: g
  namespace: {namespace}
spec:
  runtimeRef: {runtime_ref}
{extra}  game:
    kind: apo
    policy: {{model: tiny-random}}
    adversary: {{model: tiny-random}}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(*paths: Path) -> list[str]:
    return [e for report in check_files(list(paths)) for e in report.errors]


def test_the_example_runtimes_are_valid_and_named_by_the_cli() -> None:
    result = CliRunner().invoke(app, ["validate", str(PLATFORM)])
    assert result.exit_code == 0, result.stderr
    assert f"{PLATFORM}: valid (ClusterSparringRuntime gpu-a100)" in result.stdout
    assert f"{PLATFORM}: valid (SparringRuntime team-a)" in result.stdout


def test_a_broken_runtime_names_line_and_field(tmp_path: Path) -> None:
    text = RUNTIME.replace("  images: [registry.example.com/ml/trainer:0.1.0, ", "  images: [")
    text = text.replace("  overridable:", "  imagePullPolcy: Always\n  overridable:")
    path = write(tmp_path, "rt.yaml", text)
    assert check_file(path).errors == [
        f"{path}:12: spec.imagePullPolcy: unknown field; did you mean 'imagePullPolicy'?",
    ]
    path.write_text(text.replace("  imagePullPolcy: Always\n", ""), encoding="utf-8")
    assert check_file(path).errors == [
        f"{path}:6: spec.images[0]: the default image must be a whole image name (not a '*' prefix)"
    ]
    assert check_file(path).runtimes == []


def test_a_game_is_checked_on_the_runtime_in_another_file(tmp_path: Path) -> None:
    runtime = write(tmp_path, "rt.yaml", RUNTIME)
    allowed = write(
        tmp_path,
        "ok.yaml",
        game("  phases: {default: {image: registry.example.com/ml/trainer:dev}}\n"),
    )
    assert errors_of(runtime, allowed) == []
    image = "  phases:\n    default:\n      image: evil.example.com/x:1\n"
    refused = write(tmp_path, "image.yaml", game(image))
    assert errors_of(runtime, refused) == [
        f"{refused}:10: spec.phases.default.image: 'evil.example.com/x:1' is not an image "
        "ClusterSparringRuntime 'gpu' allows (registry.example.com/ml/trainer:0.1.0, "
        "registry.example.com/ml/trainer:*)"
    ]
    # Without the runtime among the files, the game is checked on the cluster, not here.
    assert errors_of(refused) == []


def test_a_store_or_endpoint_the_runtime_does_not_allow(tmp_path: Path) -> None:
    runtime = write(tmp_path, "rt.yaml", RUNTIME)
    store = "  storage:\n    uri: s3://team-b-experiments\n    secretRef: {name: mine}\n"
    [error] = errors_of(runtime, write(tmp_path, "store.yaml", game(store)))
    assert ":9: spec.storage.uri: 's3://team-b-experiments' is not a store" in error
    endpoint = (
        "  storage:\n    uri: s3://team-a-experiments\n    secretRef: {name: mine}\n"
        "    endpoint: https://169.254.169.254\n"
    )
    [error] = errors_of(runtime, write(tmp_path, "endpoint.yaml", game(endpoint)))
    assert ":11: spec.storage.endpoint: https://169.254.169.254:443 is not an allowed" in error
    # The allowed endpoint's name resolves in the cluster: not refused here for not resolving.
    fine = endpoint.replace("https://169.254.169.254", "https://minio.team-a.svc:9000")
    assert errors_of(runtime, write(tmp_path, "fine.yaml", game(fine))) == []


def test_a_namespaced_runtime_only_serves_its_own_namespace(tmp_path: Path) -> None:
    team_b = (PLATFORM.read_text(encoding="utf-8").split("---")[1]
              .replace("team-a", "team-b"))  # fmt: skip
    runtime = write(tmp_path, "team-b.yaml", team_b)
    ref = "{kind: SparringRuntime, name: team-b}"
    foreign = write(tmp_path, "a.yaml", game(runtime_ref=ref, namespace="team-a"))
    [error] = errors_of(runtime, foreign)
    assert error == (
        f"{foreign}:7: spec.runtimeRef.name: SparringRuntime 'team-b' is in namespace "
        "'team-b'; a game uses only one of its own namespace ('team-a')"
    )
    own = write(tmp_path, "b.yaml", game(runtime_ref=ref, namespace="team-b"))
    assert errors_of(runtime, own) == []


def test_the_cli_exits_1_and_reports_the_game_not_the_runtime(tmp_path: Path) -> None:
    runtime = write(tmp_path, "rt.yaml", RUNTIME)
    refused = write(
        tmp_path, "g.yaml", game("  phases: {default: {image: evil.example.com/x:1}}\n")
    )
    result = CliRunner().invoke(app, ["validate", str(runtime), str(refused)])
    assert result.exit_code == 1
    assert f"{runtime}: valid (ClusterSparringRuntime gpu)" in result.stdout
    assert "g.yaml: valid" not in result.stdout
    assert f"{refused}:8: spec.phases.default.image:" in result.stderr


def test_a_game_failing_its_own_checks_on_the_runtime_gets_every_problem_whole(
    tmp_path: Path,
) -> None:
    """Three GPUs from the runtime break the game's default batch sizes: every phase's problem
    is reported, none cut short as the game's status message is."""
    gpus = RUNTIME.replace(
        "  overridable:", "  phases:\n    default:\n      resources: {gpu: 3}\n  overridable:"
    )
    runtime = write(tmp_path, "rt.yaml", gpus)
    [error] = errors_of(runtime, write(tmp_path, "g.yaml", game()))
    assert ":11: spec.game.adversary.update.batchSize: 4 does not divide among the 3 GPUs" in error
    for phase in ("prepare", "update-adversary", "update-policy"):
        assert f"3 GPUs of the {phase} phase" in error
    assert error.endswith("use a multiple of 3")
