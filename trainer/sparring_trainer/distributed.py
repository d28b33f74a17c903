"""Data-parallel phases: which rank this process is, and the few collectives phases need.

A phase runs as one process per device under torchrun (`launch` starts it). Every rank runs
the same phase function on the same committed inputs; the work is divided in two places only:

- inference (sampling, scoring, log-probs) takes every `world`-th item (`shard`) and the
  results are put back in input order on every rank (`gather`), so all ranks then compute the
  same metrics and rows;
- training splits each global mini-batch across ranks and wraps the model for DDP, with every
  loss normalised by the global count (`total`) so that N ranks x b equal 1 rank x N*b.

Only rank 0 writes to the store and commits, after a barrier that every rank reaches only when
its own part succeeded. Outside torchrun (WORLD_SIZE unset or 1) every call here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the phase's process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every world-th one, starting at its rank."""
        return list(items[self.rank :: self.world])

    def per_rank(self, batch: int) -> int:
        """A global batch's share for one rank (the phase refuses one that does not divide)."""
        return batch // self.world

    def gather(self, part: Sequence[T]) -> list[T]:
        """Every rank's `shard` results, back in the order of the items they came from."""
        if not self.parallel:
            return list(part)
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, list(part))
        out: list[T] = []
        for i in range(max(len(p) for p in parts)):
            out.extend(p[i] for p in parts if i < len(p))
        return out

    def total(self, values: Sequence[float]) -> list[float]:
        """`values` summed over ranks, element-wise, in one all-reduce (a loss's global
        count of units; metrics' global sums)."""
        if not self.parallel:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        t = t.to(_collective_device())
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def barrier(self) -> None:
        if self.parallel:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. a download into the shared cache), the others
        after it, when the block finds its work done."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


SINGLE = Ranks()
_current: Ranks | None = None


def _collective_device() -> str:
    import torch

    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def ranks() -> Ranks:
    """The process's ranks; the first call under torchrun joins the process group (NCCL with
    GPUs, else gloo) through accelerate, which TRL's trainer then shares."""
    global _current
    if _current is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            _current = SINGLE
        else:
            import torch
            from accelerate import PartialState

            # cpu=True where there is no GPU: otherwise accelerate may treat each rank as its
            # own single-process run ("world 1"), and each would silently train alone.
            PartialState(cpu=not torch.cuda.is_available())
            _current = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    return _current


def finish() -> None:
    """Leaves the process group, if this process joined one. Every rank calls it before it
    exits: a process that exits with the group still up can abort (SIGABRT) while the
    interpreter tears down gloo's worker threads, which turns a phase that succeeded, or
    one that reported bad input, into a crashed rank."""
    global _current
    if _current is None or not _current.parallel:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = None
    global _left_group
    _left_group = True


_left_group = False  # whether this process was a rank of a group (finish() left it)


def exit_process(code: int) -> None:
    """Ends the process with `code`. A process that was a rank ends without the interpreter's
    teardown (its output flushed first): objects that hold the group outlive
    destroy_process_group (a DDP or FSDP model keeps a reference to it), and when finalisation
    destroys them gloo's threads can still abort the process ('terminate called without an
    active exception', SIGABRT) after its work succeeded, as CI saw once in 800 runs. Every
    file the phase writes is closed by then; the store commit happened before finish()."""
    if not _left_group:
        sys.exit(code)
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def use(value: Ranks) -> None:
    """Sets the process's ranks (tests: a rank view whose normalisation is deliberately wrong)."""
    global _current
    _current = value


def shard_fully(model: Any) -> Any:
    """FSDP2 over all ranks: each transformer block (the classes the model names as never to
    be split) is sharded as a unit, then the rest at the root. In place; returns `model`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(model.device.type, (ranks().world,))
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: Any) -> dict[str, Any] | None:
    """The whole state dict of an FSDP-sharded model on rank 0 (in CPU memory; empty on the
    others), gathered with a collective that every rank must enter; None for a model that is
    not sharded, whose own state dict is already whole on every rank."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_model_state_dict(model, options=options))  # type: ignore[arg-type]


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


NODE_RANK_ENV = "JOB_COMPLETION_INDEX"  # an Indexed Job's pod index: its node rank


@dataclass(frozen=True)
class Nodes:
    """A phase on several nodes (pods): how many, which one this is, and node 0's address."""

    count: int
    rank: int
    host: str
    port: int


def launch(nproc: int, argv: Sequence[str], nodes: Nodes | None = None) -> int:
    """Runs ``python -m sparring_trainer ARGV`` as `nproc` ranks under torchrun: on one node
    with a local rendezvous, or as node `nodes.rank` of `nodes.count`, meeting the others at
    node 0's address (torchrun's static rendezvous: node ranks are the pods' indices, global
    rank 0 is node 0's first process). Returns the exit status of the first rank that failed,
    so bad input (3) still reads as bad input and not as torchrun's generic 1, and leaves that
    rank's message in the termination log: the root cause, not a peer's "connection closed"
    that followed."""
    import tempfile
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from sparring_trainer.contract import RANK_LOGS_ENV, write_termination_log

    if nodes is None:
        where = ["--standalone"]
    else:
        where = ["--nnodes", str(nodes.count), "--node-rank", str(nodes.rank),
                 "--master-addr", nodes.host, "--master-port", str(nodes.port)]  # fmt: skip
    launcher = [*where, "--nproc-per-node", str(nproc), "--max-restarts", "0"]
    args = get_args_parser().parse_args([*launcher, "-m", "sparring_trainer", *argv])
    with tempfile.TemporaryDirectory(prefix="sparring-ranks-") as logs:
        os.environ[RANK_LOGS_ENV] = logs  # the ranks inherit it
        try:
            run(args)
            rank, code = 0, 0
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = failure.exitcode if failure.exitcode > 0 else 1
            world = nproc * (nodes.count if nodes else 1)
            print(f"error: rank {rank} of {world} failed (exit status {code})", file=sys.stderr)
        finally:
            del os.environ[RANK_LOGS_ENV]
        message = Path(logs) / f"rank-{rank}"
        if message.is_file():
            write_termination_log(message.read_text(encoding="utf-8"))
    return code
