"""The `sparring` command line. Each command is a thin shell over a module that does the work.

sparring validate examples/*.yaml     # check game files (exit 1 on any error)
sparring crd > crds/adversarialgames.sparring.dev.yaml
sparring crd --check crds/adversarialgames.sparring.dev.yaml
sparring crd --kind ClusterSparringRuntime > crds/clustersparringruntimes.sparring.dev.yaml
sparring export game.yaml --round 2 --out ./policy   # a round's model, adapters merged
sparring status examples/apo-tiny.yaml   # read-only; also a name with --store, or --kube
sparring list --kube                    # every game on the cluster (or in a --store)
sparring report apo.yaml apo-baseline.yaml -o report.html   # one HTML page, games overlaid
"""

import difflib
from pathlib import Path
from typing import Annotated

import typer

from sparring_operator import crdgen, validate, viewcmds

app = typer.Typer(
    name="sparring",
    help="Adversarial preference games (APO, APL) for LLM alignment, on Kubernetes or locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    """Keep `sparring COMMAND` a command group however many commands there are."""


@app.command("validate")
def validate_cmd(
    files: Annotated[
        list[Path], typer.Argument(help="Game and runtime files (YAML or JSON).", metavar="FILE...")
    ],
    local_files: Annotated[
        bool,
        typer.Option(
            "--local-files/--no-local-files",
            help="Check that models and data given as local paths exist here (turn off for a "
            "cluster game whose paths are inside the phase pods).",
        ),
    ] = True,
) -> None:
    """Check game and runtime files against their schemas, and each game on the runtime it
    names when that runtime is among the files; print every error (to stderr)."""
    from sparring_operator.validate_runtimes import check_files

    failed = False
    for report in check_files(files, local_files):
        for error in report.errors:
            typer.echo(error, err=True)
        valid = f"{report.path}: " + typer.style("valid", fg="green")
        for game in report.games:
            typer.echo(f"{valid} ({validate.summary(game)})")
        for runtime in report.runtimes:
            typer.echo(f"{valid} ({runtime.kind} {runtime.metadata.name})")
        failed = failed or bool(report.errors)
    raise typer.Exit(1 if failed else 0)


@app.command("run")
def run_cmd(
    file: Annotated[Path, typer.Argument(help="Game file (YAML or JSON).", metavar="FILE")],
    store: Annotated[
        str | None,
        typer.Option(
            "--store", help="Store URI overriding spec.storage.uri (file://... or s3://...)."
        ),
    ] = None,
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="table, or json: print the final .status to stdout."),
    ] = "table",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the phases' logs.")
    ] = False,
    nproc_per_node: Annotated[
        int,
        typer.Option(
            "--nproc-per-node",
            min=1,
            help="Play each phase data-parallel as N ranks under torchrun (one per GPU; "
            "gloo on CPU). Training batch sizes must be multiples of N.",
        ),
    ] = 1,
    fork: Annotated[
        str | None,
        typer.Option(
            "--fork",
            metavar="NEW_NAME",
            help="Play this (changed) spec as a new game NEW_NAME in the same store, starting "
            "from copies of the committed phases the change leaves valid.",
        ),
    ] = None,
    reuse_from: Annotated[
        str | None,
        typer.Option(
            "--reuse-from",
            metavar="GAME",
            help="Start this game from copies of GAME's committed phases (same store and "
            "namespace) that this spec would compute identically, e.g. a baseline that shares "
            "an APO game's prepare and first samples. Ignored once this game has started.",
        ),
    ] = None,
) -> None:
    """Play a game locally, each phase as the same command a phase Job runs; resumable.

    Exit status: 0 the game succeeded; 1 it failed in a way a rerun may fix (a crash, the
    store), or another run holds the game's lease; 3 bad input (the game file, its data or
    model references: fix them first); 130 interrupted (committed phases are kept)."""
    from sparring_operator.local import run_file

    if output not in ("table", "json"):
        typer.echo(f"--output: expected 'table' or 'json', got {output!r}", err=True)
        raise typer.Exit(2)
    if fork is not None and reuse_from is not None:
        typer.echo("--fork and --reuse-from: give one of them", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run_file(file, store, output, verbose, nproc_per_node, fork, reuse_from))


@app.command("compare")
def compare_cmd(
    game_a: Annotated[str, typer.Argument(help="An APO game's name (e.g. the APO game).")],
    game_b: Annotated[str, typer.Argument(help="Another (e.g. its baseline).")],
    store: Annotated[
        str, typer.Option("--store", help="The games' store URI (file://... or s3://...).")
    ] = "file://./.sparring",
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    seed: Annotated[int, typer.Option("--seed", help="The bootstrap's seed.")] = 0,
    output: Annotated[str, typer.Option("--output", "-o", help="table, or json.")] = "table",
) -> None:
    """Compare two APO games round by round: paired differences A - B, with 95% intervals, of
    the RM's held-out accuracy and the policy's judge reward; the rest side by side. Reads
    only. Exit status: 0 compared; 1 the store failed or no round was evaluated by both."""
    import json

    from rich.console import Console
    from sparring_trainer.document import StorageSpec
    from sparring_trainer.store import StoreError, open_store

    from sparring_operator.compare import as_json, compare_games, render

    if output not in ("table", "json"):
        typer.echo(f"--output: expected 'table' or 'json', got {output!r}", err=True)
        raise typer.Exit(2)
    try:
        rounds = compare_games(open_store(StorageSpec(uri=store)), namespace, game_a, game_b, seed)
    except (StoreError, ValueError) as exc:
        typer.echo(f"store: {exc}", err=True)
        raise typer.Exit(1) from None
    if not rounds:
        typer.echo(f"no round of {game_a} and {game_b} is evaluated in both, in {store}", err=True)
        raise typer.Exit(1)
    if output == "json":
        typer.echo(json.dumps(as_json(rounds), indent=2))
    else:
        Console().print(render(rounds, game_a, game_b))


app.command("status")(viewcmds.status_cmd)
app.command("list")(viewcmds.list_cmd)
app.command("report")(viewcmds.report_cmd)


@app.command("export")
def export_cmd(
    file: Annotated[Path, typer.Argument(help="Game file (YAML or JSON).", metavar="FILE")],
    round: Annotated[int, typer.Option("--round", min=0, help="After this round (0: base).")],
    out: Annotated[Path, typer.Option("--out", help="New folder to write the model to.")],
    role: Annotated[
        str, typer.Option("--role", help="policy, or adversary (APO: the RM; APL: attacker).")
    ] = "policy",
    store: Annotated[
        str | None, typer.Option("--store", help="Store URI overriding spec.storage.uri.")
    ] = None,
) -> None:
    """Write a round's model as one transformers folder (a LoRA adapter merged into its base)."""
    from sparring_trainer.contract import GameFileError, load_game_document
    from sparring_trainer.export import export_model
    from sparring_trainer.store import StoreError

    if role not in ("policy", "adversary"):
        typer.echo(f"--role: expected 'policy' or 'adversary', got {role!r}", err=True)
        raise typer.Exit(2)
    try:
        doc = load_game_document(file)
        if store is not None:
            storage = doc.spec.storage.model_validate({"uri": store})
            doc = doc.model_copy(update={"spec": doc.spec.model_copy(update={"storage": storage})})
        written = export_model(doc, round, role, out)  # type: ignore[arg-type]
    except (GameFileError, FileExistsError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(3) from None
    except StoreError as exc:  # e.g. that round is not committed (yet)
        typer.echo(f"store: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {written}")


@app.command("operator")
def operator_cmd(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Namespace to watch (repeatable; globs allowed)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch the whole cluster.")
    ] = False,
    liveness: Annotated[
        str | None,
        typer.Option("--liveness", help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz."),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Port of /metrics (Prometheus); 0 disables.")
    ] = 8000,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the operator: play every AdversarialGame in the watched namespaces through Jobs."""
    if bool(namespace) == all_namespaces:
        typer.echo("give --namespace NS (one or more) or --all-namespaces", err=True)
        raise typer.Exit(2)
    import kopf

    from sparring_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose)
    if metrics_port:
        from sparring_operator.metrics import serve

        serve(metrics_port)
    kopf.run(
        standalone=True,  # one replica, no peering: the Deployment uses strategy Recreate
        clusterwide=all_namespaces,
        namespaces=namespace or (),
        liveness_endpoint=liveness,
    )


@app.command("crd")
def crd_cmd(
    check: Annotated[
        Path | None,
        typer.Option(
            "--check", metavar="PATH", help="Compare PATH with the generated CRD instead."
        ),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            metavar="KIND",
            help=f"The CRD of this kind: {', '.join(crdgen.KINDS)}.",
        ),
    ] = crdgen.KIND,
) -> None:
    """Print a CustomResourceDefinition generated from the models (AdversarialGame's unless
    --kind names another)."""
    if kind not in crdgen.KINDS:
        typer.echo(f"--kind {kind}: not one of {', '.join(crdgen.KINDS)}", err=True)
        raise typer.Exit(2)
    rendered = crdgen.KINDS[kind][0]()
    if check is None:
        typer.echo(rendered, nl=False)
        return
    fix = "run: sparring crd" + (f" --kind {kind}" if kind != crdgen.KIND else "") + f" > {check}"
    if not check.is_file():
        typer.echo(f"{check}: missing; {fix}", err=True)
        raise typer.Exit(1)
    current = check.read_text(encoding="utf-8")
    if current == rendered:
        typer.echo(f"{check}: up to date")
        return
    diff = list(difflib.unified_diff(
        current.splitlines(), rendered.splitlines(), str(check), "generated", lineterm="", n=1
    ))  # fmt: skip
    changed = sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    typer.echo(f"{check}: differs from the models ({changed} lines); {fix}", err=True)
    for line in diff[:40]:
        typer.echo(line, err=True)
    if len(diff) > 40:
        typer.echo(f"... {len(diff) - 40} more diff lines", err=True)
    raise typer.Exit(1)
