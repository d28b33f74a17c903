"""Runs one phase of one round: the function behind `python -m sparring_trainer PHASE`.

Idempotent: a phase whose `_SUCCESS` exists is not run again; its stored metrics are reported
as they are. A phase that fails leaves nothing committed, so a retry starts clean.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from sparring_trainer import tracking
from sparring_trainer.config import ALL_PHASES, PREPARE_PHASE
from sparring_trainer.contract import (
    PhaseContext,
    already_committed,
    finish,
    make_context,
    summary_for,
    write_termination_log,
)
from sparring_trainer.document import GameDocument
from sparring_trainer.modelcache import fetched_bytes


class PhaseError(RuntimeError):
    """A phase cannot run as asked (wrong phase, round out of range, inputs missing)."""


def run_phase(
    doc: GameDocument, phase: str, round: int, scratch: Path | None = None
) -> tuple[dict[str, float], bool]:
    """Runs `phase` of `round` and commits it; returns (metrics, was_noop)."""
    game = doc.spec.game
    if phase not in ALL_PHASES:
        raise PhaseError(f"unknown phase {phase!r}; expected one of {', '.join(ALL_PHASES)}")
    if (phase == PREPARE_PHASE) != (round == 0):
        raise PhaseError(f"phase {phase!r} cannot run in round {round}: round 0 is only 'prepare'")
    if round > doc.spec.rounds:
        raise PhaseError(f"round {round} is beyond spec.rounds={doc.spec.rounds}")
    if phase != PREPARE_PHASE and phase not in game.phases:
        raise PhaseError(f"a {game.kind} game has no phase {phase!r}")
    ctx = make_context(doc, round, phase, scratch)
    try:  # the scratch folder is this process's own: it goes, whatever happens
        return _run(ctx, doc, phase, round)
    finally:
        shutil.rmtree(ctx.scratch, ignore_errors=True)


def _run(
    ctx: PhaseContext, doc: GameDocument, phase: str, round: int
) -> tuple[dict[str, float], bool]:
    here = ctx.ranks
    if already_committed(ctx):
        metrics = ctx.read_metrics(round, phase)
        if here.main:
            write_termination_log(summary_for(ctx, metrics, noop=True))
        return metrics, True
    _check_runnable(doc, phase, here.world)
    if here.main:
        # A killed attempt may have left part of its outputs here, and `commit` lists
        # everything under the prefix: start clean, so that no leftover of it can enter this
        # attempt's manifest (a leftover whose name this attempt does not write again would be
        # committed as its own).
        ctx.store.delete_prefix(ctx.out)
    here.barrier()  # no rank writes into the prefix before it is clean
    if doc.spec.game.kind == "apl":
        from sparring_trainer.apl import PHASES
    else:
        from sparring_trainer.apo import PHASES

    started = time.monotonic()
    curves = ctx.new_dir("tensorboard")
    sinks = _tracking_sinks(doc, round, phase) if here.main else []
    failed = True
    try:
        with tracking.phase_log(curves, sinks):
            metrics = PHASES[phase](ctx)
        if tracking.settle(curves):  # (rank 0's: only it writes curves)
            ctx.upload_dir(curves, "tensorboard")
        if phase in (PREPARE_PHASE, "evaluate"):  # the round's game metrics
            for sink in sinks:
                sink.log(round, metrics, prefix="")
        failed = False
    finally:
        for sink in sinks:
            sink.close(failed)
    metrics["compute_seconds"] = time.monotonic() - started
    metrics["store_read_bytes"] = float(ctx.bytes_read)
    metrics["store_written_bytes"] = float(ctx.bytes_written)
    metrics["model_fetch_bytes"] = float(fetched_bytes())  # from hf://, pip://, s3:// sources
    # Every rank gets here only when its own part succeeded; a rank that failed exits, and
    # torchrun stops the others while they wait here, so nothing is committed.
    here.barrier()
    if here.main:
        write_termination_log(finish(ctx, metrics))
    return metrics, False


def _tracking_sinks(doc: GameDocument, round: int, phase: str) -> list[tracking.Sink]:
    spec, meta = doc.spec.tracking, doc.metadata
    game = f"{meta.namespace}/{meta.name}"
    out: list[tracking.Sink] = []
    if spec.mlflow is not None:
        out.append(tracking.MlflowRun(spec.mlflow, game, f"r{round}/{phase}/"))
    if spec.wandb is not None:
        out.append(tracking.WandbRun(spec.wandb, game, round, phase))
    return out


def _check_runnable(doc: GameDocument, phase: str, world: int) -> None:
    """Refuse before any work what this phase cannot run as asked (`sparring validate` and the
    operator refuse the same, per phase and GPU count): a training batch that `world` ranks
    cannot split evenly, FSDP where it is not supported."""
    from sparring_trainer.config import batch_fields, unsupported_parallelism

    for field, batch in batch_fields(doc.spec.game, phase):
        if batch % world:
            raise PhaseError(
                f"{field}: {batch} does not divide among {world} ranks: use a multiple of {world}"
            )
    problems = unsupported_parallelism(doc.spec.game)
    if problems:
        raise PhaseError("; ".join(problems))


def print_result(metrics: dict[str, float], noop: bool) -> None:
    print(json.dumps({"noop": noop, "metrics": metrics}, sort_keys=True), file=sys.stdout)
