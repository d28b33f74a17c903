"""Read-only views of games: `sparring status` and `sparring list`, for a store (what
`sparring run` plays) and for the cluster (the resources' own status). Nothing here plays a
phase, takes a lease or writes anything.

From a game file the view is what `sparring run` would report now: the same status, computed
by the same functions, with `Running` only while a live writer holds the game's lease (the
holder named), and `Pending` for a game nobody plays now. From a store and a game name alone
the rounds the spec asks for are unknown: the view says what is committed, and `Succeeded`
only where the operator wrote the game's completion record.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from sparring_trainer.lease import live_lease
from sparring_trainer.store import ArtifactStore, game_prefix, phase_prefix

from sparring_operator.api import AdversarialGame, AdversarialGameStatus, GamePhase
from sparring_operator.local import early_stop_of, local_status
from sparring_operator.machine import GameDone, RunPhase, completed_rounds, next_step
from sparring_operator.observed import observe_store
from sparring_operator.status import Outcome, game_status

COMPLETE = "_COMPLETE"  # the operator's completion record (reconcile.COMPLETE)
_ROUND = re.compile(r"^round-(\d{4})$")


@dataclass(frozen=True)
class GameView:
    namespace: str
    name: str
    status: AdversarialGameStatus


def _idle_or_running(
    store: ArtifactStore, namespace: str, name: str, step: RunPhase
) -> tuple[GamePhase, str]:
    """(phase, message) of a game with phases left: Running while a writer holds it."""
    holder = live_lease(store, namespace, name)
    where = f"round {step.round}: {step.phase}"
    if holder is not None:
        return "Running", f"{where} (played by {holder.holder})"
    return "Pending", f"not being played; next: {where}"


def file_status(game: AdversarialGame, store: ArtifactStore) -> AdversarialGameStatus:
    """The status `sparring run` would report for `game` now, without playing anything."""
    spec, meta = game.spec, game.metadata
    kind = spec.game.kind
    view = observe_store(store, meta.namespace, meta.name, kind, spec.rounds)
    done = completed_rounds(kind, view.committed)
    step = next_step(kind, spec.rounds, view.committed, view.round_metrics(), early_stop_of(game))
    if view.bad_output is not None:
        return local_status(view, step, done, spec.rounds, view.bad_output[1])
    if isinstance(step, GameDone):
        return local_status(view, step, done, spec.rounds)
    phase, message = _idle_or_running(store, meta.namespace, meta.name, step)
    outcome = Outcome(phase, "Idle" if phase == "Pending" else "PhaseRunning", message, step)
    return game_status(outcome, view, done, spec.rounds, AdversarialGameStatus(), time.time(), None)


def stored_kind(store: ArtifactStore, namespace: str, name: str) -> str | None:
    """The game's kind as its committed prepare recorded it (None before prepare commits)."""
    import json

    key = phase_prefix(namespace, name, 0, "prepare") + "_SUCCESS"
    if not store.exists(key):
        return None
    played = json.loads(store.get_bytes(key)).get("game")
    return str(played.get("kind", "apo")) if isinstance(played, dict) else "apo"


def stored_rounds(keys: list[str], prefix: str) -> int:
    """The highest round with anything under the game's `prefix`, from its listed keys."""
    return max(
        (int(m[1]) for k in keys if (m := _ROUND.match(k[len(prefix) :].split("/")[0]))),
        default=0,
    )


def stored_status(store: ArtifactStore, namespace: str, name: str) -> AdversarialGameStatus:
    """What the store says of a game known only by name."""
    prefix = game_prefix(namespace, name)
    keys = store.list(prefix)
    if not keys:
        raise ValueError(f"no game {namespace}/{name} in {store.uri_for(prefix)}")
    kind = stored_kind(store, namespace, name)
    rounds = stored_rounds(keys, prefix)
    view = observe_store(store, namespace, name, kind or "apo", rounds)
    done = completed_rounds(kind, view.committed) if kind else 0
    if store.exists(prefix + COMPLETE):
        step: RunPhase | GameDone = GameDone(done, "GameSucceeded", "completed")
        outcome = Outcome("Succeeded", "GameSucceeded", "completed", step)
    else:
        step = next_step(kind or "apo", rounds + 1, view.committed, view.round_metrics(), None)
        assert isinstance(step, RunPhase)  # one round more than the store holds: never done
        phase, message = _idle_or_running(store, namespace, name, step)
        outcome = Outcome(phase, "Idle" if phase == "Pending" else "PhaseRunning", message, step)
    return game_status(outcome, view, done, None, AdversarialGameStatus(), time.time(), None)


def stored_games(store: ArtifactStore, namespace: str | None = None) -> list[tuple[str, str]]:
    """(namespace, game) of every game with something in the store."""
    found: set[tuple[str, str]] = set()
    for key in store.list(f"{namespace}/" if namespace else ""):
        parts = key.split("/")
        if len(parts) >= 3 and (_ROUND.match(parts[2]) or parts[2] in (COMPLETE, "_LEASE")):
            found.add((parts[0], parts[1]))
    return sorted(found)


def cluster_games(api: Any, namespace: str | None, name: str | None = None) -> list[GameView]:
    """The games' resources as the operator last reported them."""
    from kubernetes import client as k8s

    from sparring_operator.api import GROUP, PLURAL, VERSION

    custom: Any = k8s.CustomObjectsApi(api)
    items: list[dict[str, Any]]
    if name is not None:
        assert namespace is not None
        items = [custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)]
    elif namespace is not None:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    else:
        items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    return [
        GameView(
            o["metadata"]["namespace"],
            o["metadata"]["name"],
            AdversarialGameStatus.model_validate(o.get("status") or {}),
        )
        for o in items
    ]


def kube_api() -> Any:
    """A client from the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    k8s_config.load_kube_config()
    return k8s.ApiClient()


def show(rows: list[Any], output: str, detail: bool) -> None:
    """Games (views.GameView) as a table, or their statuses as JSON."""
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from sparring_operator.local import summary_table

    if output == "json":
        docs = [
            {"namespace": g.namespace, "name": g.name,
             "status": g.status.model_dump(mode="json", by_alias=True, exclude_none=True)}
            for g in rows
        ]  # fmt: skip
        print(json.dumps(docs[0] if detail else docs, indent=2))
        return
    console = Console()
    if detail:
        (game,) = rows
        status = game.status
        rounds = status.rounds_done or status.completed_rounds
        console.print(
            f"{game.namespace}/{game.name}: {status.phase}, rounds {rounds}", highlight=False
        )
        if status.message:
            console.print(escape(status.message), highlight=False)
        if status.rounds:
            console.print(summary_table(status))
        if status.latest_checkpoint:
            console.print(f"latest policy checkpoint: {status.latest_checkpoint}", highlight=False)
        return
    table = Table()
    for column in ("NAMESPACE", "NAME", "PHASE", "ROUNDS", "MESSAGE"):
        table.add_column(column)
    for g in rows:
        rounds = g.status.rounds_done or str(g.status.completed_rounds)
        table.add_row(g.namespace, g.name, g.status.phase, rounds, escape(g.status.message or ""))
    console.print(table)
