"""Read-only views (issue "Bring your own data", item 4): `sparring status` and `sparring list`
show a game from its file, from a store by name, or from the cluster, and never advance it:
the store holds the same objects before and after, and no lease is taken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sparring_operator.views import file_status, stored_games, stored_status
from sparring_trainer.config import ROUND_PHASES
from sparring_trainer.document import StorageSpec
from sparring_trainer.lease import GameLease
from sparring_trainer.store import commit, game_prefix, open_store, phase_prefix

ROOT = Path(__file__).resolve().parents[1]


def _commit_phase(store: Any, game: str, round: int, phase: str, metrics: dict[str, float]) -> None:
    """A phase as a trainer commits it: its outputs, metrics.json, and the manifest last."""
    prefix = phase_prefix("default", game, round, phase)
    store.put_bytes(prefix + "metrics.json", json.dumps(metrics).encode())
    commit(store, prefix, record={"game": {"kind": "apo"}})


def _played(tmp_path: Path, name: str, rounds_committed: int) -> Any:
    store = open_store(StorageSpec(uri=f"file://{tmp_path / 'store'}"))
    _commit_phase(store, name, 0, "prepare", {"rm_accuracy": 0.5})
    for r in range(1, rounds_committed + 1):
        for phase in ROUND_PHASES["apo"]:
            metrics = {"rm_accuracy": 0.5 + r / 10} if phase == "evaluate" else {"steps": 1.0}
            _commit_phase(store, name, r, phase, metrics)
    return store


def _game_file(tmp_path: Path, name: str, rounds: int) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["rounds"] = rounds
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path / 'store'}"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _objects(store: Any) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in store.list("")}


def _sparring(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sparring_operator", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_a_game_file_shows_what_run_would_report_without_playing(tmp_path: Path) -> None:
    from sparring_operator.validate import load_game

    store = _played(tmp_path, "half", 1)
    before = _objects(store)
    status = file_status(load_game(_game_file(tmp_path, "half", 2)), store)
    assert (status.phase, status.completed_rounds, status.rounds_done) == ("Pending", 1, "1/2")
    assert status.message == "not being played; next: round 2: sample"
    assert [r.metrics["rm_accuracy"] for r in status.rounds] == pytest.approx([0.5, 0.6])
    done = file_status(load_game(_game_file(tmp_path, "half", 1)), store)
    assert (done.phase, done.rounds_done) == ("Succeeded", "1/1")
    shown = _sparring("status", str(_game_file(tmp_path, "half", 2)), "-o", "json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"]["roundsDone"] == "1/2"
    assert _objects(store) == before  # read only: nothing written, no lease taken
    # While a writer holds the game, it is Running and the holder is named.
    with GameLease(store, "default", "half", "sparring run on box (pid 7)"):
        held = file_status(load_game(_game_file(tmp_path, "half", 2)), store)
        assert held.phase == "Running"
        assert held.message == "round 2: sample (played by sparring run on box (pid 7))"


def test_a_store_shows_its_games_by_name(tmp_path: Path) -> None:
    store = _played(tmp_path, "half", 1)
    _played(tmp_path, "done", 2)
    store.put_bytes(game_prefix("default", "done") + "_COMPLETE", b"{}")
    before = _objects(store)
    assert stored_games(store) == [("default", "done"), ("default", "half")]
    half = stored_status(store, "default", "half")
    assert (half.phase, half.completed_rounds) == ("Pending", 1)
    assert stored_status(store, "default", "done").phase == "Succeeded"
    with pytest.raises(ValueError, match="no game default/nope"):
        stored_status(store, "default", "nope")
    uri = f"file://{tmp_path / 'store'}"
    listed = _sparring("list", "--store", uri, "-o", "json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {g["name"]: g["status"]["phase"] for g in json.loads(listed.stdout)}
    assert rows == {"done": "Succeeded", "half": "Pending"}
    table = _sparring("status", "half", "--store", uri, cwd=tmp_path)
    assert table.returncode == 0 and "default/half: Pending" in table.stdout
    missing = _sparring("status", "nope", "--store", uri, cwd=tmp_path)
    assert missing.returncode == 1 and "no game default/nope" in missing.stderr
    assert _objects(store) == before


def test_the_cluster_view_reads_the_resources(kube: Any, tmp_path: Path) -> None:
    from kubernetes import client as k8s

    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["metadata"] = {"name": "seen", "namespace": kube.namespace}
    custom = k8s.CustomObjectsApi(kube.client)
    group, version, plural = "sparring.dev", "v1alpha1", "adversarialgames"
    custom.create_namespaced_custom_object(group, version, kube.namespace, plural, doc)
    status = {"phase": "Running", "completedRounds": 1, "roundsDone": "1/2",
              "message": "round 2: sample"}  # fmt: skip
    custom.patch_namespaced_custom_object_status(
        group, version, kube.namespace, plural, "seen", {"status": status}
    )
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    cmd = [sys.executable, "-m", "sparring_operator"]
    listed = subprocess.run([*cmd, "list", "--kube", "-n", kube.namespace, "-o", "json"],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    ((game,),) = [json.loads(listed.stdout)]
    assert (game["name"], game["status"]["roundsDone"]) == ("seen", "1/2")
    shown = subprocess.run([*cmd, "status", "seen", "--kube", "-n", kube.namespace],
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0 and f"{kube.namespace}/seen: Running, rounds 1/2" in shown.stdout
    gone = subprocess.run([*cmd, "status", "nope", "--kube", "-n", kube.namespace],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert gone.returncode == 1 and "Not Found" in gone.stderr


def test_the_summary_names_every_checkpoint_and_explains_its_metrics() -> None:
    from sparring_operator.api import AdversarialGameStatus, RoundStatus
    from sparring_operator.local import checkpoints, legend

    rounds = [
        RoundStatus(round=1, metrics={"rm_accuracy": 0.6, "win_rate": 0.5},
                    artifacts={"update-policy": "s3://b/r1/up/", "update-adversary": "s3://b/r1/ua/"}),
        RoundStatus(round=2, metrics={"rm_accuracy": 0.7},
                    artifacts={"update-policy": "s3://b/r2/up/", "update-adversary": "s3://b/r2/ua/",
                               "sample": "s3://b/r2/s/"}),
    ]  # fmt: skip
    status = AdversarialGameStatus(phase="Succeeded", rounds=rounds)
    assert checkpoints(status, "apo") == [
        ("policy", "s3://b/r2/up/policy/"), ("reward model", "s3://b/r2/ua/rm/")
    ]  # fmt: skip
    assert checkpoints(status, "apl") == [
        ("defender", "s3://b/r2/up/policy/"), ("attacker", "s3://b/r2/ua/attacker/")
    ]  # fmt: skip
    lines = legend(status)
    assert [line.split(":")[0] for line in lines] == ["rm_accuracy", "win_rate"]
    assert "higher is better" in lines[0]


@pytest.mark.slow  # a prepare phase
def test_the_trainers_own_log_lines_reach_the_phase_log(tmp_path: Path) -> None:
    """What the trainer logs (here: the built-in HH rows it skips as inconsistent) is on the
    phase's stderr, which a pod's log and `sparring run -v` show."""
    game = _game_file(tmp_path, "logs", 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sparring_trainer", "prepare", "--game", str(game), "--round", "0"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "INFO sparring_trainer.data: builtin:hh-rlhf-harmless: skipped 9 inconsistent" in (
        done.stderr
    )
