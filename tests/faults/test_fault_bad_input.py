"""Bad input, fuzzed: game specs, data rows and game files never crash anything.

Hypothesis (bounded: tens of examples each, no deadline) builds game documents by mutating the
valid examples/apo-minimal.yaml (wrong types, huge ints and floats, NaN/inf, unicode, empty
strings and lists, names at and over the 36-character limit, nested garbage, deleted and unknown
keys) and from scratch. The guarantees:
* `validate.check_file` never raises: it returns one-line errors, each naming the file (and the
  line and camelCase field path where there is one);
* `AdversarialGame.model_validate` raises nothing but ValidationError;
* the operator's reconcile turns any invalid spec into status Failed/InvalidSpec naming the
  field, with no Job, through the harness API server (in-process `Reconciler`, and the
  operator process for a few garbage games);
* `data.read_preferences` raises nothing but DataError naming the file (and line);
* the trainer CLI exits 3 ("bad input": no retry) with an error line, never a traceback.
Inputs that broke the parsers when first fuzzed (integers over 4300 digits, nesting deeper than
the recursion limit, NUL characters, bytes that are not UTF-8) are pinned in tables.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultops import condition
from harness.gameops import GROUP, PLURAL, ROOT, VERSION, Operator, get
from harness.rawclient import wait_for
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from pydantic import ValidationError
from sparring_operator.api import MAX_GAME_NAME, AdversarialGame, AdversarialGameStatus
from sparring_operator.reconcile import Reconciler
from sparring_operator.refusals import invalid_spec_status
from sparring_operator.validate import check_file
from sparring_trainer.config import DataSource
from sparring_trainer.data import DataError, read_preferences

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,  # each example uses its own names and files
    ],
)
BASE = yaml.safe_load((ROOT / "examples" / "apo-minimal.yaml").read_text())
EXIT_BAD_INPUT = 3

# ---- strategies ---------------------------------------------------------------------------

text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
names = st.sampled_from(
    [
        "a" * MAX_GAME_NAME,
        "a" * (MAX_GAME_NAME + 1),
        "a" * 63,
        "",
        "-a",
        "A",
        "a_b",
        "ünï",
        "a/b",
        "..",
        "a" * 300,
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    names,
    st.sampled_from(["", "..", "../../etc/passwd", "/abs/path", "s3://../x", "file://..", "0"]),
)
garbage = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*at, i))
    return found


PATHS = [*_paths(BASE)[1:], ("metadata", "name"), ("spec", "storage", "uri")]


@st.composite
def game_docs(draw: st.DrawFn) -> Any:
    """A valid game with 1-3 mutations, or (sometimes) garbage from scratch."""
    if draw(st.integers(0, 9)) == 0:
        return draw(garbage)
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = doc
        for part in path[:-1]:
            if not isinstance(parent, (dict, list)):
                break
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                break
        else:
            action = draw(st.sampled_from(["replace", "delete", "unknown-key"]))
            key = path[-1]
            if isinstance(parent, dict):
                if action == "delete":
                    parent.pop(key, None)
                elif action == "unknown-key":
                    parent[draw(text)] = draw(garbage)
                else:
                    parent[key] = draw(garbage | names)
            elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
                parent[key] = draw(garbage)
    return doc


def _dump(doc: Any, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(doc)
    return yaml.safe_dump(doc, allow_unicode=True)


# ---- game files and specs -----------------------------------------------------------------


@FUZZ
@given(doc=game_docs(), suffix=st.sampled_from([".yaml", ".json"]))
def test_check_file_never_raises_and_names_file_and_field(
    tmp_path: Path, doc: Any, suffix: str
) -> None:
    path = tmp_path / f"game{suffix}"
    path.write_text(_dump(doc, suffix), encoding="utf-8")
    # The schema's verdict alone: fuzzed model paths name no file here, which the local-file
    # check (tested in test_validate) would add to.
    report = check_file(path, local_files=False)
    assert bool(report.errors) != bool(report.games)
    for error in report.errors:
        assert "\n" not in error
        assert re.match(rf"{re.escape(str(path))}(:\d+(:\d+)?)?: \S", error), error
    try:
        AdversarialGame.model_validate(doc)
        valid = True
    except ValidationError:
        valid = False
    assert valid == bool(report.games)


@FUZZ
@given(doc=game_docs())
def test_model_validate_raises_only_validation_error(doc: Any) -> None:
    with contextlib.suppress(ValidationError):
        AdversarialGame.model_validate(doc)


PARSER_BREAKERS = {
    "int-over-4300-digits.yaml": "apiVersion: sparring.dev/v1alpha1\nspec:\n  rounds: "
    + "1" * 5000,
    "int-over-4300-digits.json": '{"spec": {"rounds": ' + "1" * 5000 + "}}",
    "deep.yaml": "spec: " + "[" * 5000 + "]" * 5000,
    "deep.json": '{"spec": ' + "[" * 5000 + "]" * 5000 + "}",
    "nul.yaml": "apiVersion: sparring.dev/v1alpha1\nkind: \x00\n",
    "not-utf8.yaml": b"apiVersion: \xff\xfe\n",
}


@pytest.mark.parametrize("name", sorted(PARSER_BREAKERS))
def test_check_file_reports_inputs_that_break_the_parsers(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    content = PARSER_BREAKERS[name]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    [error] = check_file(path).errors
    assert error.startswith(f"{path}: ") and "\n" not in error


def test_invalid_spec_status_is_failed_and_keeps_history() -> None:
    old = AdversarialGameStatus(completed_rounds=2, latest_checkpoint="s3://b/p/")
    status = invalid_spec_status("invalid spec: spec.rounds: bad", old, 0.0, 3)
    assert status.phase == "Failed" and status.message == "invalid spec: spec.rounds: bad"
    assert status.completed_rounds == 2 and status.latest_checkpoint == "s3://b/p/"
    reasons = {c.type: (c.status, c.reason) for c in status.conditions}
    assert reasons["Failed"] == ("True", "InvalidSpec") and reasons["Ready"][0] == "False"


_counter = itertools.count()


def _create_raw(
    api: Any, name: str, spec: Any, field_validation: str = "Warn"
) -> dict[str, Any] | ApiException:
    """A game sent straight to the API server, with no client-side check: what a hand-written
    manifest could hold. Returns the stored object (after the CRD's schema has pruned and
    defaulted it), or the API server's refusal."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AdversarialGame"}
    body |= {"metadata": {"name": name}, "spec": spec}
    custom = k8s.CustomObjectsApi(api.client)
    try:
        return dict(
            custom.create_namespaced_custom_object(
                GROUP, VERSION, api.namespace, PLURAL, body, field_validation=field_validation
            )
        )
    except ApiException as err:
        assert err.status in (400, 422), err  # refused as invalid, not an error of the server
        return err
    except ValueError as err:  # NaN/inf: not JSON at all, refused before it leaves the client
        return ApiException(status=400, reason=str(err))


