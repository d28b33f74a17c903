"""Preference pairs and prompts: reading, validating and the deterministic APO and APL splits.

Preference files are HH-RLHF style JSON lines: ``{"chosen": T1, "rejected": T2}`` where each
transcript is ``"\\n\\nHuman: ...\\n\\nAssistant: ...`` and both share every turn but the last
assistant reply. Errors name the file and line (``DataError``: ``"FILE:LINE: message"``).

Nothing here imports torch.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.resources
import io
import itertools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparring_trainer.config import APLSpec, APODataSpec, DataSource, PromptSource, StorageSpec

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

Message = dict[str, str]
BUILTINS: dict[str, str] = {
    "hh-rlhf-harmless": "hh-rlhf_harmless-base_test.jsonl.gz",
    "advbench": "advbench_harmful_behaviors.csv",
    "harmbench": "harmbench_behaviors_text_val.csv",
    "xstest": "xstest_prompts.csv",
}
"""Built-in data sets (``builtin:NAME``) and their file in ``sparring_trainer/datasets/``
(sources, licences and checksums in its README.md)."""

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class DataError(ValueError):
    """Bad or insufficient data; ``str()`` is ``"FILE:LINE: message"`` or ``"FILE: message"``."""


def _json_row(line: str, where: str) -> Any:
    """One JSON-lines row, or a DataError naming file and line. Besides malformed JSON, the
    parser raises ValueError (integers of over 4300 digits) and RecursionError (deep nesting)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: invalid JSON: {error.msg}") from error
    except (ValueError, RecursionError) as error:
        raise DataError(f"{where}: unreadable JSON: {str(error)[:200]}") from None


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    origin: str
    """``file:line`` the pair was read from."""

    @property
    def key(self) -> str:
        """Stable sha256 hex of the prompt turns: the basis of the split."""
        return prompt_key(self.prompt)


@dataclass(frozen=True)
class Query:
    id: str
    prompt: tuple[Message, ...]
    gold: str | None = None


@dataclass(frozen=True)
class APOSplits:
    human_pairs: list[PreferencePair]
    gold_queries: list[Query]
    train_queries: list[Query]
    test_pairs: list[PreferencePair]
    test_queries: list[Query]


