"""pytest fixtures of the harness. Register them in ``tests/conftest.py`` with
``from harness.fixtures import kube_api, kube_env, kubelet  # noqa: F401``
(or ``pytest_plugins = ["harness.fixtures"]``).

* ``kube_api``: a started :class:`harness.KubeApi` (attributes ``url``, ``kubeconfig``,
  ``env``, ``client``, ``requests``, ``fail_next()``, ``drop_watches()``, ...); fresh per test.
  At teardown it fails the test if the harness itself raised (``handler.server_errors``).
* ``kube_env``: ``kube_api`` with ``KUBECONFIG`` pointing at it for this test, for in-process
  kopf (``kopf.testing.KopfRunner``) and ``kubernetes.config.load_kube_config()``.
* ``kubelet``: a started :class:`harness.kubelet.LocalKubelet` against ``kube_api``; at teardown
  it is stopped and every process it started is killed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.config.kube_config
import pytest
from sparring_trainer.config import StorageSpec

from .gameops import Operator, apo_tiny, create_secret
from .kubeapi import KubeApi
from .kubelet import LocalKubelet


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApi]:
    api = KubeApi(tmp_path / "kube-api").start()
    try:
        yield api
    finally:
        api.stop()
    errors = api.handler.server_errors if api.handler is not None else []
    if errors:
        pytest.fail("the harness API server failed internally:\n" + "\n".join(errors))


@pytest.fixture
def kube_env(kube_api: KubeApi, monkeypatch: pytest.MonkeyPatch) -> KubeApi:
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))
    # kubernetes.config reads $KUBECONFIG once, at import: kopf's default login handler
    # (login_via_client) and load_kube_config() with no argument use this module variable.
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube_api.kubeconfig)
    )
    return kube_api


@pytest.fixture
def kubelet(kube_api: KubeApi, tmp_path: Path) -> Iterator[LocalKubelet]:
    node = LocalKubelet(kube_api.kubeconfig, tmp_path / "kubelet").start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def operator(kube_env: KubeApi, kubelet: LocalKubelet, tmp_path: Path) -> Iterator[Operator]:
    """`sparring operator` as a child process against the harness (kill/restart at will)."""
    op = Operator(kube_env.kubeconfig, tmp_path / "operator.log").start()
    yield op
    op.kill()


@pytest.fixture
def s3_game(s3_storage: StorageSpec, kube_env: KubeApi) -> dict[str, Any]:
    """apo-tiny (2 rounds) as a resource, storing in moto with credentials from a Secret."""
    create_secret(kube_env, "s3-credentials", "testing", "testing")
    return apo_tiny(s3_storage)
