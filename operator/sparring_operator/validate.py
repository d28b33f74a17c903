"""Check game files before they reach a cluster (`sparring validate FILE...`).

Every error is one line that names the file, the line of the offending field where it is
known, and the field's path in the resource's camelCase, compiler style:

    game.yaml:14: spec.game.policy.update.method: Input should be 'rjs', 'rrhf' or 'dpo' (got 'ppo')
    game.yaml:7:3: YAML syntax error: mapping values are not allowed here

A file may hold several YAML documents (`---`), as `kubectl apply -f` accepts: each document is
validated on its own and its errors say `document N`. Empty documents (a trailing `---`) are
skipped. JSON files work too (`.json` is read with the json module, anything else as YAML).
The checks are the pydantic models' own (`api.AdversarialGame`), so a game that passes here is
one the operator and `sparring run` accept. Runtime files (`SparringRuntime`,
`ClusterSparringRuntime`: runtimeapi.py) are checked the same way, and `validate_runtimes` plays
every game that names one of them through the operator's own `apply_runtime`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from sparring_trainer.config import DATA_FILE_HINT, DATA_FILE_TYPES, DataSource, ModelSpec

from sparring_operator.api import API_VERSION, KIND, AdversarialGame
from sparring_operator.runtimeapi import (
    CLUSTER_RUNTIME_KIND,
    RUNTIME_KIND,
    ClusterSparringRuntime,
    SparringRuntime,
)

Loc = tuple[str | int, ...]
Runtime = SparringRuntime | ClusterSparringRuntime
# The kinds a file may hold, and the model each is checked against.
RESOURCES: dict[str, type[BaseModel]] = {
    KIND: AdversarialGame,
    RUNTIME_KIND: SparringRuntime,
    CLUSTER_RUNTIME_KIND: ClusterSparringRuntime,
}


@dataclass
class FileReport:
    """What `check_file` found: the games and runtimes of a file, or why it is not valid."""

    path: Path
    games: list[AdversarialGame] = field(default_factory=list)
    runtimes: list[Runtime] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Each valid game's document and its "document N" (for errors found later, on a runtime).
    sources: list[tuple[_Doc, str]] = field(default_factory=list)

    def error(self, line: int | None, where: str, loc: str, message: str) -> None:
        """One compiler-style line: file:line: document N: field: message."""
        prefix = f"{self.path}:{line}" if line else str(self.path)
        parts = [prefix, where, loc, " ".join(message.split())]
        self.errors.append(": ".join(p for p in parts if p))


class InvalidGameFile(ValueError):
    """A game file that does not validate; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def validate_file(path: Path) -> list[str]:
    """Human-readable errors of a game file; empty when the file is valid."""
    return check_file(path).errors


def load_game(path: Path) -> AdversarialGame:
    """The one game of a file, or InvalidGameFile (for commands that run a single game)."""
    report = check_file(path)
    if not report.errors and len(report.games) != 1:
        report.errors.append(f"{path}: holds {len(report.games)} games; exactly one is needed")
    if report.errors:
        raise InvalidGameFile(report.errors)
    return report.games[0]


def summary(game: AdversarialGame) -> str:
    """`game NAME, kind K, R rounds`: what `sparring validate` prints for a valid game."""
    rounds = game.spec.rounds
    return f"game {game.metadata.name}, kind {game.spec.game.kind}, {rounds} round" + (
        "s" if rounds != 1 else ""
    )


def check_file(path: Path, local_files: bool = True) -> FileReport:
    """Every problem of a game file. With local_files, a model, tokenizer or data file given as
    a local path must exist (relative to the current folder, where `sparring run` reads it);
    games for a cluster whose paths name files inside the phase pods turn that off."""
    report = FileReport(path)
    name = str(path)
    docs, report.errors = _read(path, name)
    if report.errors:
        return report
    present = [d for d in docs if d.data is not None]
    if not present:
        report.errors.append(f"{name}: file is empty: expected an {KIND} document")
    seen: dict[tuple[str, str, str | None], int] = {}
    for doc in present:
        where = f"document {doc.number}" if len(docs) > 1 else ""
        resource, errors = _check_document(doc)
        if isinstance(resource, AdversarialGame) and local_files:
            errors += _missing_local_files(doc, resource)
        if resource is not None:
            meta = resource.metadata
            key = (resource.kind, meta.name, meta.namespace)
            if key in seen:
                what = "game" if resource.kind == KIND else resource.kind
                space = f" in namespace {meta.namespace!r}" if meta.namespace else ""
                errors.append(
                    (doc.line(("metadata", "name")), "metadata.name", f"{what} {meta.name!r}"
                     f"{space} is already defined in document {seen[key]}")
                )  # fmt: skip
            seen.setdefault(key, doc.number)
            if isinstance(resource, AdversarialGame):
                report.games.append(resource)
                report.sources.append((doc, where))
            else:
                report.runtimes.append(resource)
        for line, loc, message in sorted(errors, key=lambda e: e[0] or 0):
            report.error(line, where, loc, message)
    if report.errors:
        report.games, report.runtimes, report.sources = [], [], []
    return report


