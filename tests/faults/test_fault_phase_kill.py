"""A phase process SIGKILLed in the middle of writing its checkpoint leaves nothing usable.

The real `python -m sparring_trainer update-adversary` runs against a file store, with one
fault hook: after the second object of its reward-model checkpoint is uploaded, the process
announces it and stops there, so the SIGKILL lands mid-upload every time (polling a directory
for a few milliseconds' window would be a race). Then:
* the prefix holds some of the checkpoint but no `_SUCCESS`: every reader refuses it
  (`require_committed`, the next phase's `PhaseContext`), and the game machine says the phase
  is still to run, so `sparring run`/the operator's next attempt recomputes it;
* the next attempt recomputes and commits; nothing the killed attempt left behind enters its
  manifest (one leftover file the new attempt does not write is planted to prove it);
* the earlier phases' committed outputs are byte-for-byte intact (verified manifests equal).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness.gameops import ROOT
from harness.rawclient import wait_for
from sparring_operator.machine import RunPhase, next_step
from sparring_operator.observed import observe_store
from sparring_trainer.contract import load_game_document, make_context
from sparring_trainer.document import GameDocument
from sparring_trainer.store import (
    SUCCESS,
    FileStore,
    UncommittedError,
    phase_prefix,
    require_committed,
)

GAME = "apo-tiny"
# Runs the trainer's CLI with FileStore.upload_file patched to stop after its 2nd upload.
PAUSE_MID_UPLOAD = """
import os, runpy, sys, time
from pathlib import Path
from sparring_trainer import store
real, done = store.FileStore.upload_file, []
def upload_file(self, local, key):
    real(self, local, key)
    done.append(key)
    if len(done) == 2:
        Path(os.environ["PAUSED_FILE"]).write_text(key)
        time.sleep(3600)
store.FileStore.upload_file = upload_file
sys.argv[0] = "sparring_trainer"
runpy.run_module("sparring_trainer", run_name="__main__", alter_sys=True)
"""


def _phase(game: Path, phase: str, rnd: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparring_trainer", phase, "--game", str(game), "--round", str(rnd)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SPARRING_SCRATCH": str(tmp / "scratch")},
    )


def _manifests(store: FileStore, markers: list[tuple[int, str]]) -> dict:
    return {
        m: require_committed(store, phase_prefix("default", GAME, *m), verify=True) for m in markers
    }


def test_phase_killed_mid_checkpoint_upload_is_never_used_and_is_recomputed(
    tmp_path: Path,
) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["rounds"] = 1
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path / 'store'}"}
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc))
    store = FileStore(tmp_path / "store")
    for phase, rnd in (("prepare", 0), ("sample", 1)):
        done = _phase(game, phase, rnd, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    earlier = [(0, "prepare"), (1, "sample")]
    before = _manifests(store, earlier)

    paused = tmp_path / "paused"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSE_MID_UPLOAD,
            "update-adversary",
            "--game",
            str(game),
            "--round",
            "1",
        ],
        env={**os.environ, "PAUSED_FILE": str(paused), "SPARRING_SCRATCH": str(tmp_path / "s")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: paused.exists() or proc.poll() is not None, 240, message="the pause point")
        assert paused.exists(), proc.communicate()[1].decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    prefix = phase_prefix("default", GAME, 1, "update-adversary")
    half = store.list(prefix)
    assert len([k for k in half if "/rm/" in k]) == 2 and prefix + SUCCESS not in half, half

    # Nothing reads it: the store refuses it, so does the next phase's context, and the game
    # machine says update-adversary is still to run (the next attempt recomputes it).
    with pytest.raises(UncommittedError, match="not committed"):
        require_committed(store, prefix)
    score = make_context(load_game_document(game), 1, "score", tmp_path / "ctx")
    with pytest.raises(UncommittedError, match="update-adversary"):
        score.fetch_dir(1, "update-adversary", "rm")
    view = observe_store(store, "default", GAME, "apo", 1)
    assert next_step("apo", 1, view.committed) == RunPhase(1, "update-adversary")

    # A leftover the next attempt does not write itself (say, from an older trainer) must not
    # be committed by it.
    store.put_bytes(prefix + "rm/leftover-of-the-killed-attempt.bin", b"half a tensor")
    again = _phase(game, "update-adversary", 1, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["noop"] is False  # recomputed, not adopted
    manifest = require_committed(store, prefix, verify=True)
    assert "rm/model.safetensors" in manifest["files"]
    assert not any("leftover" in name for name in manifest["files"])
    assert not any("leftover" in key for key in store.list(prefix))
    assert score.fetch_dir(1, "update-adversary", "rm").is_dir()
    assert _manifests(store, earlier) == before  # earlier commits untouched
    assert isinstance(load_game_document(game), GameDocument)
