"""The artifact store: where phases read their inputs and write checkpoints, samples and metrics.

Two backends behind one small interface: a local directory (``file://``) for laptops, CI and the
local executor, and S3 (``s3://``, any S3-compatible server) for clusters. Layout and the commit
protocol are the phase contract of DESIGN.md::

    {store}/{namespace}/{game}/round-{NNNN}/{phase}/...      the phase's outputs
    {store}/{namespace}/{game}/round-{NNNN}/{phase}/_SUCCESS  written last, by `commit`

A phase uploads its outputs, then calls `commit`, which writes ``_SUCCESS`` containing a manifest
(size and sha256 of every object). Readers call `require_committed` and trust nothing without it,
so a pod killed half-way through an upload never leaves a checkpoint that looks usable.

Keys are always relative to the store's root and use ``/``; they are validated so that a key can
never climb out of its prefix (one game must never read or overwrite another game's artifacts).
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .document import StorageSpec

SUCCESS = "_SUCCESS"
"""Name of the commit marker written last into a phase's prefix."""
DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
"""S3 uploads of files at least this large use multipart upload."""
_CHUNK = 1024 * 1024
# Temporary files of atomic writes start with this; `list` hides them and keys may not use it,
# so a writer killed between write and rename leaves nothing a reader could mistake for data.
_TMP_MARK = ".sparring-tmp-"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StoreError(Exception):
    """Any failure of the artifact store; the message names the URI or key involved."""


class ArtifactNotFound(StoreError):
    """The object does not exist."""