# --- reading: documents and the line of every key ------------------------------------------


@dataclass
class _Doc:
    number: int  # 1-based position in the YAML stream
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)  # key path -> 1-based line
    duplicates: list[tuple[Loc, int, int]] = field(default_factory=list)  # path, line, first

    def line(self, loc: Loc) -> int | None:
        """Line of the deepest part of loc that is in the file (a missing field: its parent)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _read(path: Path, name: str) -> tuple[list[_Doc], list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], [f"{name}: no such file"]
    except IsADirectoryError:
        return [], [f"{name}: is a directory, not a game file"]
    except UnicodeDecodeError:
        return [], [f"{name}: not UTF-8 text"]
    except OSError as exc:
        return [], [f"{name}: cannot read: {exc.strerror}"]
    if path.suffix.lower() == ".json" and text.strip():
        return _read_json(text, name)
    return _read_yaml(text, name)


def _read_yaml(text: str, name: str) -> tuple[list[_Doc], list[str]]:
    docs: list[_Doc] = []
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects NUL and other unprintable characters
        return [], [f"{name}: YAML error: {' '.join(str(exc).split())}"]
    try:  # compose each document to a node (it has line marks), then construct its data
        while loader.check_node():
            node = loader.get_node()
            doc = _Doc(len(docs) + 1, loader.construct_document(node))
            _index(node, (), doc, set())
            docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark:
            message += f" ({exc.context} that starts on line {exc.context_mark.line + 1})"
        syntax = isinstance(exc, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        return [], [f"{where}: YAML {'syntax ' if syntax else ''}error: {message}"]
    except yaml.YAMLError as exc:
        return [], [f"{name}: YAML error: {' '.join(str(exc).split())}"]
    except (ValueError, RecursionError) as exc:  # beyond the parser: see _unparsable
        return [], [_unparsable(name, exc)]
    finally:
        loader.dispose()
    return docs, []


def _unparsable(name: str, exc: ValueError | RecursionError) -> str:
    """A document the parsers choke on without a syntax error of their own: an integer of more
    than 4300 digits (Python refuses to convert it) or nesting deeper than the recursion limit.
    Found by fuzzing; `check_file` must report such files, never raise."""
    if isinstance(exc, RecursionError):
        return f"{name}: nested too deeply to read"
    return f"{name}: cannot read a value: {' '.join(str(exc).split())[:200]}"


def _read_json(text: str, name: str) -> tuple[list[_Doc], list[str]]:
    try:
        doc = _Doc(1, json.loads(text))
    except json.JSONDecodeError as exc:
        return [], [f"{name}:{exc.lineno}:{exc.colno}: JSON syntax error: {exc.msg}"]
    except (ValueError, RecursionError) as exc:
        return [], [_unparsable(name, exc)]
    # Line numbers only; tab-indented JSON is not YAML (and very deep JSON is too deep for it).
    with contextlib.suppress(yaml.YAMLError, RecursionError):
        _index(yaml.compose(text, Loader=yaml.SafeLoader), (), doc, set())
    return [doc], []


def _index(node: yaml.Node | None, loc: Loc, doc: _Doc, seen: set[int]) -> None:
    """Record the line of every key and list item under node, and duplicate keys (PyYAML
    silently keeps the last one; kubectl rejects them)."""
    if node is None:
        return
    doc.lines.setdefault(loc, node.start_mark.line + 1)
    if id(node) in seen:  # an alias of an anchor: already indexed (or recursive)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                doc.duplicates.append(((*loc, key.value), line, first[key.value]))
            first.setdefault(key.value, line)
            doc.lines[(*loc, key.value)] = line
            _index(value, (*loc, key.value), doc, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), doc, seen)


# --- checking one document ------------------------------------------------------------------

Error = tuple[int | None, str, str]  # line, camelCase path, message


def _check_document(doc: _Doc) -> tuple[Any, list[Error]]:
    """The document's resource (a game or a runtime) and its errors."""
    data = doc.data
    if not isinstance(data, dict):
        kinds = {"list": "a list", "str": "a string", "int": "a number", "float": "a number"}
        got = kinds.get(type(data).__name__, f"a {type(data).__name__}")
        return None, [(doc.line(()), "", f"expected a mapping with apiVersion, kind, metadata "
                       f"and spec, got {got}")]  # fmt: skip
    errors: list[Error] = []
    if data.get("apiVersion") != API_VERSION:
        got = f"got {data['apiVersion']!r}" if "apiVersion" in data else "it is missing"
        errors.append((doc.line(("apiVersion",)), "apiVersion", f"expected {API_VERSION!r}, {got}"))
    root = RESOURCES.get(data.get("kind"))  # type: ignore[arg-type]
    if root is None:
        got = f"got {data['kind']!r}" if "kind" in data else "it is missing"
        *others, last = (repr(kind) for kind in RESOURCES)
        errors.append(
            (doc.line(("kind",)), "kind", f"expected {', '.join(others)} or {last}, {got}")
        )
    if errors:  # not ours (or another version of it): its fields would only add noise
        return None, errors
    assert root is not None
    for loc, line, first in doc.duplicates:
        errors.append(
            (line, _path(loc, root), f"duplicate key (first on line {first}); remove one")
        )
    try:
        resource = root.model_validate(data)
    except ValidationError as exc:
        errors += [_pydantic_error(doc, err, root) for err in exc.errors(include_url=False)]
        return None, errors
    return (None if errors else resource), errors


