"""The model cache (issue "Many nodes per phase", item 2): a model is fetched from its source
once per cache even when two pods start at once, and base checkpoints are read from the store
only by the first phase that needs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sparring_trainer.config import ModelSpec
from sparring_trainer.contract import make_context
from sparring_trainer.document import GameDocument, StorageSpec
from sparring_trainer.modelcache import CHECKPOINT_CACHE_ENV, MARKER, cached_tree, exclusive
from sparring_trainer.models import load_causal_lm, save_checkpoint
from sparring_trainer.store import UncommittedError, commit, open_store, phase_prefix

ROOT = Path(__file__).resolve().parents[1]

# Each process says it is about to resolve, then resolves and prints the bytes it fetched.
RESOLVE = """
import json, sys
from pathlib import Path
from sparring_trainer.document import StorageSpec
from sparring_trainer.modelcache import fetched_bytes
from sparring_trainer.modelrefs import resolve_model_ref
storage = StorageSpec.model_validate_json(sys.argv[3])
print("resolving", flush=True)
path = resolve_model_ref(sys.argv[1], Path(sys.argv[2]), storage)
print(json.dumps({"path": str(path), "fetched": fetched_bytes()}), flush=True)
"""


def _tiny_in_store(storage: StorageSpec, tmp_path: Path, key: str) -> str:
    model, tok = load_causal_lm(ModelSpec(model="tiny-random:3"), tmp_path / "build")
    save_checkpoint(model, tok, tmp_path / "ckpt")
    open_store(storage).upload_tree(tmp_path / "ckpt", key)
    return f"{storage.uri}/{key}"


def test_two_pods_starting_at_once_fetch_a_model_once(
    s3_storage: StorageSpec, s3_requests: Callable[[], list[str]], tmp_path: Path
) -> None:
    ref = _tiny_in_store(s3_storage, tmp_path, "models/shared")
    cache = tmp_path / "cache"  # the volume both pods mount
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", RESOLVE, ref, str(cache), s3_storage.model_dump_json()]
    # Both processes reach the model's lock while it is held, so they would download at the
    # same time if the lock did not make the second wait for the first.
    with exclusive(cache, ref):
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]  # fmt: skip
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "resolving\n"
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        results.append(json.loads(out))
    assert results[0]["path"] == results[1]["path"]
    fetched = sorted(r["fetched"] for r in results)
    assert fetched[0] == 0 and fetched[1] > 100_000  # one fetched the checkpoint, one nothing
    gets = [r for r in s3_requests() if r.startswith("GET") and "/models/shared/config.json" in r]
    assert len(gets) == 1, gets


def test_a_fetch_that_died_half_way_is_redone(tmp_path: Path) -> None:
    calls: list[Path] = []

    def download(into: Path) -> None:
        calls.append(into)
        into.mkdir(parents=True)
        (into / "weights").write_text("w")

    half = tmp_path / "key"
    half.mkdir(parents=True)
    (half / "weights").write_text("truncat")  # no marker: a pod was killed mid-download
    folder, fetched = cached_tree(tmp_path, "key", download)
    assert fetched and (folder / "weights").read_text() == "w" and (folder / MARKER).exists()
    assert cached_tree(tmp_path, "key", download) == (folder, False) and len(calls) == 1


def _document(storage: StorageSpec) -> GameDocument:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"] = storage.model_dump(mode="json", by_alias=True, exclude_none=True)
    return GameDocument.model_validate(doc)


def test_later_phases_read_base_checkpoints_from_the_cache_not_the_store(
    s3_storage: StorageSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = _document(s3_storage)
    store = open_store(s3_storage)
    prepare = phase_prefix("default", doc.metadata.name, 0, "prepare")
    model, tok = load_causal_lm(ModelSpec(model="tiny-random:3"), tmp_path / "build")
    save_checkpoint(model, tok, tmp_path / "base")
    store.upload_tree(tmp_path / "base", prepare + "base-policy")
    store.put_bytes(prepare + "metrics.json", b"{}")
    commit(store, prepare)
    monkeypatch.setenv(CHECKPOINT_CACHE_ENV, str(tmp_path / "cache" / "checkpoints"))

    first = make_context(doc, 1, "sample", tmp_path / "s1")
    path = first.fetch_dir(0, "prepare", "base-policy")
    size = sum(p.stat().st_size for p in (tmp_path / "base").iterdir())
    assert first.bytes_read == size  # read from the store, once
    later = make_context(doc, 1, "update-policy", tmp_path / "s2")
    assert later.fetch_dir(0, "prepare", "base-policy") == path
    assert later.bytes_read == 0  # from the cache
    # A cached file that no longer matches the manifest is refused, as a store object is.
    (path / "config.json").write_text("{}")
    with pytest.raises(UncommittedError, match="does not match"):
        make_context(doc, 1, "evaluate", tmp_path / "s3").fetch_dir(0, "prepare", "base-policy")