def prompt_key(prompt: Sequence[Message]) -> str:
    canonical = json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_hh_transcript(text: str, where: str) -> tuple[tuple[Message, ...], str]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b ..."`` -> (turns before the last reply, last reply).

    Turn contents are stripped of surrounding whitespace; the last reply may be empty.
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: empty transcript")
    parts = _TURN.split(text)
    if parts[0].strip():
        raise DataError(f"{where}: transcript must start with 'Human:', not {parts[0][:40]!r}")
    turns = [
        (_ROLES[role], content.strip())
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not turns or turns[-1][0] != "assistant":
        raise DataError(f"{where}: transcript does not end with an 'Assistant:' turn")
    prompt = tuple({"role": role, "content": content} for role, content in turns[:-1])
    if not any(m["role"] == "user" for m in prompt):
        raise DataError(f"{where}: transcript has no 'Human:' turn before the last reply")
    if turns[0][0] != "user":
        raise DataError(f"{where}: transcript must start with a 'Human:' turn")
    return prompt, turns[-1][1]


# ----------------------------------------------------------------------------- reading


def builtin_resource(name: str) -> Traversable:
    """The packaged file of ``builtin:NAME``; DataError listing the known names otherwise."""
    if name not in BUILTINS:
        known = ", ".join(f"builtin:{n}" for n in BUILTINS)
        raise DataError(f"builtin:{name}: unknown built-in data set (known: {known})")
    try:
        root: Traversable = importlib.resources.files("sparring_trainer") / "datasets"
    except (NotADirectoryError, TypeError):  # e.g. an editable install seen as a namespace
        root = Path(__file__).resolve().parent / "datasets"
    return root / BUILTINS[name]


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


def _read_bytes(source: DataSource, storage: StorageSpec | None) -> bytes:
    path = source.path
    if path.startswith("builtin:"):
        resource = builtin_resource(path[len("builtin:") :])
        return resource.read_bytes()
    if path.startswith("s3://"):
        from sparring_trainer import store as store_mod

        spec, key = bucket_storage(path, storage)
        try:
            return store_mod.open_store(spec).get_bytes(key)
        except store_mod.StoreError as error:
            raise DataError(f"{path}: cannot read: {error}") from error
    local = Path(path[len("file://") :] if path.startswith("file://") else path).expanduser()
    if "://" in path and not path.startswith("file://"):
        raise DataError(
            f"{path}: unsupported data path (use builtin:NAME, a path, file:// or s3://)"
        )
    try:
        return local.read_bytes()
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such file") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error


def _lines(source: DataSource, storage: StorageSpec | None) -> list[str]:
    raw = _read_bytes(source, storage)
    name = source.path
    if name.endswith(".gz") or (name.startswith("builtin:") and raw[:2] == b"\x1f\x8b"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{name}: not a valid gzip file: {error}") from error
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{name}: not UTF-8 text: {error}") from error


def read_preferences(
    source: DataSource,
    storage: StorageSpec | None = None,
    cache_dir: Path | None = None,
    *,
    strict: bool | None = None,
) -> list[PreferencePair]:
    """Preference pairs from a JSON-lines file (``.jsonl``/``.jsonl.gz``), in file order.

    Structural problems (bad JSON, missing key, non-string, not a transcript) always raise
    DataError. Inconsistent pairs (prompts differ, an empty reply, chosen == rejected) raise
    too when `strict`, else they are skipped and counted in the log. `strict` defaults to True
    for user files and False for the built-in data (upstream HH has 9 such rows).
    `cache_dir` is accepted for symmetry with model loading; s3 files are read into memory.
    """
    del cache_dir
    name = source.path
    if strict is None:
        strict = not name.startswith("builtin:")
    pairs: list[PreferencePair] = []
    skipped = 0
    for number, line in enumerate(_lines(source, storage), start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        row = _json_row(line, where)
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with 'chosen' and 'rejected'")
        for field in ("chosen", "rejected"):
            if field not in row:
                raise DataError(f"{where}: missing key {field!r}")
            if not isinstance(row[field], str):
                raise DataError(f"{where}: {field!r} must be a string")
        prompt, chosen = parse_hh_transcript(row["chosen"], f"{where}: 'chosen'")
        other, rejected = parse_hh_transcript(row["rejected"], f"{where}: 'rejected'")
        problem = None
        if prompt != other:
            problem = "'chosen' and 'rejected' transcripts have different prompts"
        elif not chosen or not rejected:
            problem = f"the last reply of {'chosen' if not chosen else 'rejected'!r} is empty"
        elif chosen == rejected:
            problem = "'chosen' and 'rejected' replies are identical"
        if problem and strict:
            raise DataError(f"{where}: {problem}")
        if problem:
            skipped += 1
            log.debug("%s: skipped: %s", where, problem)
            continue
        pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, origin=where))
    if skipped:
        log.info("%s: skipped %d inconsistent pair(s), kept %d", name, skipped, len(pairs))
    if not pairs:
        raise DataError(f"{name}: no preference pairs")
    return pairs


def _is_csv(source: DataSource) -> bool:
    """CSV (header row) or JSON lines, by the file name (a builtin's packaged file name)."""
    name = source.path
    if name.startswith("builtin:"):
        name = BUILTINS.get(name[len("builtin:") :], name)
    return re.search(r"\.csv(\.gz)?$", name) is not None


def read_prompts(
    source: DataSource,
    column: str,
    storage: StorageSpec | None = None,
    cache_dir: Path | None = None,
) -> list[str]:
    """One prompt per row from `column` of a CSV file (header row) or a JSON-lines file."""
    del cache_dir
    name = source.path
    lines = _lines(source, storage)
    prompts: list[str] = []
    if _is_csv(source):
        reader = csv.DictReader(io.StringIO("\n".join(lines) + "\n"))
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise DataError(f"{name}: no column {column!r} (columns: {reader.fieldnames or []})")
        for row in reader:
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{name}:{reader.line_num}: empty {column!r}")
            prompts.append(value.strip())
    else:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            row = _json_row(line, f"{name}:{number}")
            if not isinstance(row, dict) or column not in row:
                raise DataError(f"{name}:{number}: missing key {column!r}")
            value = row[column]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{name}:{number}: {column!r} must be a non-empty string")
            prompts.append(value.strip())
    if not prompts:
        raise DataError(f"{name}: no rows")
    return prompts


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a `PromptSource` (after its filter), with its target answer if any."""

    prompt: str
    target: str | None
    origin: str
    """``file:line`` the row was read from."""

    @property
    def key(self) -> str:
        """Stable sha256 hex of the prompt text: the basis of the APL split."""
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()


def _records(
    source: DataSource, storage: StorageSpec | None
) -> tuple[list[str], list[tuple[int, dict[str, object]]]]:
    """(column names, [(line, row)]) of a CSV file (header row) or a JSON-lines file."""
    name = source.path
    lines = _lines(source, storage)
    if _is_csv(source):
        reader = csv.DictReader(io.StringIO("\n".join(lines) + "\n"))
        columns = list(reader.fieldnames or [])
        rows: list[tuple[int, dict[str, object]]] = []
        for row in reader:
            if None in row:  # more fields than the header names
                raise DataError(f"{name}:{reader.line_num}: more fields than the header has")
            rows.append((reader.line_num, dict(row)))
        return columns, rows
    columns, rows = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _json_row(line, f"{name}:{number}")
        if not isinstance(row, dict):
            raise DataError(f"{name}:{number}: expected a JSON object")
        columns += [c for c in row if c not in columns]
        rows.append((number, row))
    return columns, rows


def read_prompt_rows(source: PromptSource, storage: StorageSpec | None = None) -> list[PromptRow]:
    """The prompts of `source` (its `column`), with targets from `targetColumn` when set.

    Rows whose `filterColumn` differs from `filterValue` are dropped first. Errors name the file
    and, where there is one, the line: a missing column (CSV: line 1, the header), an empty
    prompt or target, a filter that leaves no rows.
    """
    name = source.path
    if (source.filter_column is None) != (source.filter_value is None):
        raise DataError(f"{name}: filterColumn and filterValue must be given together")
    columns, rows = _records(source, storage)
    if not rows:
        raise DataError(f"{name}: no rows")
    wanted = [("column", source.column), ("targetColumn", source.target_column)]
    wanted.append(("filterColumn", source.filter_column))
    csv_file = _is_csv(source)
    for field, column in wanted:
        if column is None:
            continue
        if csv_file and column not in columns:
            raise DataError(
                f"{name}:1: no column {column!r} (the source's {field}); columns: {columns}"
            )
        for number, row in rows:  # JSON lines: each row must have it
            if column not in row:
                raise DataError(f"{name}:{number}: missing key {column!r} (the source's {field})")
    out: list[PromptRow] = []
    seen_values: set[str] = set()
    for number, row in rows:
        where = f"{name}:{number}"
        if source.filter_column is not None:
            value = str(row[source.filter_column]).strip()
            seen_values.add(value)
            if value != source.filter_value:
                continue
        prompt = row[source.column]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: {source.column!r} must be a non-empty string")
        target: str | None = None
        if source.target_column is not None:
            raw = row[source.target_column]
            if not isinstance(raw, str) or not raw.strip():
                raise DataError(f"{where}: {source.target_column!r} must be a non-empty string")
            target = raw.strip()
        out.append(PromptRow(prompt=prompt.strip(), target=target, origin=where))
    if not out:
        shown = ", ".join(repr(v) for v in sorted(seen_values)[:10])
        raise DataError(
            f"{name}: no prompts left after the filter {source.filter_column} == "
            f"{source.filter_value!r} (values in the file: {shown})"
        )
    return out


# ----------------------------------------------------------------------------- split


def _rank(pair: PreferencePair) -> tuple[str, str, str]:
    return pair.chosen, pair.rejected, pair.origin


def split_apo(pairs: Sequence[PreferencePair], spec: APODataSpec) -> APOSplits:
    """Deterministic, order-independent split by prompt hash; all parts disjoint by prompt.

    Unique prompts (duplicates: the smallest (chosen, rejected, origin) wins) that fit in
    `max_prompt_chars` are sorted by key and dealt out: test pairs (their first `test_queries`
    prompts are the test queries), human pairs, gold queries (gold = chosen), train queries.
    """
    origin = pairs[0].origin.rsplit(":", 1)[0] if pairs else "split"
    if spec.test_queries > spec.test_pairs:
        raise DataError(
            f"{origin}: test_queries ({spec.test_queries}) must not exceed test_pairs "
            f"({spec.test_pairs}): the test queries are the prompts of the test pairs"
        )
    unique: dict[str, PreferencePair] = {}
    for pair in pairs:
        if sum(len(m["content"]) for m in pair.prompt) > spec.max_prompt_chars:
            continue
        key = pair.key
        kept = unique.get(key)
        if kept is None or _rank(pair) < _rank(kept):
            unique[key] = pair
    ordered = [unique[key] for key in sorted(unique)]
    sizes = (spec.test_pairs, spec.human_pairs, spec.gold_queries, spec.train_queries)
    needed = sum(sizes)
    if len(ordered) < needed:
        raise DataError(
            f"{origin}: the APO split needs {needed} distinct prompts (test_pairs {sizes[0]} + "
            f"human_pairs {sizes[1]} + gold_queries {sizes[2]} + train_queries {sizes[3]}) but "
            f"only {len(ordered)} are available (of {len(pairs)} pairs, after removing duplicate "
            f"prompts and prompts longer than {spec.max_prompt_chars} characters)"
        )
    bounds = list(itertools.accumulate(sizes, initial=0))
    test, human, gold, train = (ordered[a:b] for a, b in itertools.pairwise(bounds))

    def query(pair: PreferencePair, gold: bool) -> Query:
        return Query(id=pair.key[:16], prompt=pair.prompt, gold=pair.chosen if gold else None)

    return APOSplits(
        human_pairs=human,
        gold_queries=[query(p, True) for p in gold],
        train_queries=[query(p, False) for p in train],
        test_pairs=test,
        test_queries=[query(p, True) for p in test[: spec.test_queries]],
    )


@dataclass(frozen=True)
class Seed:
    """A harmful seed request and the harmful answer the attacker wants the defender to give."""

    id: str
    prompt: str
    target: str


@dataclass(frozen=True)
class APLSplits:
    train_seeds: list[Seed]
    test_seeds: list[Seed]
    benign_train: list[Query]
    """Utility term: the base defender's answers to these are preferred over a refusal."""
    benign_test: list[Query]
    """Over-refusal check (held out)."""


def harmful_target(row: PromptRow, template: str) -> str:
    """The row's own target, or `template` with ``{prompt}`` replaced by the request."""
    return row.target if row.target is not None else template.replace("{prompt}", row.prompt)


def _unique_by_key(rows: Sequence[PromptRow]) -> list[PromptRow]:
    unique: dict[str, PromptRow] = {}
    for row in rows:
        unique.setdefault(row.key, row)  # the first occurrence in the file wins
    return [unique[key] for key in sorted(unique)]


def split_apl(seeds: Sequence[PromptRow], benign: Sequence[PromptRow], spec: APLSpec) -> APLSplits:
    """Deterministic, order-independent split by prompt hash (sha256 of the text).

    Distinct seed prompts sorted by key: the first `testSeeds` are held out, the next
    `trainSeeds` are trained on. Distinct benign prompts: the first `benignPrompts` are the
    held-out over-refusal set, the next `benignPrompts` the utility term's prompts.
    """
    ordered = _unique_by_key(seeds)
    source = spec.seeds.path
    needed = spec.test_seeds + spec.train_seeds
    if len(ordered) < needed:
        raise DataError(
            f"{source}: the APL split needs {needed} distinct seed prompts (testSeeds "
            f"{spec.test_seeds} + trainSeeds {spec.train_seeds}) but only {len(ordered)} are "
            f"available (of {len(seeds)} rows after the filter)"
        )
    as_seeds = [
        Seed(r.key[:16], r.prompt, harmful_target(r, spec.target_template)) for r in ordered
    ]
    test, train = as_seeds[: spec.test_seeds], as_seeds[spec.test_seeds : needed]
    benign_rows = _unique_by_key(benign)
    if len(benign_rows) < 2 * spec.benign_prompts:
        raise DataError(
            f"{spec.benign.path}: the APL split needs {2 * spec.benign_prompts} distinct benign "
            f"prompts (benignPrompts {spec.benign_prompts} held out for over-refusal + "
            f"{spec.benign_prompts} for the utility term) but only {len(benign_rows)} are "
            f"available (of {len(benign)} rows after the filter)"
        )

    def query(row: PromptRow) -> Query:
        return Query(id=row.key[:16], prompt=({"role": "user", "content": row.prompt},))

    n = spec.benign_prompts
    return APLSplits(
        train_seeds=train,
        test_seeds=test,
        benign_train=[query(r) for r in benign_rows[n : 2 * n]],
        benign_test=[query(r) for r in benign_rows[:n]],
    )
