"""The rows of a data set, whatever holds it: JSON lines (``.jsonl``, ``.jsonl.gz``), JSON
(``.json``: an array of objects, or JSON lines), CSV with a header row (``.csv``, ``.csv.gz``)
and Parquet (``.parquet``), read from the package (``builtin:``), a path, ``file://`` or
``s3://``; a folder written by the datasets library's ``save_to_disk``; and Hub datasets
(``hf://org/name[@revision]``), downloaded with huggingface_hub (its cache, ``HF_HOME``; offline
from it with ``HF_HUB_OFFLINE=1``) and read by the datasets library, as ``load_dataset`` reads
a folder of data files.

Every row carries where it came from, for errors: ``FILE:LINE`` for text files (the CSV header
is line 1), ``FILE row N`` otherwise.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparring_trainer.config import BUILTIN_DATA, DATA_FILE_HINT, DATA_FILE_TYPES, DataSource
from sparring_trainer.document import StorageSpec

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

Row = dict[str, Any]


class DataError(ValueError):
    """Bad or insufficient data; ``str()`` is ``"FILE:LINE: message"`` or ``"FILE: message"``."""


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[tuple[str, Row]]
    """(where the row came from, the row)."""
    header: str
    """Where a column missing from the whole table is reported (a CSV file's line 1)."""


def json_row(line: str, where: str) -> Any:
    """One JSON-lines row, or a DataError naming file and line. Besides malformed JSON, the
    parser raises ValueError (integers of over 4300 digits) and RecursionError (deep nesting)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: invalid JSON: {error.msg}") from error
    except (ValueError, RecursionError) as error:
        raise DataError(f"{where}: unreadable JSON: {str(error)[:200]}") from None


def builtin_resource(name: str) -> Traversable:
    """The packaged file of ``builtin:NAME``; DataError listing the known names otherwise."""
    if name not in BUILTIN_DATA:
        known = ", ".join(f"builtin:{n}" for n in BUILTIN_DATA)
        raise DataError(f"builtin:{name}: unknown built-in data set (known: {known})")
    try:
        root: Traversable = importlib.resources.files("sparring_trainer") / "datasets"
    except (NotADirectoryError, TypeError):  # e.g. an editable install seen as a namespace
        root = Path(__file__).resolve().parent / "datasets"
    return root / BUILTIN_DATA[name]


def bucket_storage(uri: str, storage: StorageSpec | None) -> tuple[StorageSpec, str]:
    """``s3://bucket/key`` -> (a StorageSpec for the bucket, key); endpoint, region, addressing
    style and credentials come from the game's own storage spec."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    base = storage if storage is not None else StorageSpec()
    spec = StorageSpec(
        uri=f"s3://{bucket}",
        endpoint=base.endpoint,
        region=base.region,
        path_style=base.path_style,
        secret_ref=base.secret_ref,
    )
    return spec, key


def _local(path: str) -> Path:
    return Path(path[len("file://") :] if path.startswith("file://") else path).expanduser()


def read_bytes(source: DataSource, storage: StorageSpec | None) -> bytes:
    path = source.path
    if path.startswith("builtin:"):
        return builtin_resource(path[len("builtin:") :]).read_bytes()
    if path.startswith("s3://"):
        from sparring_trainer import store as store_mod

        spec, key = bucket_storage(path, storage)
        try:
            return store_mod.open_store(spec).get_bytes(key)
        except store_mod.StoreError as error:
            raise DataError(f"{path}: cannot read: {error}") from error
    if "://" in path and not path.startswith("file://"):
        raise DataError(
            f"{path}: unsupported data path (use builtin:NAME, a path, file://, s3:// or hf://)"
        )
    try:
        return _local(path).read_bytes()
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such file") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error


def _file_name(source: DataSource) -> str:
    """The name whose extension tells the format (a builtin's packaged file name)."""
    name = source.path
    if name.startswith("builtin:"):
        return BUILTIN_DATA.get(name[len("builtin:") :], name)
    return name


def is_csv(source: DataSource) -> bool:
    return re.search(r"\.csv(\.gz)?$", _file_name(source)) is not None


def text_lines(source: DataSource, storage: StorageSpec | None) -> list[str]:
    raw = read_bytes(source, storage)
    name = source.path
    if raw[:2] == b"\x1f\x8b" or _file_name(source).endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{name}: not a valid gzip file: {error}") from error
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{name}: not UTF-8 text: {error}") from error


def _csv(source: DataSource, storage: StorageSpec | None) -> Table:
    name = source.path
    reader = csv.DictReader(io.StringIO("\n".join(text_lines(source, storage)) + "\n"))
    columns = list(reader.fieldnames or [])
    rows: list[tuple[str, Row]] = []
    for row in reader:
        if None in row:  # more fields than the header names
            raise DataError(f"{name}:{reader.line_num}: more fields than the header has")
        rows.append((f"{name}:{reader.line_num}", dict(row)))
    return Table(columns, rows, f"{name}:1")


def _json_lines(source: DataSource, storage: StorageSpec | None) -> Table:
    name = source.path
    lines = text_lines(source, storage)
    whole = "\n".join(lines).lstrip()
    if re.search(r"\.json(\.gz)?$", _file_name(source)) and whole.startswith("["):
        return _records(name, json_row(whole, name), f"{name} row")  # a JSON array (.json)
    rows: list[tuple[str, Row]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = json_row(line, f"{name}:{number}")
        if not isinstance(row, dict):
            raise DataError(f"{name}:{number}: expected a JSON object")
        rows.append((f"{name}:{number}", row))
    return Table(_columns(r for _, r in rows), rows, name)


def _columns(rows: Any) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns


def _records(name: str, records: Any, label: str) -> Table:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{name}: expected a list of JSON objects")
    rows = [(f"{label} {i}", dict(r)) for i, r in enumerate(records, start=1)]
    return Table(_columns(r for _, r in rows), rows, name)


def _parquet(source: DataSource, storage: StorageSpec | None) -> Table:
    import pyarrow.parquet as pq

    name = source.path
    try:
        table = pq.read_table(io.BytesIO(read_bytes(source, storage)))
    except Exception as error:  # pyarrow's errors have no common base worth naming
        raise DataError(f"{name}: not a readable Parquet file: {error}") from error
    rows = [(f"{name} row {i}", r) for i, r in enumerate(table.to_pylist(), start=1)]
    return Table(list(table.column_names), rows, name)


def _dataset(source: DataSource, folder: Path, saved: bool, cache_dir: Path | None) -> Table:
    """A folder saved by `save_to_disk`, or a folder of data files (a Hub snapshot)."""
    import datasets

    name, split = source.path, source.split
    try:
        if saved:
            loaded = datasets.load_from_disk(str(folder))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{name}: no split {split!r} (splits: {sorted(loaded)})")
                loaded = loaded[split]
        else:
            cache = str(cache_dir / "datasets") if cache_dir is not None else None
            loaded = datasets.load_dataset(str(folder), split=split, cache_dir=cache)
    except DataError:
        raise
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as error:
        raise DataError(f"{name}: cannot read split {split!r}: {error}") from error
    return _records(name, loaded.to_list(), f"{name}[{split}] row")


def _hub_snapshot(source: DataSource) -> Path:
    """The dataset's files, in the Hub's own cache (HF_HOME: the model cache when there is one)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = source.path[len("hf://") :].partition("@")
    try:
        folder = snapshot_download(repo_id, repo_type="dataset", revision=revision or None)
    except LocalEntryNotFoundError as error:
        raise DataError(
            f"{source.path}: not in the Hugging Face cache and the Hub cannot be reached "
            f"(offline: HF_HUB_OFFLINE=1?): {error}"
        ) from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise DataError(f"{source.path}: cannot download: {error}") from error
    return Path(folder)


def read_table(
    source: DataSource, storage: StorageSpec | None = None, cache_dir: Path | None = None
) -> Table:
    """Every row of `source`, in order."""
    name = source.path
    if name.startswith("hf://"):
        return _dataset(source, _hub_snapshot(source), False, cache_dir)
    local = ("://" not in name or name.startswith("file://")) and not name.startswith("builtin:")
    if local and _local(name).is_dir():
        folder = _local(name)
        saved = any((folder / f).exists() for f in ("state.json", "dataset_dict.json"))
        return _dataset(source, folder, saved, cache_dir)
    file_name = _file_name(source)
    if is_csv(source):
        return _csv(source, storage)
    if re.search(r"\.parquet$", file_name):
        return _parquet(source, storage)
    if DATA_FILE_TYPES.search(file_name):
        return _json_lines(source, storage)
    raise DataError(
        f"{name}: unsupported file type: use {DATA_FILE_HINT}, a folder saved by the datasets "
        "library, or hf://org/name"
    )