@settings(FUZZ, max_examples=40)
@given(doc=game_docs(), long_name=st.booleans())
def test_reconcile_fails_any_invalid_spec_with_the_field_named_and_no_jobs(
    kube_api: Any, doc: Any, long_name: bool
) -> None:
    spec = doc.get("spec") if isinstance(doc, dict) else doc
    name = f"fuzz-{next(_counter)}" + ("-x" * 20 if long_name else "")
    meta = {"name": name, "namespace": kube_api.namespace}
    whole = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AdversarialGame", "metadata": meta}
    try:
        AdversarialGame.model_validate({**whole, "spec": spec or {}})
        assume(False)  # a valid spec would start a game: not this test's subject
    except ValidationError:
        pass
    body = _create_raw(kube_api, name, spec)
    if isinstance(body, ApiException):
        return  # the CRD's schema or CEL rules refused it at apply time: nothing to play
    try:
        AdversarialGame.model_validate(body)
        return  # the server pruned or defaulted it into a valid game (e.g. `rounds: null`)
    except ValidationError:
        pass
    decision = Reconciler(kube_api.client).reconcile(body)
    status = decision.status
    assert status.phase == "Failed" and not decision.actions
    assert status.message is not None and status.message.startswith("invalid spec: ")
    assert len(status.message) < 3000  # a garbage spec must not blow up the resource
    failed = {c.type: c for c in status.conditions}["Failed"]
    assert (failed.status, failed.reason) == ("True", "InvalidSpec")
    if long_name:
        assert "metadata.name" in status.message
    stored = kube_api.get(f"{GROUP}/{VERSION}/{PLURAL}", name)
    assert stored["status"]["phase"] == "Failed"
    assert not kube_api.list("batch/v1/jobs")
    configmaps = [c["metadata"]["name"] for c in kube_api.list("v1/configmaps")]
    assert set(configmaps) <= {"kube-root-ca.crt"}, configmaps  # the cluster's own only


