"""The model cache: base models fetched from their source (hf://, pip://, s3://) and base
checkpoints fetched from the store, each once per cache folder.

The folder may be a phase pod's own scratch (the default) or a volume every phase pod of a game
mounts (`spec.modelCache`, a PersistentVolumeClaim; ReadWriteMany when pods run on several
nodes). Each entry is fetched under an exclusive POSIX lock on a file of its own, which NFS and
CephFS volumes honour across nodes, and counts as there only once its completion marker
exists: a fetch that died half-way leaves no marker and is redone by the next process, and two
pods that start at once fetch a model once, the second waiting for the first.

`fetched_bytes()` is what this process fetched from model sources; a phase reports it as
`model_fetch_bytes`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MARKER = ".sparring-complete"
# Set by the operator when the game has a model cache: committed base checkpoints are then
# kept there by content, so each phase after the first reads them from the cache, not the store.
CHECKPOINT_CACHE_ENV = "SPARRING_CHECKPOINT_CACHE"
_fetched = 0


@contextlib.contextmanager
def exclusive(cache_dir: Path, key: str) -> Iterator[None]:
    """Holds the lock of entry `key` of `cache_dir` (blocking until it is free)."""
    locks = Path(cache_dir) / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
    with path.open("a+") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def tree_bytes(path: Path) -> int:
    """The size of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def count_fetched(size: int) -> None:
    global _fetched
    _fetched += size


def fetched_bytes() -> int:
    return _fetched


def checkpoint_cache() -> Path | None:
    """Where committed base checkpoints are cached, if the game has a model cache."""
    value = os.environ.get(CHECKPOINT_CACHE_ENV)
    return Path(value) if value else None


def content_key(files: dict[str, str]) -> str:
    """The identity of a checkpoint: its files' relative names and sha256 digests (equal
    content, whichever game or round committed it, is one cache entry)."""
    listing = "\n".join(f"{name}\t{digest}" for name, digest in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def cached_tree(root: Path, key: str, download: Callable[[Path], Any]) -> tuple[Path, bool]:
    """The folder of entry `key` under `root`, downloaded by `download(into)` unless complete;
    returns (folder, whether this call downloaded it)."""
    folder = Path(root) / key
    with exclusive(root, key):
        if (folder / MARKER).exists():
            return folder, False
        shutil.rmtree(folder, ignore_errors=True)  # a fetch that died half-way
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        download(partial)
        (partial / MARKER).write_text(key + "\n")
        partial.rename(folder)
        return folder, True
