"""Bring your own preference data (issue "Bring your own data", item 1): every format TRL
documents and HH transcripts, recognised from the rows, from every container (JSON lines, JSON,
CSV, Parquet, a `save_to_disk` folder, an hf:// dataset read offline from the Hub's cache), and
an unsupported row or file told what is supported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sparring_trainer.config import PreferenceColumns, PreferenceSource
from sparring_trainer.data import DataError, read_preferences
from sparring_trainer.document import StorageSpec

ROOT = Path(__file__).resolve().parents[1]
# (question, chosen reply, rejected reply); the second has an earlier exchange.
ITEMS = [
    ("How do I boil an egg?", "Put it in boiling water for nine minutes.", "Eggs are hard."),
    ("Name a colour.", "Blue is a colour.", "I cannot say."),
]
HISTORY = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"}]


def _turns(i: int) -> list[dict[str, str]]:
    return [*(HISTORY if i == 1 else []), {"role": "user", "content": ITEMS[i][0]}]


def _hh(turns: list[dict[str, str]], reply: str) -> str:
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in turns) + (
        f"\n\nAssistant: {reply}"
    )


def _said(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


def rows_in(fmt: str, i: int) -> dict[str, Any]:
    """Item `i` in format `fmt`."""
    question, good, bad = ITEMS[i]
    turns = _turns(i)
    if fmt == "hh":
        return {"chosen": _hh(turns, good), "rejected": _hh(turns, bad)}
    if fmt == "standard":
        return {"prompt": question, "chosen": good, "rejected": bad}
    if fmt == "standard-implicit":
        return {"chosen": f"{question} {good}", "rejected": f"{question} {bad}"}
    if fmt == "conversational":
        return {"prompt": turns, "chosen": [_said("assistant", good)],
                "rejected": [_said("assistant", bad)]}  # fmt: skip
    assert fmt == "conversational-implicit"
    return {"chosen": [*turns, _said("assistant", good)],
            "rejected": [*turns, _said("assistant", bad)]}  # fmt: skip


FORMATS = ("hh", "standard", "standard-implicit", "conversational", "conversational-implicit")
MULTI_TURN = ("hh", "conversational", "conversational-implicit")  # keep the earlier exchange


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path | str, **kw: Any) -> list[tuple[Any, str, str]]:
    pairs = read_preferences(PreferenceSource(path=str(path), **kw))
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_the_pairs_it_holds(tmp_path: Path, fmt: str) -> None:
    got = _read(_jsonl(tmp_path / "p.jsonl", [rows_in(fmt, i) for i in range(2)]))
    for i, (prompt, chosen, rejected) in enumerate(got):
        question, good, bad = ITEMS[i]
        assert (chosen, rejected) == (good, bad)  # never swapped
        expected = _turns(i) if fmt in MULTI_TURN else [_said("user", question)]
        assert list(prompt) == expected


def test_an_implicit_prompt_ends_on_a_word_boundary(tmp_path: Path) -> None:
    rows = [{"chosen": "The sky is blue today.", "rejected": "The sky is bright today."}]
    ((prompt, chosen, rejected),) = _read(_jsonl(tmp_path / "p.jsonl", rows))
    assert (prompt[0]["content"], chosen, rejected) == (
        "The sky is",
        "blue today.",
        "bright today.",
    )


def test_other_column_names_are_mapped(tmp_path: Path) -> None:
    rows = [{"question": q, "good": g, "bad": b} for q, g, b in ITEMS]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    columns = PreferenceColumns(prompt="question", chosen="good", rejected="bad")
    assert [(p[0]["content"], c, r) for p, c, r in _read(path, columns=columns)] == ITEMS
    wrong = PreferenceColumns(prompt="question", chosen="best", rejected="bad")
    with pytest.raises(DataError, match=r"p\.jsonl:1: no column 'best' \(preferences\.columns"):
        _read(path, columns=wrong)


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"question": "q", "answer": "a"}, "missing key 'chosen'.*supported preference formats"),
        ({"chosen": "a b", "rejected": ["x"]}, "'rejected' must be a string"),
        ({"chosen": [_said("assistant", "a")], "rejected": [_said("assistant", "b")]},
         "'chosen' must be a conversation ending with the assistant's reply"),
        ({"prompt": [_said("user", "q")], "chosen": [_said("user", "a")],
          "rejected": [_said("assistant", "b")]}, "'chosen': must be one assistant message"),
        ({"chosen": [{"role": "bot", "content": "a"}], "rejected": []}, r"'chosen'\[0\]"),
        ({"chosen": "Completely different.", "rejected": "Nothing shared."}, "share no beginning"),
        ({"chosen": 1, "rejected": 2}, "not a preference row.*supported preference formats"),
    ],
)  # fmt: skip
def test_an_unsupported_row_says_what_is_supported(
    tmp_path: Path, row: dict[str, Any], problem: str
) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [rows_in("standard", 0), row])
    with pytest.raises(DataError, match=problem) as info:
        _read(path)
    assert str(info.value).startswith(f"{path}:2: ")


def test_an_unsupported_file_type_says_which_are(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("chosen,rejected\n")
    with pytest.raises(DataError, match=r"p\.txt: unsupported file type: use \.jsonl"):
        _read(tmp_path / "p.txt")


def _rows(fmt: str = "standard") -> list[dict[str, Any]]:
    return [rows_in(fmt, i) for i in range(2)]


def _expected() -> list[tuple[Any, str, str]]:
    return [((_said("user", q),), g, b) for q, g, b in ITEMS]


def test_parquet_json_and_csv_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(_rows()), tmp_path / "p.parquet")
    assert _read(tmp_path / "p.parquet") == _expected()
    (tmp_path / "p.json").write_text(json.dumps(_rows()))
    assert _read(tmp_path / "p.json") == _expected()
    lines = ["prompt,chosen,rejected", *(",".join(f'"{v}"' for v in it) for it in ITEMS)]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    assert _read(tmp_path / "p.csv") == _expected()
    # Conversational rows survive Parquet's nested types.
    pq.write_table(pa.Table.from_pylist(_rows("conversational")), tmp_path / "c.parquet")
    assert [c for _, c, _ in _read(tmp_path / "c.parquet")] == [g for _, g, _ in ITEMS]


def test_a_folder_saved_by_the_datasets_library(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(_rows()).save_to_disk(str(tmp_path / "one"))
    assert _read(tmp_path / "one") == _expected()
    both = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(_rows()[:1]),
         "test": datasets.Dataset.from_list(_rows("conversational")[1:])}
    )  # fmt: skip
    both.save_to_disk(str(tmp_path / "dict"))
    assert _read(tmp_path / "dict") == _expected()[:1]  # the train split by default
    assert [c for _, c, _ in _read(tmp_path / "dict", split="test")] == [ITEMS[1][1]]
    with pytest.raises(DataError, match=r"no split 'validation' \(splits: \['test', 'train'\]\)"):
        _read(tmp_path / "dict", split="validation")


def hub_cache(home: Path, repo: str, rows: list[dict[str, Any]]) -> None:
    """A dataset repository as the Hub's cache holds it after a download (HF_HOME/hub): a
    snapshot of its files under a commit, and refs/main naming that commit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    commit = "0" * 39 + "1"
    folder = home / "hub" / f"datasets--{repo.replace('/', '--')}"
    data = folder / "snapshots" / commit / "data"
    data.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    pq.write_table(pa.Table.from_pylist(rows), data / "train-00000-of-00001.parquet")


