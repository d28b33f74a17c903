"""Per-step training curves: every optimiser step of every training run in a phase writes its
scalars (loss, learning rate, gradient norm, the method's own statistics, throughput) as
TensorBoard event files, which the phase commits with its outputs under `tensorboard/RUN/`.

    tensorboard --logdir .sparring/default/apo-tiny    # every phase of every round

The phase opens the folder (`phase_log`); inside it each training run takes a subfolder named
by what it trains (`run_dir`: reward-model, sft, rrhf, dpo, defender-dpo; a second run of the
same name in one phase gets a suffix). Sparring's own loop writes with torch's SummaryWriter;
TRL's DPO through transformers' own TensorBoard callback. Only global rank 0 writes; outside a
phase nothing is written.

With `spec.tracking.mlflow` the same points also go to one MLflow run per game (found by its
tag `sparring.game`, created by the first phase that logs), as `r{round}/{phase}/{run}/{name}`,
and each round's game metrics at step = round. With `spec.tracking.wandb` they go to W&B, whose
runs have one writer each: a run per phase, grouped by game. A tracking server that fails is
reported once and then left alone: curves never fail a phase (the TensorBoard events are still
committed).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparring_trainer.document import MlflowTracking, WandbTracking

log = logging.getLogger(__name__)
GAME_TAG = "sparring.game"
_root: Path | None = None
_taken: dict[str, int] = {}
_sinks: list[Sink] = []


class MlflowRun:
    """The game's MLflow run, from global rank 0 of one phase."""

    def __init__(self, spec: MlflowTracking, game: str, prefix: str) -> None:
        self.spec, self.game, self.prefix = spec, game, prefix
        self.failed = False
        self.run_id: str | None = None

    def _open(self) -> str | None:
        if self.run_id is None and not self.failed:
            try:
                import mlflow

                client = mlflow.MlflowClient(tracking_uri=self.spec.tracking_uri)
                found = client.get_experiment_by_name(self.spec.experiment)
                experiment = (
                    found.experiment_id
                    if found is not None
                    else client.create_experiment(self.spec.experiment)
                )
                runs = client.search_runs(
                    [experiment], filter_string=f"tags.`{GAME_TAG}` = '{self.game}'"
                )
                if runs:
                    self.run_id = runs[0].info.run_id
                else:
                    name = self.game.split("/", 1)[1]
                    run = client.create_run(experiment, run_name=name, tags={GAME_TAG: self.game})
                    self.run_id = run.info.run_id
                self._client = client
            except Exception as exc:  # any client or server fault: report it, train on
                self._give_up(exc)
        return self.run_id

    def _give_up(self, exc: Exception) -> None:
        self.failed, self.run_id = True, None
        log.warning("MLflow at %s: %s; curves go to TensorBoard only", self.spec.tracking_uri, exc)

    def log(self, step: int, scalars: dict[str, float], prefix: str | None = None) -> None:
        run_id = self._open()
        if run_id is None:
            return
        from mlflow.entities import Metric

        where = self.prefix if prefix is None else prefix
        now = int(time.time() * 1000)
        metrics = [Metric(f"{where}{k}", float(v), now, step) for k, v in scalars.items()]
        try:
            self._client.log_batch(run_id, metrics=metrics)
        except Exception as exc:
            self._give_up(exc)

    def close(self, failed: bool = False) -> None:
        """Nothing to end: the game's run stays open for its later phases."""


class WandbRun:
    """This phase's W&B run (global rank 0), in the game's group. Each training run's scalars
    are plotted against its own step (`PREFIX/step`), the game metrics against `round`."""

    def __init__(self, spec: WandbTracking, game: str, round: int, phase: str) -> None:
        self.spec, self.game, self.round, self.phase = spec, game, round, phase
        self.prefix = f"r{round}/{phase}/"
        self.failed = False
        self._run: Any = None
        self._defined: set[str] = set()

    def _open(self) -> Any:
        if self._run is None and not self.failed:
            try:
                import wandb

                self._run = wandb.init(
                    project=self.spec.project,
                    entity=self.spec.entity,
                    group=self.game,
                    job_type=self.phase,
                    name=f"{self.game} r{self.round} {self.phase}",
                    config={"game": self.game, "round": self.round, "phase": self.phase},
                    reinit="create_new",
                )
            except Exception as exc:  # no API key, no server: report it, train on
                self._give_up(exc)
        return self._run

    def _give_up(self, exc: Exception) -> None:
        self.failed, self._run = True, None
        log.warning("W&B project %s: %s; curves go to TensorBoard only", self.spec.project, exc)

    def log(self, step: int, scalars: dict[str, float], prefix: str | None = None) -> None:
        run = self._open()
        if run is None:
            return
        where = self.prefix if prefix is None else prefix
        axis = f"{where}step" if where else "round"
        try:
            for key in [axis, *(where + k for k in scalars)]:
                if key not in self._defined:
                    self._defined.add(key)
                    if key == axis:
                        run.define_metric(axis)
                    else:
                        run.define_metric(key, step_metric=axis)
            run.log({axis: step, **{where + k: float(v) for k, v in scalars.items()}})
        except Exception as exc:
            self._give_up(exc)

    def close(self, failed: bool = False) -> None:
        if self._run is not None:
            try:
                self._run.finish(exit_code=1 if failed else 0)
            except Exception as exc:
                self._give_up(exc)