def _missing_local_files(doc: _Doc, game: AdversarialGame) -> list[Error]:
    errors: list[Error] = []
    for loc, ref in model_and_data_refs(game.spec, ("spec",)):
        local = ref[len("file://") :] if ref.startswith("file://") else ref
        if "://" in local or local.startswith(("builtin:", "tiny-random")):
            continue  # fetched or built when the phase runs
        found = Path(local).expanduser()
        if not found.exists():
            errors.append((doc.line(loc), _path(loc), f"no such file or folder: {local!r}"))
        elif loc[-1] == "path" and found.is_file() and not DATA_FILE_TYPES.search(found.name):
            message = f"unsupported file type: use {DATA_FILE_HINT}, or a folder saved by datasets"
            errors.append((doc.line(loc), _path(loc), message))
    return errors


def model_and_data_refs(model: BaseModel, loc: Loc) -> list[tuple[Loc, str]]:
    """(location, reference) of every model, tokenizer and data path under model, located by
    the camelCase keys a user writes."""
    found: list[tuple[Loc, str]] = []
    for attr, info in type(model).model_fields.items():
        value, here = getattr(model, attr), (*loc, info.alias or attr)
        is_model = isinstance(model, ModelSpec) and attr in ("model", "tokenizer")
        if (is_model or (isinstance(model, DataSource) and attr == "path")) and value:
            found.append((here, value))
        elif isinstance(value, BaseModel):
            found += model_and_data_refs(value, here)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found += model_and_data_refs(item, (*here, i))
    return found


# "field.path[2].name: message", as the models' own validators word their errors.
_FIELD_FIRST = re.compile(r"^([a-z]\w*(?:\[\d+\])*(?:\.[a-z]\w*(?:\[\d+\])*)*): (.+)$")


def _pydantic_error(doc: _Doc, err: Any, root: type[BaseModel]) -> Error:
    loc: Loc = tuple(err["loc"])
    message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    whole = not loc or isinstance(err.get("input"), dict)
    if whole and (m := _FIELD_FIRST.match(message)):
        # A validator on a whole object names the field (below it) at the start of its
        # message: point at that field's line, not the object's.
        parts = re.findall(r"[A-Za-z]\w*|\[\d+\]", m[1])
        loc = (*loc, *(int(p[1:-1]) if p.startswith("[") else p for p in parts))
        message = m[2]
    if err["type"] == "extra_forbidden":
        message = "unknown field" + _suggest(loc, root)
    elif err["type"] == "missing":
        message = "required field is missing"
    elif not err["type"].startswith(("value_error", "assertion_error")) and isinstance(
        err.get("input"), (str, int, float, bool)
    ):
        message += f" (got {err['input']!r:.60})"
    return doc.line(loc), _path(loc, root), message


# --- pydantic locations -> camelCase paths -------------------------------------------------


def _path(loc: Loc, root: type[BaseModel] = AdversarialGame) -> str:
    """('spec', 'game', 'sampling', 'samples_per_query') -> spec.game.sampling.samplesPerQuery.

    A loc holds keys as the user wrote them (snake_case works too); walking the models maps
    field names to their aliases, list indices to [i], and leaves dict keys alone."""
    out, tp = "", _unwrap(root)
    for part in loc:
        name, tp = _child(tp, part)
        if not name.startswith("[") and not name.replace("_", "").replace("-", "").isalnum():
            name = json.dumps(name)  # an odd key (empty, spaces, newlines) stays on one line
        out += name if name.startswith("[") or not out else f".{name}"
    return out


def _child(tp: Any, part: str | int) -> tuple[str, Any]:
    """(display name, type) one step below tp."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for attr, info in tp.model_fields.items():
            if part in (attr, info.alias):
                return info.alias or attr, _unwrap(info.annotation)
        return str(part), None
    args = get_args(tp)
    if get_origin(tp) is list and isinstance(part, int):
        return f"[{part}]", _unwrap(args[0])
    if get_origin(tp) is dict and args:
        key = str(part)
        return (key if re.fullmatch(r"[\w-]+", key) else f"[{key!r}]"), _unwrap(args[1])
    return (f"[{part}]" if isinstance(part, int) else str(part)), None


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and `| None` to reach the model, list or dict type."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType):
            options = [a for a in get_args(tp) if a is not type(None)]
            if len(options) != 1:
                return None
            tp = options[0]
        else:
            return tp


def _suggest(loc: Loc, root: type[BaseModel]) -> str:
    parent: Any = _unwrap(root)
    for part in loc[:-1]:
        parent = _child(parent, part)[1]
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return ""
    known = [info.alias or attr for attr, info in parent.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