def test_an_hf_dataset_is_read_from_the_hub_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub

    hub_cache(tmp_path / "hf", "acme/prefs", _rows("conversational-implicit"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert [c for _, c, _ in _read("hf://acme/prefs")] == [g for _, g, _ in ITEMS]
    with pytest.raises(DataError, match=r"hf://acme/missing: not in the Hugging Face cache"):
        _read("hf://acme/missing")


def test_data_references_are_checked_with_the_game() -> None:
    assert PreferenceSource(path="hf://acme/prefs@v1").path == "hf://acme/prefs@v1"
    with pytest.raises(ValueError, match="expected hf://org/name"):
        PreferenceSource(path="hf://just-a-name")


@pytest.mark.slow  # six tiny games
@pytest.mark.parametrize("fmt", [*FORMATS, "hf"])
def test_apo_tiny_plays_on_each_format(tmp_path: Path, fmt: str) -> None:
    source = read_preferences(PreferenceSource(path="builtin:hh-rlhf-harmless"), strict=False)
    rows = []
    for pair in source[:400]:
        turns = [dict(m) for m in pair.prompt]
        if fmt in ("standard", "standard-implicit"):  # single-turn formats: the last question
            turns = turns[-1:]
        question = turns[-1]["content"]
        conv = {
            "hh": {"chosen": _hh(turns, pair.chosen), "rejected": _hh(turns, pair.rejected)},
            "standard": {"prompt": question, "chosen": pair.chosen, "rejected": pair.rejected},
            "standard-implicit": {"chosen": f"{question}\n{pair.chosen}",
                                  "rejected": f"{question}\n{pair.rejected}"},
            "conversational": {"prompt": turns, "chosen": [_said("assistant", pair.chosen)],
                               "rejected": [_said("assistant", pair.rejected)]},
        }  # fmt: skip
        implicit = {"chosen": [*turns, _said("assistant", pair.chosen)],
                    "rejected": [*turns, _said("assistant", pair.rejected)]}  # fmt: skip
        rows.append(conv.get(fmt, implicit))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if fmt == "hf":
        hub_cache(tmp_path / "hf", "acme/hh", rows)
        env["HF_HOME"], path = str(tmp_path / "hf"), "hf://acme/hh"
    else:
        path = str(_jsonl(tmp_path / "prefs.jsonl", rows))
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["rounds"] = 1
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path / 'store'}"}
    doc["spec"]["game"].setdefault("data", {})["preferences"] = {"path": path}
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc))
    played = subprocess.run(
        [sys.executable, "-m", "sparring_operator", "run", str(game), "-o", "json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert played.returncode == 0, played.stderr[-3000:]
    assert '"Succeeded"' in played.stdout


def test_s3_parquet(s3_storage: StorageSpec) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from sparring_trainer.store import open_store

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(_rows()), buffer)
    open_store(s3_storage).put_bytes("data/p.parquet", buffer.getvalue())
    uri = f"{s3_storage.uri}/data/p.parquet"
    pairs = read_preferences(PreferenceSource(path=uri), s3_storage)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == _expected()
    assert pairs[1].origin == f"{uri} row 2"


def test_validate_refuses_a_data_file_it_cannot_read(tmp_path: Path) -> None:
    from sparring_operator.validate import validate_file

    (tmp_path / "prefs.txt").write_text("chosen,rejected\n")
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["game"]["data"]["preferences"] = {"path": str(tmp_path / "prefs.txt")}
    game = tmp_path / "game.yaml"
    game.write_text(yaml.safe_dump(doc, sort_keys=False))
    line = next(i for i, t in enumerate(game.read_text().splitlines(), 1) if "prefs.txt" in t)
    assert validate_file(game) == [
        f"{game}:{line}: spec.game.data.preferences.path: unsupported file type: use .jsonl, "
        ".jsonl.gz, .json, .csv, .csv.gz or .parquet, or a folder saved by datasets"
    ]
    with pytest.raises(ValueError, match=r"'s3://bucket/p\.txt': unsupported file type"):
        PreferenceSource(path="s3://bucket/p.txt")


def test_apl_prompts_come_from_the_same_containers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sparring_trainer.config import PromptSource
    from sparring_trainer.data import read_prompt_rows

    rows = [
        {"goal": "Do a bad thing", "target": "Sure, here is"},
        {"goal": "Another", "target": "Ok"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "seeds.parquet")
    source = PromptSource(
        path=str(tmp_path / "seeds.parquet"), column="goal", target_column="target"
    )
    got = read_prompt_rows(source)
    assert [(r.prompt, r.target) for r in got] == [(r["goal"], r["target"]) for r in rows]
    hub_cache(tmp_path / "hf", "acme/seeds", rows)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    from_hub = read_prompt_rows(PromptSource(path="hf://acme/seeds", column="goal"))
    assert [r.prompt for r in from_hub] == ["Do a bad thing", "Another"]
    with pytest.raises(DataError, match=r"no column 'Behavior' \(the source's column\)"):
        read_prompt_rows(PromptSource(path="hf://acme/seeds", column="Behavior"))