Sink = MlflowRun | WandbRun  # where a phase's curves go besides its TensorBoard events


@contextlib.contextmanager
def phase_log(directory: Path | None, sinks: list[Sink] | None = None) -> Iterator[None]:
    """Training runs inside write their curves under `directory` (None: nowhere), and to the
    `sinks` (MLflow, W&B) when given."""
    global _root, _sinks
    (previous, _root), (previous_sinks, _sinks) = (_root, directory), (_sinks, sinks or [])
    _taken.clear()
    try:
        yield
    finally:
        _root, _sinks = previous, previous_sinks


def sinks() -> list[Sink]:
    """The phase's tracking runs (rank 0 only): MLflow's and W&B's, as the game asks."""
    from sparring_trainer.distributed import ranks

    return list(_sinks) if ranks().main else []


def run_dir(name: str) -> Path | None:
    """A fresh folder for one training run's events, or None when nothing is logged (not in a
    phase, or not global rank 0)."""
    from sparring_trainer.distributed import ranks

    if _root is None or not ranks().main:
        return None
    count = _taken.get(name, 0)
    _taken[name] = count + 1
    path = _root / (name if count == 0 else f"{name}-{count + 1}")
    path.mkdir(parents=True, exist_ok=True)
    return path


class StepLog:
    """Sparring's own loop: one point per scalar per optimiser step."""

    def __init__(self, name: str) -> None:
        self._writer: Any = None
        directory = run_dir(name)
        self._sinks, self._prefix = sinks(), f"{directory.name}/" if directory else ""
        if directory is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(directory))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(f"train/{key}", value, step)
        for sink in self._sinks:
            sink.log(step, scalars, sink.prefix + self._prefix)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def settle(directory: Path) -> bool:
    """Names the event files of every run under `directory` by their order, not by the clock,
    machine and process that wrote them, so that a phase's output names are the same wherever
    and whenever it runs. Returns whether there is anything to keep."""
    files = sorted(directory.rglob("*tfevents*"))
    for folder in sorted({f.parent for f in files}):
        for i, event_file in enumerate(sorted(folder.glob("*tfevents*"))):
            event_file.rename(folder / f"events.out.tfevents.{i}.sparring")
    return bool(files)


class TokenRate:
    """Tokens per second through a model's forward passes: a forward pre-hook counts what
    each call is given (its attention mask's ones: padding is not work; else its input ids),
    so every method's batches count the same way, whoever builds them. Only passes that
    build a graph count (the trained model's; not a reference model's under no_grad). This
    process's rate: under torchrun, rank 0's share of the step."""

    def __init__(self, model: Any) -> None:
        import time

        self._clock = time.monotonic
        self._tokens, self._since = 0, self._clock()
        self._handle = model.register_forward_pre_hook(self._seen, with_kwargs=True)

    def _seen(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch

        if not torch.is_grad_enabled():  # a reference pass (LoRA DPO's, adapters off): not trained
            return
        mask = kwargs.get("attention_mask")
        ids: Any = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None:
            self._tokens += int(mask.sum())
        elif hasattr(ids, "numel"):
            self._tokens += int(ids.numel())

    def take(self) -> tuple[int, float]:
        """(tokens, tokens per second) since the last take."""
        now = self._clock()
        tokens, seconds = self._tokens, max(now - self._since, 1e-9)
        self._tokens, self._since = 0, now
        return tokens, tokens / seconds

    def close(self) -> None:
        self._handle.remove()