def test_reconcile_status_stays_small_for_a_spec_of_thousands_of_unknown_keys(
    kube_api: Any,
) -> None:
    unknown = {f"unknown-key-number-{i}": i for i in range(3000)}
    # (Ignore: with the default, Warn, the server sends one Warning header per unknown field.)
    stored = _create_raw(kube_api, "many-keys", BASE["spec"] | unknown, field_validation="Ignore")
    assert not isinstance(stored, ApiException), stored
    # The real API server prunes fields its structural schema does not know...
    assert not set(unknown) & set(stored["spec"])
    # ...but an object from before a schema change, or read through another path, may still
    # carry them: the operator's message about them stays bounded.
    body = stored | {"spec": stored["spec"] | unknown}
    status = Reconciler(kube_api.client).reconcile(body).status
    assert status.phase == "Failed" and status.message is not None
    assert "spec.unknown-key-number-0: Extra inputs" in status.message
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.message.endswith("and 2990 more") and len(failed.message) < 3000
    assert len(status.message) <= 160  # the `kubectl get` column: the first part, cut short


def test_operator_fails_garbage_games_naming_the_field_and_creates_nothing(
    kube_env: Any, operator: Operator
) -> None:
    """Garbage sent straight to the API: each case is refused by the API server (the CRD's
    schema and CEL rules) or reaches the operator and fails naming the field; none is played."""
    valid = copy.deepcopy(BASE["spec"])
    cases = {
        "not-a-mapping": ("a string, not a spec", "spec"),
        "rounds-words": (valid | {"rounds": "many"}, "spec.rounds"),
        "uri-dotdot": (
            valid | {"storage": {"uri": "s3://bucket/../other-team"}},
            "spec.storage.uri",
        ),
        "nan-temperature": (
            valid | {"game": valid["game"] | {"sampling": {"temperature": float("nan")}}},
            "looking for beginning of value",  # NaN is not JSON: the server cannot parse it
        ),
        "a" * (MAX_GAME_NAME + 1): (valid, "metadata.name"),
    }
    refused = {}
    for name, (spec, _) in cases.items():
        reply = _create_raw(kube_env, name, spec)
        if isinstance(reply, ApiException):
            refused[name] = f"{reply.reason} {reply.body}"
    for name, (_, field) in cases.items():
        if name in refused:
            assert field in refused[name], (name, refused[name])
            continue
        obj = wait_for(
            lambda n=name: (
                (get(kube_env, n).get("status") or {}).get("phase") == "Failed" and get(kube_env, n)
            ),
            60,
            message=operator.tail,
        )
        assert condition(obj, "Failed")["reason"] == "InvalidSpec"
        assert field in obj["status"]["message"], obj["status"]["message"]
    assert refused, "the API server refused none of the garbage: is the CRD's schema there?"
    assert not kube_env.list("batch/v1/jobs")
    configmaps = [c["metadata"]["name"] for c in kube_env.list("v1/configmaps")]
    assert set(configmaps) <= {"kube-root-ca.crt"}, configmaps  # the cluster's own only
    assert "Traceback" not in operator.log.read_text()


