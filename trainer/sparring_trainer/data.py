"""Preference pairs and prompts: reading, validating and the deterministic APO and APL splits.

Rows come from any data set `tables.read_table` reads (JSON lines, JSON, CSV, Parquet, a saved
`datasets` folder, hf://); a preference row may be in any format `preference_rows` recognises
(TRL standard or conversational, explicit or implicit prompt, HH transcripts). Errors name the
file and line or row (``DataError``: ``"FILE:LINE: message"``).

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sparring_trainer.config import APLSpec, APODataSpec, DataSource, PreferenceSource, PromptSource
from sparring_trainer.document import StorageSpec
from sparring_trainer.preference_rows import Message, parse_hh_transcript, preference_row
from sparring_trainer.tables import DataError, bucket_storage, builtin_resource, read_table

__all__ = [
    "DataError",
    "PreferencePair",
    "bucket_storage",
    "builtin_resource",
    "parse_hh_transcript",
    "read_preferences",
    "read_prompt_rows",
]

log = logging.getLogger(__name__)


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
    judge_pairs: list[PreferencePair]


def prompt_key(prompt: Sequence[Message]) -> str:
    canonical = json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_preferences(
    source: DataSource,
    storage: StorageSpec | None = None,
    cache_dir: Path | None = None,
    *,
    strict: bool | None = None,
) -> list[PreferencePair]:
    """Preference pairs from `source`, in its order.

    Structural problems (bad JSON, a missing column, a row in no known format) always raise
    DataError. Inconsistent pairs (prompts differ, an empty reply, chosen == rejected) raise
    too when `strict`, else they are skipped and counted in the log. `strict` defaults to True
    for user data and False for the built-in data (upstream HH has 9 such rows).
    """
    name = source.path
    if strict is None:
        strict = not name.startswith("builtin:")
    columns = source.columns if isinstance(source, PreferenceSource) else None
    pairs: list[PreferencePair] = []
    skipped = 0
    for where, row in read_table(source, storage, cache_dir).rows:
        prompt, other, chosen, rejected = preference_row(row, where, columns)
        problem = None
        if prompt != other:
            problem = "'chosen' and 'rejected' have different prompts"
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


def read_prompt_rows(source: PromptSource, storage: StorageSpec | None = None) -> list[PromptRow]:
    """The prompts of `source` (its `column`), with targets from `targetColumn` when set.

    Rows whose `filterColumn` differs from `filterValue` are dropped first. Errors name the file
    and, where there is one, the line: a missing column (CSV: line 1, the header), an empty
    prompt or target, a filter that leaves no rows.
    """
    name = source.path
    if (source.filter_column is None) != (source.filter_value is None):
        raise DataError(f"{name}: filterColumn and filterValue must be given together")
    table = read_table(source, storage)
    if not table.rows:
        raise DataError(f"{name}: no rows")
    wanted = [("column", source.column), ("targetColumn", source.target_column)]
    wanted.append(("filterColumn", source.filter_column))
    for field, column in wanted:
        if column is None:
            continue
        if column not in table.columns:
            raise DataError(
                f"{table.header}: no column {column!r} (the source's {field}); "
                f"columns: {table.columns}"
            )
        for where, row in table.rows:  # JSON lines: each row must have it
            if column not in row:
                raise DataError(f"{where}: missing key {column!r} (the source's {field})")
    out: list[PromptRow] = []
    seen_values: set[str] = set()
    for where, row in table.rows:
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
    prompts are the test queries), human pairs, gold queries (gold = chosen), train queries,
    and last the judge's pairs (so that its size changes no other split).
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
    sizes = (
        spec.test_pairs, spec.human_pairs, spec.gold_queries, spec.train_queries, spec.judge_pairs
    )  # fmt: skip
    needed = sum(sizes)
    if len(ordered) < needed:
        raise DataError(
            f"{origin}: the APO split needs {needed} distinct prompts (test_pairs {sizes[0]} + "
            f"human_pairs {sizes[1]} + gold_queries {sizes[2]} + train_queries {sizes[3]} + "
            f"judge_pairs {sizes[4]}) but "
            f"only {len(ordered)} are available (of {len(pairs)} pairs, after removing duplicate "
            f"prompts and prompts longer than {spec.max_prompt_chars} characters)"
        )
    bounds = list(itertools.accumulate(sizes, initial=0))
    test, human, gold, train, judge = (ordered[a:b] for a, b in itertools.pairwise(bounds))

    def query(pair: PreferencePair, gold: bool) -> Query:
        return Query(id=pair.key[:16], prompt=pair.prompt, gold=pair.chosen if gold else None)

    return APOSplits(
        human_pairs=human,
        gold_queries=[query(p, True) for p in gold],
        train_queries=[query(p, False) for p in train],
        test_pairs=test,
        test_queries=[query(p, True) for p in test[: spec.test_queries]],
        judge_pairs=judge,
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
