"""Run one phase of one round of a game. The command every phase Job runs:

    python -m sparring_trainer sample --game /etc/sparring/game.json --round 1
    python -m sparring_trainer prepare --game examples/apo-tiny.yaml --round 0

Data-parallel phases run one rank per device under torchrun, started by the same command:

    python -m sparring_trainer update-policy --game game.json --round 2 --nproc-per-node 8

(or started by torchrun itself, `torchrun --nproc-per-node 8 -m sparring_trainer ...`).

Exit status: 0 committed (or already committed); 1 a fault worth retrying (store unreachable,
a crash); 2 bad arguments; 3 bad input a retry cannot fix (game file, model or data reference,
malformed data row). The message goes to stderr and to the termination log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sparring_trainer import distributed, stages
from sparring_trainer.config import ALL_PHASES
from sparring_trainer.distributed import NODE_RANK_ENV, Nodes, launch, under_torchrun


# Errors a user can fix: reported as one clear line, never a traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from sparring_trainer.contract import GameFileError
    from sparring_trainer.generation import EngineUnavailable
    from sparring_trainer.modelrefs import ModelLoadError
    from sparring_trainer.phases import PhaseError
    from sparring_trainer.tables import DataError

    return (GameFileError, DataError, EngineUnavailable, ModelLoadError, PhaseError)


EXIT_RETRYABLE, EXIT_BAD_INPUT = 1, 3


def _report(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    from sparring_trainer.contract import write_termination_log

    print(f"error: {args.phase} round {args.round} failed: {exc}", file=sys.stderr)
    # The reader (the operator, `sparring run`) names the round and phase itself.
    write_termination_log(json.dumps({"error": str(exc)[:3900], "exitCode": code}))
    return code


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparring_trainer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("phase", choices=ALL_PHASES, help="phase to run")
    parser.add_argument("--game", required=True, type=Path, help="game file (YAML or JSON)")
    parser.add_argument("--round", required=True, type=int, help="round number (0 = prepare)")
    parser.add_argument("--scratch", type=Path, default=None, help="local scratch directory")
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="run the phase data-parallel as N ranks under torchrun (one per GPU; gloo on CPU)",
    )
    parser.add_argument(
        "--nnodes",
        type=int,
        default=1,
        metavar="N",
        help="run on N nodes (pods) with --nproc-per-node ranks each; every node runs this "
        "command with its own --node-rank, and they meet at --rdzv-endpoint",
    )
    parser.add_argument(
        "--node-rank",
        type=int,
        default=None,
        metavar="I",
        help=f"this node's index, 0 to N-1 (default: ${NODE_RANK_ENV}, which an Indexed Job "
        "sets in each pod)",
    )
    parser.add_argument(
        "--rdzv-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="where node 0 waits for the others (its stable name, e.g. JOB-0.SERVICE:29500)",
    )
    return parser


def _nodes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Nodes | None:
    """The multi-node rendezvous asked for, checked; None for one node."""
    if args.nnodes < 1:
        parser.error("--nnodes must be at least 1")
    if args.nnodes == 1:
        return None
    rank = args.node_rank
    if rank is None:
        raw = os.environ.get(NODE_RANK_ENV, "")
        if not raw.isdigit():
            parser.error(f"--nnodes {args.nnodes} needs --node-rank or ${NODE_RANK_ENV}")
        rank = int(raw)
    if not 0 <= rank < args.nnodes:
        parser.error(f"--node-rank {rank} is not in 0..{args.nnodes - 1}")
    host, _, port = (args.rdzv_endpoint or "").rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT")
    return Nodes(args.nnodes, rank, host, int(port))


def _log_to_stderr() -> None:
    """The trainer's own log lines (INFO and up) on stderr, where a pod's log and `sparring
    run -v` show them; other libraries keep Python's default (warnings and errors only)."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("sparring_trainer")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.nproc_per_node < 1:
        parser.error("--nproc-per-node must be at least 1")
    nodes = _nodes(parser, args)
    if (args.nproc_per_node > 1 or nodes is not None) and not under_torchrun():
        # The ranks run this same command; the first failure's exit status is the phase's.
        rank_args = [args.phase, "--game", str(args.game), "--round", str(args.round)]
        if args.scratch is not None:
            rank_args += ["--scratch", str(args.scratch)]
        return launch(args.nproc_per_node, rank_args, nodes)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _log_to_stderr()
    stages.begin(args.phase)
    stages.stage("loading libraries")  # torch and transformers: seconds before anything else
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the phase reports its own progress lines
    from sparring_trainer.contract import load_game_document, write_termination_log
    from sparring_trainer.phases import print_result, run_phase
    from sparring_trainer.store import StoreError

    try:
        doc = load_game_document(args.game)
        metrics, noop = run_phase(doc, args.phase, args.round, args.scratch)
    except _user_errors() as exc:
        return _report(args, exc, EXIT_BAD_INPUT)
    except StoreError as exc:  # the store may come back: let the operator retry with backoff
        return _report(args, exc, EXIT_RETRYABLE)
    except Exception as exc:
        # A bug or an infrastructure fault: keep the traceback for the logs, but still leave
        # the operator a one-line reason in the termination message.
        write_termination_log(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:3900]}))
        raise
    finally:
        distributed.finish()  # a rank's exit status is its phase's, not a teardown crash
    print_result(metrics, noop)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()  # as the interpreter would, before an exit that skips it
        code = EXIT_RETRYABLE
    distributed.exit_process(code)
