"""`sparring validate` on games and the runtimes they name, given together.

A game that names a runtime (`spec.runtimeRef`) defined in one of the files being validated is
played through the operator's own `runtimes.apply_runtime`, so what the operator would refuse
on the cluster (an image the runtime does not list, a store it does not allow, resources that
break the game's own checks on the runtime) is refused here, at the game's line and field. A
runtime that is not among the files lives on the cluster and is checked there.

Store endpoints are matched against the runtime's `allowedEndpoints` here, but their names are
not resolved: they resolve in the cluster's DNS, not on the machine that validates, so the
link-local check on resolved addresses is the operator's (an IP literal is checked here too).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from sparring_operator.api import AdversarialGame
from sparring_operator.jobs import OperatorSettings
from sparring_operator.runtimeapi import RUNTIME_KIND
from sparring_operator.runtimes import RuntimeRefused, apply_runtime
from sparring_operator.validate import (
    FileReport,
    Loc,
    Runtime,
    _Doc,
    _path,
    _pydantic_error,
    check_file,
)

# A refusal starts with the field ("spec.phases.default.image: ..."); list items as .N or [N].
_REFUSAL = re.compile(r"^(spec(?:\.[A-Za-z]\w*|\.\d+|\[\d+\])*): (.+)$", re.DOTALL)
_NOT_RESOLVED_HERE = "192.0.2.1"  # TEST-NET-1: stands for "resolved by the cluster's DNS"


def check_files(paths: list[Path], local_files: bool = True) -> list[FileReport]:
    """Each file's report, with the games checked on the runtimes the files define."""
    reports = [check_file(path, local_files) for path in paths]
    runtimes: dict[Key, Runtime] = {}
    for report in reports:
        for runtime in report.runtimes:
            meta = runtime.metadata
            runtimes.setdefault(_key(runtime.kind, meta.name, meta.namespace), runtime)
    for report in reports:
        for game, (doc, where) in zip(report.games, report.sources, strict=True):
            for line, field, message in _on_runtime(game, doc, runtimes):
                report.error(line, where, field, message)
        if report.errors:
            report.games, report.runtimes, report.sources = [], [], []
    return reports


Key = tuple[str, str, str | None]


def _key(kind: str, name: str, namespace: str | None) -> Key:
    """How a runtime is found: by name, and by namespace for a SparringRuntime (kubectl puts a
    namespaced resource that names none in `default`)."""
    return kind, name, (namespace or "default") if kind == RUNTIME_KIND else None


def _on_runtime(
    game: AdversarialGame, doc: _Doc, runtimes: dict[Key, Runtime]
) -> list[tuple[int | None, str, str]]:
    ref = game.spec.runtime_ref
    if ref is None:
        return []  # the operator's default runtime: on the cluster
    runtime = runtimes.get(_key(ref.kind, ref.name, game.metadata.namespace))
    if runtime is None:
        elsewhere = [k[2] for k in runtimes if k[:2] == (ref.kind, ref.name)]
        if ref.kind == RUNTIME_KIND and elsewhere:
            message = (
                f"SparringRuntime {ref.name!r} is in namespace {elsewhere[0]!r}; a game uses "
                f"only one of its own namespace ({game.metadata.namespace!r})"
            )
            line = doc.line(("spec", "runtimeRef", "name"))
            return [(line, "spec.runtimeRef.name", message)]
        return []
    label = f"{ref.kind} {ref.name!r}"
    try:
        apply_runtime(game, runtime.spec, label, OperatorSettings(), resolve=_literal_only)
    except RuntimeRefused as exc:
        if exc.errors:  # the game's own checks, on the runtime's settings: each in its place
            return [_pydantic_error(doc, err, AdversarialGame) for err in exc.errors]
        text = " ".join(str(exc).split())
        match = _REFUSAL.match(text)
        if match is None:
            return [(doc.line(("spec", "runtimeRef")), "spec.runtimeRef", text)]
        parts = re.findall(r"[A-Za-z]\w*|\d+", match[1])
        loc: Loc = tuple(int(p) if p.isdigit() else p for p in parts)
        return [(doc.line(loc), _path(loc), match[2])]
    return []


def _literal_only(host: str, port: int) -> list[str]:
    """An IP literal is its own address; a name stands for one the cluster will resolve."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        return [_NOT_RESOLVED_HERE]
