"""Running a kopf operator in-process against the harness (``kopf.testing.KopfRunner``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf.testing
from kopf._core.intents.registries import OperatorRegistry, SmartOperatorRegistry


def new_kopf_registry() -> OperatorRegistry:
    """A fresh registry for each ``KopfRunner(..., registry=...)``, so that the handlers of an
    operator module loaded by an earlier test do not fire twice. It has to be the "smart" one
    (``kopf.OperatorRegistry()`` is not): only that one comes with kopf's default login
    handlers (``login_via_client``), without which kopf finds no credentials at all."""
    return SmartOperatorRegistry()


def kopf_runner(
    *targets: str | Path, namespace: str = "default", extra: tuple[str, ...] = (), **kwargs: Any
) -> kopf.testing.KopfRunner:
    """``kopf run --standalone --namespace NS --verbose TARGETS`` in a thread, with a fresh
    registry; needs ``KUBECONFIG`` pointing at the harness (the ``kube_env`` fixture).
    Targets are file paths, or ``-m module`` pairs given as separate strings."""
    args = ["run", "--standalone", "--namespace", namespace, "--verbose", *extra]
    args += [str(target) for target in targets]
    kwargs.setdefault("timeout", 30)
    return kopf.testing.KopfRunner(args, registry=new_kopf_registry(), **kwargs)
