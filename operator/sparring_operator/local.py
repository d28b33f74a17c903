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
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sparring_trainer.lease import GameLease, LeaseHeld, this_process
from sparring_trainer.store import StoreError, open_store

from sparring_operator.api import AdversarialGame, AdversarialGameStatus
from sparring_operator.jobs import phase_args
from sparring_operator.machine import EarlyStop, GameDone, RunPhase, completed_rounds, next_step
from sparring_operator.observed import StoreView, observe_store
from sparring_operator.respec import (
    SpecChanged,
    compare,
    copy_phases,
    fork,
    refusal,
    reusable,
)
from sparring_operator.status import Outcome, game_status

_PROGRESS_LINE = re.compile(
    r"^\[(?P<phase>[\w-]+)\] (?P<unit>[\w -]+) (?P<step>\d+)/(?P<total>\d+)$"
)
# What the phase is busy with between counted steps (sparring_trainer.stages).
_STAGE_LINE = re.compile(r"^\[(?P<phase>[\w-]+)\] stage: (?P<what>.+)$")


@dataclass
class PhaseOutcome:
    ok: bool
    message: str
    seconds: float
    code: int = 0  # the phase's exit status: 3 bad input, 1 anything a rerun may fix


def phase_command(game_file: Path, phase: str, round: int, nproc: int = 1) -> list[str]:
    """The command a phase Job runs (`jobs.phase_args`), with this interpreter."""
    return [sys.executable, *phase_args(phase, round, str(game_file), nproc)]


def bar_update(line: str) -> tuple[str, dict[str, Any]] | None:
    """What a phase's stderr line changes on its progress bar, as (what it counts or waits
    for, the bar's new fields); None for a log line. A count (`[sample] prompts 3/12`) sets the
    bar and its ETA; a stage (`[score] stage: loading rm`) has no count, so the bar pulses
    while the elapsed time runs, naming what the phase waits for."""
    staged = _STAGE_LINE.match(line)
    if staged:
        what = escape(staged["what"])
        return what, {"completed": 0, "total": None, "description": what}
    match = _PROGRESS_LINE.match(line)
    if match:
        step, total = int(match["step"]), int(match["total"])
        return match["unit"], {
            "completed": step, "total": total, "description": f"{match['unit']} {step}/{total}"
        }  # fmt: skip
    return None


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
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=not console.is_terminal,
        ) as bar:
            # Until the phase says otherwise: Python starting and importing its libraries.
            task = bar.add_task("loading libraries", total=None)
            current = "loading libraries"
            proc = subprocess.Popen(
                cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
            )
            assert proc.stderr is not None
            for line in proc.stderr:
                line = line.rstrip()
                update = bar_update(line)
                if update is not None:
                    # Something new to count or wait for restarts the clock and the ETA's rate.
                    doing, fields = update
                    if doing == current:
                        bar.update(task, **fields)
                    else:  # a fresh task: rich's reset keeps the old total, so no pulsing bar
                        bar.remove_task(task)
                        task = bar.add_task(**fields)
                        current = doing
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


