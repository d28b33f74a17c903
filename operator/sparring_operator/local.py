"""`sparring run`: play a whole game on this machine, no cluster.

Each phase runs as the very command a phase Job runs in a pod
(`python -m sparring_trainer PHASE --game FILE --round N`), in a child process, against the
same store layout. What is committed in the store is the only state, so an interrupted run
picks up at the first uncommitted phase and redoes nothing committed.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sparring_trainer.lease import GameLease, LeaseHeld, this_process
from sparring_trainer.store import StoreError, open_store

from sparring_operator.api import AdversarialGame, AdversarialGameStatus
from sparring_operator.jobs import phase_args
from sparring_operator.machine import EarlyStop, GameDone, RunPhase, completed_rounds, next_step
from sparring_operator.observed import StoreView, observe_store
from sparring_operator.respec import SpecChanged, compare, copy_valid, fork, refusal
from sparring_operator.status import Outcome, game_status

_PROGRESS_LINE = re.compile(
    r"^\[(?P<phase>[\w-]+)\] (?P<unit>[\w -]+) (?P<step>\d+)/(?P<total>\d+)$"
)


@dataclass
class PhaseOutcome:
    ok: bool
    message: str
    seconds: float
    code: int = 0  # the phase's exit status: 3 bad input, 1 anything a rerun may fix


def phase_command(game_file: Path, phase: str, round: int, nproc: int = 1) -> list[str]:
    """The command a phase Job runs (`jobs.phase_args`), with this interpreter."""
    return [sys.executable, *phase_args(phase, round, str(game_file), nproc)]


def _run_child(cmd: list[str], label: str, console: Console, verbose: bool) -> PhaseOutcome:
    """Runs one phase process, turning its progress lines into a progress bar."""
    with tempfile.TemporaryDirectory(prefix="sparring-phase-") as tmp:
        term_log = Path(tmp) / "termination-log"
        env = {**os.environ, "SPARRING_TERMINATION_LOG": str(term_log), "PYTHONUNBUFFERED": "1"}
        tail: collections.deque[str] = collections.deque(maxlen=40)
        started = time.monotonic()
        with Progress(
            TextColumn(f"[bold]{label}[/]"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=not console.is_terminal,
        ) as bar:
            task = bar.add_task("starting", total=None)
            proc = subprocess.Popen(
                cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
            )
            assert proc.stderr is not None
            for line in proc.stderr:
                line = line.rstrip()
                match = _PROGRESS_LINE.match(line)
                if match:
                    step, total = int(match["step"]), int(match["total"])
                    bar.update(
                        task,
                        completed=step,
                        total=total,
                        description=f"{match['unit']} {step}/{total}",
                    )
                else:
                    tail.append(line)
                    if verbose:
                        console.print(line, markup=False, highlight=False)
            code = proc.wait()
        seconds = time.monotonic() - started
        summary = term_log.read_text() if term_log.exists() else ""
    if code == 0:
        return PhaseOutcome(True, summary, seconds)
    try:
        message = json.loads(summary)["error"]
    except (ValueError, KeyError, TypeError):
        message = "\n".join(line for line in tail if line.strip()) or f"exit code {code}"
    return PhaseOutcome(False, message, seconds, code)


EXIT_BAD_INPUT = 3  # as the trainer's: bad input that a rerun cannot fix


class BadInput(Exception):
    """A phase refused the game's input (exit 3): the game failed and a rerun would too."""

    def __init__(self, message: str, status: AdversarialGameStatus) -> None:
        super().__init__(message)
        self.status = status


def _status(
    view: StoreView,
    step: RunPhase | GameDone,
    done: int,
    rounds: int,
    failed: str | None = None,
) -> AdversarialGameStatus:
    """The status the operator would show for where the local game ended."""
    if failed is not None:
        outcome = Outcome("Failed", "PhaseFailed", failed, step)
    elif isinstance(step, GameDone):
        outcome = Outcome("Succeeded", step.reason, step.message, step)
    else:
        outcome = Outcome("Running", "PhaseRunning", f"round {step.round}: {step.phase}", step)
    return game_status(outcome, view, done, rounds, AdversarialGameStatus(), time.time(), None)


def run_game(
    game: AdversarialGame,
    console: Console,
    verbose: bool = False,
    nproc_per_node: int = 1,
    before_play: Callable[[], None] | None = None,
) -> tuple[AdversarialGameStatus, dict[tuple[int, str], float]]:
    """Plays every uncommitted phase in order, each as `nproc_per_node` data-parallel ranks;
    returns the final status and phase timings. `before_play` runs first, under the game's
    lease (a fork copies its phases there)."""
    spec, meta = game.spec, game.metadata
    kind = spec.game.kind
    store = open_store(spec.storage)
    early = (
        EarlyStop(spec.early_stop.metric, spec.early_stop.threshold, spec.early_stop.direction)
        if spec.early_stop
        else None
    )
    timings: dict[tuple[int, str], float] = {}
    # One writer per game and store: a second `sparring run` (or another machine's) refuses
    # at once instead of running the same phases and deleting each other's outputs.
    lease = GameLease(
        store, meta.namespace, meta.name, this_process("sparring run"), local_process=True
    )
    with lease, tempfile.TemporaryDirectory(prefix="sparring-game-") as tmp:
        if before_play is not None:
            before_play()
        # The child reads exactly what a pod would mount: the resource as JSON.
        game_file = Path(tmp) / "game.json"
        game_file.write_text(game.model_dump_json(by_alias=True, exclude_none=True))
        while True:
            view = observe_store(store, meta.namespace, meta.name, kind, spec.rounds)
            done = completed_rounds(kind, view.committed)
            decision = next_step(kind, spec.rounds, view.committed, view.round_metrics(), early)
            if view.bad_output is not None:  # as the operator: the game fails, naming it
                return _status(view, decision, done, spec.rounds, view.bad_output[1]), timings
            if isinstance(decision, GameDone):
                return _status(view, decision, done, spec.rounds), timings
            assert isinstance(decision, RunPhase)
            if lease.lost is not None:  # another writer took the game over: stop, commit nothing
                raise LeaseHeld(lease.lost)
            label = f"round {decision.round} {decision.phase:<16}"
            outcome = _run_child(
                phase_command(game_file, decision.phase, decision.round, nproc_per_node),
                label,
                console,
                verbose,
            )
            timings[(decision.round, decision.phase)] = outcome.seconds
            if not outcome.ok:
                failed = f"round {decision.round} {decision.phase} failed: {outcome.message}"
                if outcome.code == EXIT_BAD_INPUT:
                    raise BadInput(failed, _status(view, decision, done, spec.rounds, failed))
                return _status(view, decision, done, spec.rounds, failed), timings
            console.print(f"[green]✓[/] {label} {outcome.seconds:6.1f} s")


