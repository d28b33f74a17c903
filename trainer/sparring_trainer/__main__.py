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

from sparring_trainer.config import ALL_PHASES
from sparring_trainer.distributed import launch, under_torchrun


# Errors a user can fix: reported as one clear line, never a traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from sparring_trainer.contract import GameFileError
    from sparring_trainer.data import DataError
    from sparring_trainer.generation import EngineUnavailable
    from sparring_trainer.models import ModelLoadError
    from sparring_trainer.phases import PhaseError

    return (GameFileError, DataError, EngineUnavailable, ModelLoadError, PhaseError)


EXIT_RETRYABLE, EXIT_BAD_INPUT = 1, 3


def _report(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    from sparring_trainer.contract import write_termination_log

    message = f"{args.phase} round {args.round} failed: {exc}"
    print(f"error: {message}", file=sys.stderr)
    write_termination_log(json.dumps({"error": message[:3900], "exitCode": code}))
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.nproc_per_node < 1:
        make_parser().error("--nproc-per-node must be at least 1")
    if args.nproc_per_node > 1 and not under_torchrun():
        # The ranks run this same command; the first failure's exit status is the phase's.
        rank_args = [args.phase, "--game", str(args.game), "--round", str(args.round)]
        if args.scratch is not None:
            rank_args += ["--scratch", str(args.scratch)]
        return launch(args.nproc_per_node, rank_args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
    print_result(metrics, noop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