def local_status(
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


def early_stop_of(game: AdversarialGame) -> EarlyStop | None:
    rule = game.spec.early_stop
    return EarlyStop(rule.metric, rule.threshold, rule.direction) if rule else None


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
    early = early_stop_of(game)
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
                return local_status(view, decision, done, spec.rounds, view.bad_output[1]), timings
            if isinstance(decision, GameDone):
                return local_status(view, decision, done, spec.rounds), timings
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
                    raise BadInput(failed, local_status(view, decision, done, spec.rounds, failed))
                return local_status(view, decision, done, spec.rounds, failed), timings
            console.print(f"[green]✓[/] {label} {outcome.seconds:6.1f} s")


def summary_table(status: AdversarialGameStatus) -> Table:
    """The headline metrics of every round; a metric reported with a 95% interval (`_lo`,
    `_hi`) shows it beside the value."""
    headline = [
        "rm_accuracy", "rm_accuracy_vs_base", "rm_ece", "rm_gold_over_policy", "eval_rm_accuracy",
        "reward_mean", "reward_vs_base", "win_rate", "answers_changed", "answer_distinct_2",
        "log_ratio_mean",  # APO
        "asr_direct", "asr_attack", "over_refusal", "harm_score_mean", "attacker_diversity",
        "rewrite_keeps_request",  # APL
    ]  # fmt: skip
    # A metric per row, a round per column: intervals make cells too wide for a row per round.
    done = status.completed_rounds
    table = Table(title=f"Game {status.phase}: {done} round{'' if done == 1 else 's'} completed")
    table.add_column("metric")
    for r in status.rounds:
        table.add_column(f"round {r.round}", justify="right")
    for name in headline:
        if any(name in r.metrics for r in status.rounds):
            table.add_row(name, *[metric_cell(r.metrics, name) for r in status.rounds])
    return table


# What each headline metric measures, and which way is better (the summary's legend).
LEGEND = {
    "rm_accuracy": "held-out pairs the RM ranks right (higher is better; round 0: RM_Base)",
    "rm_accuracy_vs_base": "the RM's accuracy minus RM_Base's, paired (higher is better)",
    "rm_ece": "RM calibration error on held-out pairs (lower is better)",
    "rm_gold_over_policy": "held-out gold answers the RM ranks above a policy sample",
    "eval_rm_accuracy": "the judge's accuracy on its own held-out pairs (a sanity check)",
    "reward_mean": "the judge's mean reward of the policy's test answers (higher is better)",
    "reward_vs_base": "that reward minus the base policy's, paired (higher is better)",
    "win_rate": "test answers the judge prefers to the base policy's (higher is better)",
    "answers_changed": "test answers that differ from the base policy's",
    "answer_distinct_2": "distinct bigrams in the answers (falling: repetition, reward hacking)",
    "log_ratio_mean": "mean log-ratio policy/reference on its answers (drift from the base)",
    "asr_direct": "harmful requests the defender answers as asked (lower is better)",
    "asr_attack": "the attacker's rewrites the defender answers (lower is better)",
    "over_refusal": "benign requests the defender refuses (lower is better)",
    "harm_score_mean": "the attacker's mean harm score H of its rewrites",
    "attacker_diversity": "distinct rewrites per seed (falling: the attacker collapsed)",
    "rewrite_keeps_request": "rewrites that still ask the original request (higher is honest)",
}


def legend(status: AdversarialGameStatus) -> list[str]:
    """One line per metric the summary shows."""
    shown = {k for r in status.rounds for k in r.metrics}
    return [f"{name}: {text}" for name, text in LEGEND.items() if name in shown]


def checkpoints(status: AdversarialGameStatus, kind: str) -> list[tuple[str, str]]:
    """(what, URI) of the last played round's models."""
    played = [r for r in status.rounds if "update-policy" in r.artifacts]
    if not played:
        return []
    artifacts = played[-1].artifacts
    names = (
        [("policy", "update-policy", "policy"), ("reward model", "update-adversary", "rm")]
        if kind == "apo"
        else [("defender", "update-policy", "policy"), ("attacker", "update-adversary", "attacker")]
    )
    return [
        (what, artifacts[phase] + sub + "/") for what, phase, sub in names if phase in artifacts
    ]


def metric_cell(metrics: dict[str, float], name: str) -> str:
    """A round metric as the summary shows it: its value, with its 95% interval when it has
    one (`_lo`, `_hi`); "-" when the round has no such metric."""
    if name not in metrics:
        return "-"
    low, high = metrics.get(f"{name}_lo"), metrics.get(f"{name}_hi")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{metrics[name]:.3f}{interval}"


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
    path: Path,
    game: AdversarialGame,
    fork_name: str | None,
    reuse_from: str | None,
    console: Console,
) -> tuple[AdversarialGame, Callable[[], None] | None]:
    """The game to play and what to do first: the game itself when no committed phase would
    report results of an older spec; its fork (`--fork`) starting from the phases that are
    still valid; SpecChanged otherwise. `--reuse-from` first copies another game's phases that
    this spec would compute identically."""
    store = open_store(game.spec.storage)
    namespace, name = game.metadata.namespace, game.metadata.name
    if reuse_from is not None:
        markers = reusable(store, game, reuse_from)
        reused = ", ".join(f"round {r} {p}" for r, p in markers) or "none"
        console.print(f"Phases of {reuse_from} reused by {name}: {reused}")
        if markers:
            return game, lambda: copy_phases(store, namespace, reuse_from, markers, name)
    comparison = compare(store, game)
    if fork_name is None:
        if comparison.stale:
            raise SpecChanged(refusal(str(path), game, comparison))
        return game, None
    forked = fork(store, game, fork_name)
    reused = ", ".join(f"round {r} {p}" for r, p in comparison.valid) or "none"
    console.print(f"Forking {name} as {fork_name}; phases reused: {reused}")
    return forked, lambda: copy_phases(store, namespace, name, comparison.valid, fork_name)


def run_file(
    path: Path,
    store_uri: str | None,
    output: str,
    verbose: bool,
    nproc_per_node: int = 1,
    fork_name: str | None = None,
    reuse_from: str | None = None,
) -> int:
    """`sparring run`: validate, play, report. Returns the exit code."""
    from sparring_operator.validate import InvalidGameFile, load_game

    # Progress and the table go to stderr so that `--output json` keeps stdout clean.
    console = Console(stderr=True)
    try:
        game = load_game(path)
    except InvalidGameFile as exc:
        for line in exc.errors:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
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
            console.print(f"{path}: {line}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    code = 0
    try:
        played, before = _respec(path, game, fork_name, reuse_from, console)
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
    table = summary_table(status)
    if table.row_count:  # a game that failed before any metric shows no empty table
        console.print(table)
        for line in legend(status):
            console.print(f"  {line}", highlight=False, soft_wrap=True)
    if status.phase == "Failed":
        # The whole text (status.message is cut short); a phase's own words, never markup.
        failed = next((c.message for c in status.conditions if c.type == "Failed"), None)
        console.print(f"[red]failed[/]: {escape(failed or status.message or '')}", highlight=False)
    for what, uri in checkpoints(status, game.spec.game.kind):
        console.print(f"{what} checkpoint: {uri}", highlight=False, soft_wrap=True)
    if output == "json":
        print(status.model_dump_json(by_alias=True, exclude_none=True, indent=2))
    return code or (0 if status.phase == "Succeeded" else 1)