def summary_table(status: AdversarialGameStatus) -> Table:
    """Per-round headline metrics, one row per round."""
    headline = [
        "rm_accuracy", "rm_ece", "reward_mean", "win_rate", "eval_rm_accuracy",  # APO
        "asr_direct", "asr_attack", "over_refusal", "harm_score_mean", "attacker_diversity",  # APL
    ]  # fmt: skip
    table = Table(title=f"Game {status.phase}: {status.completed_rounds} round(s) completed")
    table.add_column("round", justify="right")
    shown = [m for m in headline if any(m in r.metrics for r in status.rounds)]
    for name in shown:
        table.add_column(name, justify="right")
    for r in status.rounds:
        table.add_row(
            str(r.round), *[f"{r.metrics[m]:.4f}" if m in r.metrics else "-" for m in shown]
        )
    return table


def _uneven_batches(game: AdversarialGame, nproc: int) -> list[str]:
    """Training batches that `nproc` ranks cannot split evenly (each phase refuses them too)."""
    from sparring_trainer.config import ALL_PHASES, batch_fields

    fields = {f: b for phase in ALL_PHASES for f, b in batch_fields(game.spec.game, phase)}
    return [
        f"{field}: {batch} does not divide among --nproc-per-node {nproc} ranks"
        for field, batch in fields.items()
        if batch % nproc
    ]


def _respec(
    path: Path, game: AdversarialGame, fork_name: str | None, console: Console
) -> tuple[AdversarialGame, Callable[[], None] | None]:
    """The game to play and what to do first: the game itself when no committed phase would
    report results of an older spec; its fork (`--fork`) starting from the phases that are
    still valid; SpecChanged otherwise."""
    store = open_store(game.spec.storage)
    comparison = compare(store, game)
    if fork_name is None:
        if comparison.stale:
            raise SpecChanged(refusal(str(path), game, comparison))
        return game, None
    forked = fork(store, game, fork_name)
    reused = ", ".join(f"round {r} {p}" for r, p in comparison.valid) or "none"
    console.print(f"Forking {game.metadata.name} as {fork_name}; phases reused: {reused}")
    return forked, lambda: copy_valid(store, game, comparison.valid, fork_name)


def run_file(
    path: Path,
    store_uri: str | None,
    output: str,
    verbose: bool,
    nproc_per_node: int = 1,
    fork_name: str | None = None,
) -> int:
    """`sparring run`: validate, play, report. Returns the exit code."""
    from sparring_operator.validate import InvalidGameFile, load_game

    # Progress and the table go to stderr so that `--output json` keeps stdout clean.
    console = Console(stderr=True)
    try:
        game = load_game(path)
    except InvalidGameFile as exc:
        for line in exc.errors:
            console.print(line, markup=False, highlight=False)
        return EXIT_BAD_INPUT
    if store_uri is not None:
        try:
            storage = game.spec.storage.model_validate(
                game.spec.storage.model_dump(by_alias=True) | {"uri": store_uri}
            )
        except ValueError as exc:
            console.print(f"--store: {exc}", markup=False)
            return EXIT_BAD_INPUT
        game = game.model_copy(update={"spec": game.spec.model_copy(update={"storage": storage})})
    console.print(
        f"Playing {game.metadata.name} ({game.spec.game.kind}, {game.spec.rounds} rounds) "
        f"with store {game.spec.storage.uri}"
    )
    uneven = _uneven_batches(game, nproc_per_node)
    if uneven:
        for line in uneven:
            console.print(f"{path}: {line}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
    code = 0
    try:
        played, before = _respec(path, game, fork_name, console)
        status, _ = run_game(played, console, verbose, nproc_per_node, before)
    except SpecChanged as exc:
        console.print(escape(str(exc)), highlight=False)
        return EXIT_BAD_INPUT
    except BadInput as exc:  # a rerun cannot fix it: the game file or its data must change
        status, code = exc.status, EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: committed phases are kept; run again to continue")
        return 130
    except LeaseHeld as exc:
        console.print(f"[red]refused[/]: {escape(str(exc))}", highlight=False)
        return 1
    except StoreError as exc:
        console.print(f"[red]store error[/]: {exc}", highlight=False)
        return 1
    console.print(summary_table(status))
    if status.phase == "Failed":
        # The message is a phase's own text (a library may print [brackets]): never markup.
        console.print(f"[red]failed[/]: {escape(status.message or '')}", highlight=False)
    elif status.latest_checkpoint:
        console.print(f"latest policy checkpoint: {status.latest_checkpoint}", highlight=False)
    if output == "json":
        print(status.model_dump_json(by_alias=True, exclude_none=True, indent=2))
    return code or (0 if status.phase == "Succeeded" else 1)
