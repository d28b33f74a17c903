"""A phase on two nodes (issue "Many nodes per phase", item 1), as two pods of an Indexed Job
run it: two `python -m sparring_trainer PHASE --nnodes 2` processes, each starting its own
torchrun with its node rank, meeting at node 0's address. They train as one node with two
processes does, and commit once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ROUND1 = ("sample", "update-adversary", "score")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out |= load_file(str(file))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _game(store: Path, name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["rounds"] = 1
    doc["spec"]["storage"] = {"uri": f"file://{store}"}
    return dict(doc)


@pytest.mark.slow
def test_two_nodes_train_as_one_node_with_two_processes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(_game(store, "one-node")))
    played = subprocess.run(
        [sys.executable, "-m", "sparring_operator", "run", str(one), "--nproc-per-node", "2"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert played.returncode == 0, played.stderr[-3000:]
    # The two-node game starts from the same committed inputs (copies, manifests and all).
    games = store / "default"
    for round, phase in [(0, "prepare"), *((1, p) for p in ROUND1)]:
        where = Path(f"round-{round:04d}") / phase
        shutil.copytree(games / "one-node" / where, games / "two-nodes" / where)
    two = tmp_path / "two.json"
    two.write_text(json.dumps(_game(store, "two-nodes")))

    port = _free_port()

    def node(index: int) -> subprocess.Popen[str]:
        """One pod of the Indexed Job: its index in JOB_COMPLETION_INDEX, as Kubernetes sets."""
        cmd = [sys.executable, "-m", "sparring_trainer", "update-policy", "--game", str(two),
               "--round", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"]  # fmt: skip
        env = _env() | {"JOB_COMPLETION_INDEX": str(index)}
        pipe = subprocess.PIPE
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=pipe, stderr=pipe, text=True)

    nodes = [node(0), node(1)]
    outputs = [node.communicate(timeout=900) for node in nodes]
    for proc, (_, err) in zip(nodes, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    policy = Path("round-0001/update-policy")
    a = _weights(games / "one-node" / policy / "policy")
    b = _weights(games / "two-nodes" / policy / "policy")
    assert a.keys() == b.keys() and a
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    # Committed once, by global rank 0: the same files as the one-node phase's.
    manifests = [json.loads((games / g / policy / "_SUCCESS").read_text())
                 for g in ("one-node", "two-nodes")]  # fmt: skip
    assert manifests[0]["files"].keys() == manifests[1]["files"].keys()
    # Node 0 reports the phase's result (its global rank 0); node 1 reports its own success.
    assert '"noop": false' in outputs[0][0] and '"noop": false' in outputs[1][0]


def test_a_multi_node_command_needs_its_rank_and_node_zeros_address(tmp_path: Path) -> None:
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(_game(tmp_path / "store", "nodes")))
    base = [sys.executable, "-m", "sparring_trainer", "sample", "--game", str(game), "--round",
            "1", "--nnodes", "2"]  # fmt: skip
    env = {k: v for k, v in _env().items() if k != "JOB_COMPLETION_INDEX"}
    for extra, error in [
        ([], "needs --node-rank or $JOB_COMPLETION_INDEX"),
        (["--node-rank", "2"], "--node-rank 2 is not in 0..1"),
        (["--node-rank", "1"], "needs --rdzv-endpoint HOST:PORT"),
        (["--node-rank", "1", "--rdzv-endpoint", "node-0"], "needs --rdzv-endpoint HOST:PORT"),
    ]:
        done = subprocess.run([*base, *extra], env=env, capture_output=True, text=True)
        assert done.returncode == 2 and error in done.stderr, (extra, done.stderr[-500:])
