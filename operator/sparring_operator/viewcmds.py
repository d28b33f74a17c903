"""The read-only commands (`sparring status`, `list`, `report`): they write nothing and take no
lease, and share one exit status: 0 shown; 1 a store or cluster that cannot be read; 3 a bad
game file. `cli` registers them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer


def _check_output(output: str) -> None:
    if output not in ("table", "json"):
        typer.echo(f"--output: expected 'table' or 'json', got {output!r}", err=True)
        raise typer.Exit(2)


@contextlib.contextmanager
def _reading(what: str, kube: bool) -> Iterator[None]:
    """The read-only commands' exit status: 3 a bad game file; 1 a store, or with `kube` the
    cluster (not found, unreachable, no kubeconfig), that cannot be read, naming `what`."""
    from sparring_trainer.store import StoreError

    from sparring_operator.validate import InvalidGameFile

    try:
        yield
    except InvalidGameFile as exc:
        typer.echo("\n".join(exc.errors), err=True)
        raise typer.Exit(3) from None
    except (StoreError, ValueError) as exc:
        typer.echo(f"{what}: {exc}", err=True)
        raise typer.Exit(1) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if not kube:
            raise
        typer.echo(f"{what}: {getattr(exc, 'reason', None) or exc}", err=True)
        raise typer.Exit(1) from None


def status_cmd(
    target: Annotated[
        str, typer.Argument(help="A game file, or a game's name (with --store, or --kube).")
    ],
    store: Annotated[
        str | None,
        typer.Option("--store", help="Store URI (default: the file's, or file://./.sparring)."),
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    kube: Annotated[
        bool, typer.Option("--kube", help="The game's resource on the cluster (kubeconfig).")
    ] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table, or json.")] = "table",
) -> None:
    """Show a game's status without playing anything: from its file (what `sparring run` would
    report now), from a store by name, or from the cluster. Exit status: 0 shown; 1 not found
    or unreachable; 3 a bad game file."""
    from sparring_trainer.document import StorageSpec
    from sparring_trainer.store import open_store

    from sparring_operator.views import GameView, file_status, show, stored_status

    _check_output(output)
    with _reading(f"{namespace}/{target}" if kube else target, kube):
        if kube:
            from sparring_operator.views import cluster_games, kube_api

            view = cluster_games(kube_api(), namespace, target)[0]
        elif Path(target).is_file():
            from sparring_operator.validate import load_game

            game = load_game(Path(target))
            spec = game.spec.storage
            storage = spec if store is None else StorageSpec(uri=store)
            status = file_status(game, open_store(storage))
            view = GameView(game.metadata.namespace, game.metadata.name, status)
        else:
            storage = StorageSpec(uri=store or "file://./.sparring")
            view = GameView(
                namespace, target, stored_status(open_store(storage), namespace, target)
            )
    show([view], output, detail=True)


def list_cmd(
    store: Annotated[
        str, typer.Option("--store", help="Store URI (file://... or s3://...).")
    ] = "file://./.sparring",
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    kube: Annotated[bool, typer.Option("--kube", help="The games on the cluster.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table, or json.")] = "table",
) -> None:
    """List the games in a store, or on the cluster, with their phase and rounds; reads only."""
    from sparring_trainer.document import StorageSpec
    from sparring_trainer.store import open_store

    from sparring_operator.views import (
        GameView,
        cluster_games,
        kube_api,
        show,
        stored_games,
        stored_status,
    )

    _check_output(output)
    with _reading("cluster" if kube else "store", kube):
        if kube:
            games = cluster_games(kube_api(), namespace)
        else:
            opened = open_store(StorageSpec(uri=store))
            games = [
                GameView(ns, name, stored_status(opened, ns, name))
                for ns, name in stored_games(opened, namespace)
            ]
    show(games, output, detail=False)


def report_cmd(
    targets: Annotated[
        list[str], typer.Argument(help="Game files, or games' names (with --store, or --kube).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML page to write.")] = Path(
        "sparring-report.html"
    ),
    store: Annotated[
        str | None,
        typer.Option("--store", help="Store URI (default: each file's, or file://./.sparring)."),
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    kube: Annotated[bool, typer.Option("--kube", help="Games on the cluster.")] = False,
) -> None:
    """Write one self-contained HTML page for one or several games: their round metrics
    overlaid with 95% intervals, the reward models' reliability, and sampled answers. Reads
    only. Exit status: 0 written; 1 a game not found or unreachable; 3 a bad game file."""
    from sparring_trainer.document import StorageSpec
    from sparring_trainer.store import open_store

    from sparring_operator import report

    records = []
    for target in targets:
        with _reading(f"{namespace}/{target}" if kube else target, kube):
            if kube:
                from kubernetes import client as k8s

                from sparring_operator.api import GROUP, PLURAL, VERSION
                from sparring_operator.views import kube_api

                custom: Any = k8s.CustomObjectsApi(kube_api())
                obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, target)
                records.append(report.cluster_record(obj))
            elif Path(target).is_file():
                records.append(report.file_record(target, store))
            else:
                opened = open_store(StorageSpec(uri=store or "file://./.sparring"))
                records.append(report.stored_record(opened, namespace, target))
    out.write_text(report.render_html(records), encoding="utf-8")
    typer.echo(f"wrote {out}")
