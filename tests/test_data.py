"""Preference and prompt files, HH transcripts and the deterministic APO split."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from sparring_trainer.config import APODataSpec, DataSource, PromptSource
from sparring_trainer.data import (
    DataError,
    PreferencePair,
    parse_hh_transcript,
    read_preferences,
    read_prompt_rows,
    split_apo,
)
from sparring_trainer.document import StorageSpec

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def hh(*turns: str) -> str:
    """Alternating Human/Assistant turns as an HH transcript."""
    roles = ["Human", "Assistant"]
    return "".join(f"\n\n{roles[i % 2]}: {t}" for i, t in enumerate(turns))


def row(question: str, good: str = "good answer", bad: str = "bad answer") -> dict[str, str]:
    return {"chosen": hh(question, good), "rejected": hh(question, bad)}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def pairs(n: int, prefix: str = "q") -> list[PreferencePair]:
    return [
        PreferencePair(
            prompt=({"role": "user", "content": f"{prefix} {i}"},),
            chosen=f"yes {i}",
            rejected=f"no {i}",
            origin=f"mem.jsonl:{i + 1}",
        )
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- transcripts


def test_parse_multi_turn() -> None:
    prompt, reply = parse_hh_transcript(hh("Hi", "Hello!", "Help me ", "  Sure.  "), "x:1")
    assert prompt == (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Help me"},
    )
    assert reply == "Sure."


def test_parse_keeps_inline_markers_and_empty_reply() -> None:
    prompt, reply = parse_hh_transcript("\n\nHuman: a. Human: b\n\nAssistant:", "x:1")
    assert prompt == ({"role": "user", "content": "a. Human: b"},)
    assert reply == ""
    prompt, reply = parse_hh_transcript("Human: q\n\nAssistant:", "x:1")
    assert (prompt[0]["content"], reply) == ("q", "")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("just text", "must start with 'Human:'"),
        (hh("only a question"), "does not end with an 'Assistant:'"),
        ("\n\nAssistant: hi\n\nHuman: q\n\nAssistant: a", "start with a 'Human:'"),
        ("\n\nAssistant: hi", "no 'Human:' turn"),
    ],
)
def test_parse_rejects_malformed(text: str, problem: str) -> None:
    with pytest.raises(DataError, match=problem) as info:
        parse_hh_transcript(text, "f.jsonl:7")
    assert str(info.value).startswith("f.jsonl:7")


# ----------------------------------------------------------------------------- reading


def test_read_preferences_jsonl_and_gz(tmp_path: Path) -> None:
    rows = [row("first"), row("second", "ok", "meh")]
    plain = write_jsonl(tmp_path / "p.jsonl", [*rows[:1], "", *rows[1:]])
    got = read_preferences(DataSource(path=str(plain)))
    assert [p.prompt[0]["content"] for p in got] == ["first", "second"]
    assert (got[1].chosen, got[1].rejected) == ("ok", "meh")
    assert got[1].origin == f"{plain}:3"
    packed = tmp_path / "p.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_preferences(DataSource(path=f"file://{packed}")) == [
        PreferencePair(
            p.prompt, p.chosen, p.rejected, p.origin.replace(str(plain), f"file://{packed}")
        )
        for p in got
    ]
    assert got[0].key == got[0].key and got[0].key != got[1].key and len(got[0].key) == 64


@pytest.mark.parametrize(
    "bad, problem",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ({"chosen": hh("q", "a")}, "missing key 'rejected'"),
        ({"chosen": hh("q", "a"), "rejected": 3}, "'rejected' must be a string"),
        ({"chosen": hh("q", "a"), "rejected": hh("other q", "b")}, "different prompts"),
        ({"chosen": hh("q", "a"), "rejected": "no transcript"}, "must start with 'Human:'"),
        ({"chosen": hh("q", "a"), "rejected": hh("q")}, "'Assistant:' turn"),
        ({"chosen": hh("q", ""), "rejected": hh("q", "b")}, "is empty"),
        (row("q", "same", "same"), "identical"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, bad: object, problem: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [row("fine"), bad, row("also fine")])
    with pytest.raises(DataError, match=problem) as info:
        read_preferences(DataSource(path=str(path)))
    assert str(info.value).startswith(f"{path}:2: ")


def test_lenient_mode_skips_inconsistent_pairs_only(tmp_path: Path) -> None:
    inconsistent = {"chosen": hh("q", "a"), "rejected": hh("other", "b")}
    path = write_jsonl(tmp_path / "p.jsonl", [row("fine"), inconsistent, row("q", "x", "x")])
    assert len(read_preferences(DataSource(path=str(path)), strict=False)) == 1
    broken = write_jsonl(tmp_path / "b.jsonl", [row("fine"), "{"])
    with pytest.raises(DataError, match=r"b\.jsonl:2: invalid JSON"):
        read_preferences(DataSource(path=str(broken)), strict=False)


def test_missing_file_empty_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_preferences(DataSource(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="no preference pairs"):
        read_preferences(DataSource(path=str(write_jsonl(tmp_path / "e.jsonl", []))))
    # An unknown built-in is refused with the game file, before any phase reads it.
    with pytest.raises(ValueError, match=r"'builtin:nope' \(known: builtin:hh-rlhf-harmless"):
        DataSource(path="builtin:nope")


def test_builtin_hh_rlhf_harmless() -> None:
    got = read_preferences(DataSource(path="builtin:hh-rlhf-harmless"))
    # 2,312 upstream rows; 5 have chosen/rejected prompts that differ and 4 an empty chosen reply.
    assert len(got) == 2303
    assert all(p.chosen and p.rejected and p.prompt[0]["role"] == "user" for p in got)
    assert got[0].origin == "builtin:hh-rlhf-harmless:1"
    with pytest.raises(DataError, match=r"builtin:hh-rlhf-harmless:\d+: "):
        read_preferences(DataSource(path="builtin:hh-rlhf-harmless"), strict=True)


def test_read_preferences_from_s3(s3_storage: StorageSpec) -> None:
    from sparring_trainer.store import open_store

    body = "\n".join(json.dumps(row(f"q{i}")) for i in range(3)).encode()
    open_store(s3_storage).put_bytes("data/prefs.jsonl", body)
    uri = f"{s3_storage.uri}/data/prefs.jsonl"
    got = read_preferences(DataSource(path=uri), s3_storage)
    assert [p.origin for p in got] == [f"{uri}:{i}" for i in (1, 2, 3)]
    with pytest.raises(DataError, match=r"missing\.jsonl"):
        read_preferences(DataSource(path=f"{s3_storage.uri}/missing.jsonl"), s3_storage)


# ----------------------------------------------------------------------------- prompts


def _prompts_of(path: Path, column: str) -> list[str]:
    return [r.prompt for r in read_prompt_rows(PromptSource(path=str(path), column=column))]


def test_read_prompts_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('goal,target\n"Say ""hi""\nplease",x\nsecond ,y\n')
    assert _prompts_of(csv_path, "goal") == ['Say "hi"\nplease', "second"]
    with pytest.raises(DataError, match=r"p\.csv:1: no column 'prompt' \(the source's column\)"):
        _prompts_of(csv_path, "prompt")
    csv_path.write_text("goal,target\nfine,x\n ,y\n")
    with pytest.raises(DataError, match=r"p\.csv:3: 'goal' must be a non-empty string"):
        _prompts_of(csv_path, "goal")
    jsonl = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    assert _prompts_of(jsonl, "prompt") == ["a", "b"]
    write_jsonl(jsonl, [{"prompt": "a"}, {"other": "b"}])
    with pytest.raises(DataError, match=r"p\.jsonl:2: missing key 'prompt'"):
        _prompts_of(jsonl, "prompt")
    write_jsonl(jsonl, [{"prompt": ""}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: 'prompt' must be a non-empty string"):
        _prompts_of(jsonl, "prompt")


@pytest.mark.skipif(not (SHARED / "advbench_harmful_behaviors.csv").exists(), reason="no data")
def test_read_prompts_advbench() -> None:
    goals = _prompts_of(SHARED / "advbench_harmful_behaviors.csv", "goal")
    assert len(goals) == 520 and all(goals)


# ----------------------------------------------------------------------------- split

SMALL = APODataSpec(
    human_pairs=7, gold_queries=5, train_queries=6, test_pairs=4, test_queries=3, judge_pairs=3
)


def _prompts(items: list[PreferencePair]) -> set[str]:
    return {p.key for p in items}


def test_split_sizes_disjoint_and_deterministic() -> None:
    data = pairs(40)
    splits = split_apo(data, SMALL)
    assert len(splits.test_pairs) == 4 and len(splits.test_queries) == 3
    assert len(splits.human_pairs) == 7
    assert len(splits.gold_queries) == 5 and len(splits.train_queries) == 6
    parts = [
        _prompts(splits.test_pairs),
        _prompts(splits.human_pairs),
        {prompt_key_of(q.prompt) for q in splits.gold_queries},
        {prompt_key_of(q.prompt) for q in splits.train_queries},
        _prompts(splits.judge_pairs),
    ]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 25
    assert [q.prompt for q in splits.test_queries] == [p.prompt for p in splits.test_pairs[:3]]
    by_prompt = {p.key: p for p in data}
    assert all(q.gold == by_prompt[prompt_key_of(q.prompt)].chosen for q in splits.gold_queries)
    assert all(q.gold is None for q in splits.train_queries)
    assert len({q.id for q in splits.gold_queries + splits.train_queries}) == 11

    shuffled = data[:] + data[:5]  # duplicates too
    random.Random(1).shuffle(shuffled)
    assert split_apo(shuffled, SMALL) == splits


def prompt_key_of(prompt: tuple[dict[str, str], ...]) -> str:
    from sparring_trainer.data import prompt_key

    return prompt_key(prompt)


def test_split_drops_long_prompts_and_dedupes_order_independently() -> None:
    long = pairs(30, prefix="x" * 40)
    spec = SMALL.model_copy(update={"max_prompt_chars": 20})
    with pytest.raises(DataError, match=r"needs 25 distinct prompts .* only 0 are available"):
        split_apo(long, spec)
    a, b = pairs(1)[0], pairs(1)[0]
    b = PreferencePair(a.prompt, "another", "answer", "other.jsonl:9")
    base = pairs(30, prefix="base")
    one = split_apo([*base, a, b], SMALL)
    two = split_apo([b, *base, a], SMALL)
    assert one == two


def test_split_too_small_says_how_many() -> None:
    with pytest.raises(DataError, match=r"mem\.jsonl: the APO split needs 25 .* only 24 are"):
        split_apo(pairs(24), SMALL)
    with pytest.raises(DataError, match="test_queries"):
        split_apo(pairs(40), SMALL.model_copy(update={"test_queries": 5}))


def test_split_builtin_defaults() -> None:
    data = read_preferences(DataSource(path="builtin:hh-rlhf-harmless"))
    spec = APODataSpec()
    splits = split_apo(data, spec)
    assert len(splits.human_pairs) == spec.human_pairs
    assert len(splits.test_queries) == spec.test_queries
    reversed_splits = split_apo(list(reversed(data)), spec)
    assert [q.id for q in reversed_splits.train_queries] == [q.id for q in splits.train_queries]