class UncommittedError(StoreError):
    """A phase's outputs lack ``_SUCCESS`` or do not match its manifest (size or sha256)."""


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return `key` if it is a safe relative key, else raise StoreError naming it.

    Rejected: empty keys (unless `prefix`), absolute keys, backslashes (a Windows separator would
    alias another key), NUL and control characters, empty, ``.`` and ``..`` segments (on the file
    backend they would alias or escape), and segments starting with the temp-file marker. An
    object key must not end with ``/``; a prefix may (``""`` is the whole store).
    """
    if not isinstance(key, str):
        raise StoreError(f"invalid key {key!r}: must be a string")
    if prefix and key == "":
        return key
    problem = None
    if key == "":
        problem = "must not be empty"
    elif key.startswith("/"):
        problem = "must be relative (no leading '/')"
    elif "\\" in key:
        problem = "must not contain backslashes"
    elif _CONTROL.search(key):
        problem = "must not contain NUL or control characters"
    else:
        segments = key.split("/")
        if prefix and segments[-1] == "":
            segments = segments[:-1]
        if any(s in ("", ".", "..") for s in segments):
            problem = "must not contain empty, '.' or '..' path segments"
        elif any(s.startswith(_TMP_MARK) for s in segments):
            problem = f"must not use the reserved name prefix {_TMP_MARK!r}"
    if problem:
        raise StoreError(f"invalid key {key!r}: {problem}")
    return key


def _as_dir(prefix: str) -> str:
    """A validated prefix that names a directory: ``""`` or ending with ``/``."""
    check_key(prefix, prefix=True)
    return prefix if prefix == "" or prefix.endswith("/") else prefix + "/"


class ArtifactStore(abc.ABC):
    """A flat key/value object store with directory-like prefixes (``a/b/c``).

    Keys are relative to `uri`. Prefix arguments are plain string prefixes (as in S3) for `list`
    and `delete_prefix`; the tree operations treat a prefix as a directory.
    """

    uri: str
    """Root URI: ``s3://bucket[/prefix]`` or ``file:///absolute/path``."""

    def uri_for(self, key: str) -> str:
        """Full URI of a key (or of a prefix, which keeps its trailing ``/``)."""
        check_key(key, prefix=True)
        return f"{self.uri}/{key}" if key else self.uri

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write an object, replacing any previous one atomically."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object; ArtifactNotFound if it does not exist."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Copy one object to another key of this store (server-side where the store can)."""

    @abc.abstractmethod
    def swap(self, key: str, data: bytes, expected: bytes | None) -> bool:
        """Compare-and-swap: write `data` only if the object is still `expected` (None: only
        if it does not exist), atomically against every other writer; False if it was not."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abc.abstractmethod
    def list(self, prefix: str) -> builtins.list[str]:
        """Sorted keys (relative to the root) of every object whose key starts with `prefix`."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix` (a non-empty prefix: never the whole store)."""

    @abc.abstractmethod
    def upload_file(self, local: Path, key: str) -> None:
        """Copy a local file to `key`."""

    @abc.abstractmethod
    def download_file(self, key: str, local: Path) -> None:
        """Copy `key` to a local file (parents created; the file appears whole or not at all)."""

    def upload_tree(self, local_dir: Path, prefix: str) -> builtins.list[str]:
        """Upload every file under `local_dir` (recursively) to `prefix`; return the keys written.

        Symlinked directories are not followed (a checkpoint directory must not drag in the rest
        of the filesystem); symlinked files are uploaded as their content.
        """
        prefix = _as_dir(prefix)
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StoreError(f"cannot upload {local_dir}: not a directory")
        paths = [
            Path(dirpath, name)
            for dirpath, _dirs, names in os.walk(local_dir)  # followlinks=False
            for name in names
            if not name.startswith(_TMP_MARK)  # a killed writer's leftovers are not data
        ]
        keys = []
        for path in sorted(p for p in paths if p.is_file()):
            key = prefix + path.relative_to(local_dir).as_posix()
            self.upload_file(path, check_key(key))
            keys.append(key)
        return keys

    def download_tree(self, prefix: str, local_dir: Path) -> Path:
        """Download every object under `prefix` into `local_dir`, keeping the layout; return it."""
        prefix = _as_dir(prefix)
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        for key in self.list(prefix):
            self.download_file(key, local_dir / key[len(prefix) :])
        return local_dir

    def local_dir(self, prefix: str) -> Path | None:
        """The real directory behind `prefix` when the store is local (readers can then skip
        copying a multi-GB checkpoint); None for remote stores. The directory may not exist."""
        return None

    @abc.abstractmethod
    def _chunks(self, key: str) -> Iterator[bytes]:
        """Stream an object's content (ArtifactNotFound if missing)."""

    def _digest(self, key: str, *, trust_metadata: bool = False) -> tuple[int, str]:
        """Size and sha256 of an object. Backends may answer from metadata recorded at upload
        time when `trust_metadata` (commit does, to avoid downloading a checkpoint back)."""
        digest, size = hashlib.sha256(), 0
        for chunk in self._chunks(key):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class FileStore(ArtifactStore):
    """A directory on a local (or shared) filesystem. Every write goes to a temp file in the
    target's directory followed by `os.replace`, so readers only ever see whole files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.uri = f"file://{self.root.as_posix()}"

    def _path(self, key: str, *, prefix: bool = False) -> Path:
        return self.root / check_key(key, prefix=prefix)

    @contextlib.contextmanager
    def _errors(self, key: str, *, reading: bool = False) -> Iterator[None]:
        """OSError -> StoreError naming the key; a missing file while reading -> not found."""
        try:
            yield
        except OSError as exc:
            if reading and isinstance(exc, (FileNotFoundError, IsADirectoryError)):
                raise ArtifactNotFound(f"{self.uri_for(key)} does not exist") from None
            raise StoreError(f"{self.uri_for(key)}: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def _atomic(self, target: Path) -> Iterator[Path]:
        """Yield a temp path next to `target`; move it into place only if the block succeeds."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_TMP_MARK + target.name + ".")
        os.close(fd)
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; other readers (pods, users) need to read
            yield Path(tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors(key), self._atomic(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # durable before the rename makes it visible

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors(key, reading=True):
            return path.read_bytes()

    def copy(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._path(dst)
        with self._errors(src, reading=True), self._atomic(target) as tmp:
            shutil.copyfile(source, tmp)

    def swap(self, key: str, data: bytes, expected: bytes | None) -> bool:
        import fcntl

        path = self._path(key)
        with self._errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            # An advisory lock on the folder: every swap of its objects, from any process on
            # this machine, compares and writes under it.
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)
                current = path.read_bytes() if path.is_file() else None
                if current != expected:
                    return False
                self.put_bytes(key, data)
                return True
            finally:
                os.close(folder)  # releases the lock

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> builtins.list[str]:
        check_key(prefix, prefix=True)
        # Walk only the deepest directory the prefix names; filter the rest by string prefix.
        start = self.root / prefix.rpartition("/")[0]
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(_TMP_MARK):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        if not check_key(prefix, prefix=True):
            raise StoreError(f"refusing to delete the whole store {self.uri}")
        with self._errors(prefix):
            directory = self._path(prefix, prefix=True)
            if prefix.endswith("/"):
                if directory.is_dir():
                    shutil.rmtree(directory)
                return
            for key in self.list(prefix):
                self._path(key).unlink(missing_ok=True)

    def upload_file(self, local: Path, key: str) -> None:
        path, local = self._path(key), Path(local)
        if not local.is_file():
            raise StoreError(f"cannot upload {local} to {self.uri_for(key)}: not a file")
        with self._errors(key):
            if path.exists() and path.samefile(local):
                return
            with self._atomic(path) as tmp:
                shutil.copyfile(local, tmp)

    def download_file(self, key: str, local: Path) -> None:
        path, local = self._path(key), Path(local)
        with self._errors(key, reading=True):
            if not path.is_file():
                raise FileNotFoundError(path)
            if local.exists() and local.samefile(path):
                return
            with self._atomic(local) as tmp:
                shutil.copyfile(path, tmp)

    def local_dir(self, prefix: str) -> Path | None:
        return self._path(prefix, prefix=True)

    def _chunks(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        with self._errors(key, reading=True), open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk


def open_store(
    storage: StorageSpec,
    *,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    credentials: tuple[str, str] | None = None,
) -> ArtifactStore:
    """The store a `StorageSpec` describes. For S3 this checks that the bucket exists (a
    StoreError naming it if not). Credentials come from boto3's standard chain unless given
    (the operator passes those of the game's own Secret)."""
    uri = storage.uri
    if uri.startswith("file://"):
        return FileStore(Path(uri[len("file://") :]))
    if uri.startswith("s3://"):
        from ._s3 import S3Store  # boto3 is imported only when S3 is used

        return S3Store(storage, multipart_threshold=multipart_threshold, credentials=credentials)
    raise StoreError(f"unsupported storage uri {uri!r}: use s3://bucket[/prefix] or file://path")


def _check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise StoreError(f"invalid {what} {value!r} for a store prefix")
    return value


def game_prefix(namespace: str, game: str) -> str:
    """``{namespace}/{game}/``: everything one game writes lives under this prefix."""
    return f"{_check_name('namespace', namespace)}/{_check_name('game', game)}/"


def phase_prefix(namespace: str, game: str, round: int, phase: str) -> str:
    """``{namespace}/{game}/round-{round:04d}/{phase}/``: one phase's outputs."""
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise StoreError(f"invalid round {round!r}: must be an integer >= 0")
    return f"{game_prefix(namespace, game)}round-{round:04d}/{_check_name('phase', phase)}/"


def commit(
    store: ArtifactStore,
    prefix: str,
    files: Iterable[str] | None = None,
    record: dict[str, Any] | None = None,
) -> None:
    """Mark the outputs under `prefix` complete by writing ``prefix + "_SUCCESS"`` last.

    Its content is JSON ``{"files": {relative key: {"size": int, "sha256": hex}},
    "committed_at": ISO-8601 UTC}`` covering every object under `prefix`, or only `files` when
    given (keys relative to `prefix`, or full keys starting with it, e.g. what `upload_tree`
    returned). Committing nothing is refused: it is almost always a wrong prefix. `record`
    adds keys to the manifest (a phase records the spec it was played with).
    """
    prefix = _as_dir(prefix)
    if files is None:
        keys = [k for k in store.list(prefix) if k != prefix + SUCCESS]
    else:
        keys = []
        for name in files:
            key = name if name.startswith(prefix) else prefix + name
            check_key(key)
            if key == prefix + SUCCESS:
                continue
            keys.append(key)
    if not keys:
        raise StoreError(f"nothing to commit under {store.uri_for(prefix)}")
    entries = {}
    for key in sorted(set(keys)):
        size, sha = store._digest(key, trust_metadata=True)
        entries[key[len(prefix) :]] = {"size": size, "sha256": sha}
    manifest = {**(record or {}), "files": entries}
    manifest["committed_at"] = datetime.now(timezone.utc).isoformat()
    store.put_bytes(prefix + SUCCESS, json.dumps(manifest, indent=1, sort_keys=True).encode())


def copy_committed(store: ArtifactStore, src: str, dst: str) -> None:
    """Copy a committed phase's outputs from prefix `src` to `dst`, its `_SUCCESS` last, so
    that the copy is committed only once it is whole. Its manifest names keys relative to the
    prefix, so it holds for the copy unchanged."""
    src, dst = _as_dir(src), _as_dir(dst)
    require_committed(store, src)
    keys = [k for k in store.list(src) if k != src + SUCCESS]
    for key in keys:
        store.copy(key, dst + key[len(src) :])
    store.copy(src + SUCCESS, dst + SUCCESS)


def is_committed(store: ArtifactStore, prefix: str) -> bool:
    """Whether ``prefix + "_SUCCESS"`` exists (cheap; does not check the manifest)."""
    return store.exists(_as_dir(prefix) + SUCCESS)


def require_committed(store: ArtifactStore, prefix: str, verify: bool = False) -> dict[str, Any]:
    """Return the manifest of a committed prefix, or raise UncommittedError naming its URI.

    With `verify`, every object in the manifest is re-read and its size and sha256 compared, so
    a truncated, corrupted or deleted object is caught before it is used (this reads all the
    data: use it where a bad checkpoint would cost more than the read).
    """
    prefix = _as_dir(prefix)
    where = store.uri_for(prefix)
    try:
        raw = store.get_bytes(prefix + SUCCESS)
    except ArtifactNotFound:
        raise UncommittedError(f"{where} is not committed: {SUCCESS} is missing") from None
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise TypeError("'files' is not an object of objects")
        for name in files:
            check_key(prefix + name)  # a tampered manifest must not point outside the prefix
    except (ValueError, KeyError, TypeError, StoreError) as exc:
        raise UncommittedError(f"{where}{SUCCESS} is not a valid manifest: {exc}") from None
    if verify:
        for name, expected in sorted(files.items()):
            try:
                size, sha = store._digest(prefix + name)
            except ArtifactNotFound:
                raise UncommittedError(f"{store.uri_for(prefix + name)} is missing") from None
            if size != expected.get("size") or sha != expected.get("sha256"):
                raise UncommittedError(
                    f"{store.uri_for(prefix + name)} does not match {SUCCESS}: size {size} "
                    f"(expected {expected.get('size')}), sha256 {sha[:12]}... "
                    f"(expected {str(expected.get('sha256'))[:12]}...)"
                )
    return dict(manifest)