# ---- data rows ----------------------------------------------------------------------------

turns = st.sampled_from(["\n\nHuman: ", "\n\nAssistant: ", "Human:", "Assistant:", "\n", ""])
transcripts = st.lists(turns | text, max_size=6).map("".join)
rows = st.fixed_dictionaries({"chosen": transcripts, "rejected": transcripts}) | garbage
lines = rows.map(lambda r: json.dumps(r).encode()) | text.map(str.encode) | st.binary(max_size=30)


@FUZZ
@given(content=st.lists(lines, max_size=6), strict=st.booleans())
def test_read_preferences_raises_only_data_error_naming_file_and_line(
    tmp_path: Path, content: list[bytes], strict: bool
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(content))
    try:
        pairs = read_preferences(DataSource(path=str(path)), strict=strict)
    except DataError as exc:
        assert re.match(rf"{re.escape(str(path))}(:\d+)?: \S", str(exc)), str(exc)
    else:
        assert pairs and all(p.origin.startswith(f"{path}:") for p in pairs)


@pytest.mark.parametrize("line", ['{"chosen": ' + "1" * 5000 + "}", "[" * 5000 + "]" * 5000])
def test_read_preferences_rows_that_break_the_json_parser(tmp_path: Path, line: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=f"{re.escape(str(path))}:1: "):
        read_preferences(DataSource(path=str(path)))


# ---- the trainer CLI ----------------------------------------------------------------------


@settings(FUZZ, max_examples=60)
@given(doc=game_docs(), form=st.sampled_from(["yaml", "json", "bytes"]), raw=st.binary())
def test_trainer_cli_exits_bad_input_with_an_error_line_never_a_traceback(
    tmp_path: Path, doc: Any, form: str, raw: bytes
) -> None:
    from sparring_trainer.__main__ import main

    game = tmp_path / "game.yaml"
    if form == "bytes":
        game.write_bytes(raw)
    else:
        game.write_text(_dump(doc, f".{form}"), encoding="utf-8")
    termination = tmp_path / "termination-log"
    err = io.StringIO()
    saved = os.environ.get("SPARRING_TERMINATION_LOG")
    os.environ["SPARRING_TERMINATION_LOG"] = str(termination)
    try:
        # `sample` cannot run in round 0: a file that does load fails there (PhaseError, also
        # exit 3) before anything touches a store.
        with contextlib.redirect_stderr(err):
            code = main(["sample", "--game", str(game), "--round", "0"])
    finally:
        if saved is None:
            os.environ.pop("SPARRING_TERMINATION_LOG", None)
        else:
            os.environ["SPARRING_TERMINATION_LOG"] = saved
    out = _without_stages(err.getvalue())
    assert code == EXIT_BAD_INPUT, out
    assert out.startswith("error: sample round 0 failed: ") and "Traceback" not in out
    assert all(line.startswith(("error: ", str(game))) for line in out.splitlines()), out
    assert json.loads(termination.read_text())["exitCode"] == EXIT_BAD_INPUT


def _without_stages(err: str) -> str:
    """stderr without the phase's progress lines (`[PHASE] stage: ...`, sparring_trainer.stages):
    what is left is what it says of the error."""
    return "".join(line for line in err.splitlines(keepends=True) if "] stage: " not in line)


def test_trainer_cli_process_reports_an_unreadable_game_file_in_one_line(tmp_path: Path) -> None:
    """The real `python -m sparring_trainer` on a file that is not UTF-8 (one process: each
    start imports transformers; the in-process fuzz above covers every other kind)."""
    procs = {}
    for name in ("not-utf8.yaml",):
        content = PARSER_BREAKERS[name]
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sparring_trainer",
                "sample",
                "--game",
                str(path),
                "--round",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        err = _without_stages(err)
        assert proc.returncode == EXIT_BAD_INPUT, (name, err[-2000:])
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"error: sample round 1 failed: {tmp_path / name}: ")
