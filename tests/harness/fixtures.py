"""pytest fixtures of the test bed, registered by ``tests/conftest.py``.

* ``control_plane`` (session): the real control plane (``controlplane.py``): etcd,
  kube-apiserver, kube-controller-manager and the process kubelet, with the CRD from ``crds/``
  installed and established. Started once per session (about 6 s).
* ``kube`` / ``kube_env``: one test's :class:`harness.cluster.Kube`, a fresh namespace labelled
  ``pod-security.kubernetes.io/enforce=restricted``; deleted at teardown. ``kube_env`` also
  points ``KUBECONFIG`` at the admin kubeconfig for in-process clients.
* ``kubelet``: a :class:`harness.nodeview.NodeView` of the node (running pods, crashes,
  evictions).
* ``operator``: ``sparring operator`` as a child process watching the test's namespace,
  authenticated as the chart's ServiceAccount under the chart's RBAC, through the fault proxy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config.kube_config
import pytest
import yaml
from sparring_trainer.document import StorageSpec

from . import chartops
from .cluster import Kube, delete_namespace, new_namespace
from .controlplane import ROOT, ControlPlane, write_kubeconfig
from .gameops import Operator, apo_tiny, create_secret
from .nodeview import NodeView
from .rawclient import wait_for

CRD = ROOT / "crds" / "adversarialgames.sparring.dev.yaml"
CRDS = sorted((ROOT / "crds").glob("*.yaml"))  # the game's and the runtimes'
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def install_crd(client: kubernetes.client.ApiClient, path: Path = CRD) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(client)
    crd = yaml.safe_load(path.read_text())
    try:
        ext.create_custom_resource_definition(crd)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:  # 409: installed already (by the session or another test)
            raise

    def established() -> bool:
        obj = ext.read_custom_resource_definition(crd["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in obj.status.conditions or []
        )

    wait_for(established, 30, message="the CRD was never Established")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("kube")).start()
    try:
        client = kubernetes.config.new_client_from_config(
            config_file=str(plane.kubeconfig), persist_config=False
        )
        for crd in CRDS:
            install_crd(client, crd)
        core = kubernetes.client.CoreV1Api(client)
        wait_for(lambda: core.list_node().items, 60, message="the process kubelet never registered")
        client.close()
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def kube(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Kube]:
    admin = kubernetes.config.new_client_from_config(
        config_file=str(control_plane.kubeconfig), persist_config=False
    )
    namespace = new_namespace(kubernetes.client.CoreV1Api(admin), **RESTRICTED)
    admin.close()
    kube = Kube(control_plane, namespace, tmp_path)
    try:
        yield kube
    finally:
        delete_namespace(kube)
        kube.close()


@pytest.fixture
def kube_api(kube: Kube) -> Kube:
    """The old stand-in's name for `kube`: tests that only need the API and a namespace."""
    return kube


@pytest.fixture
def kube_env(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> Kube:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    # kubernetes.config reads $KUBECONFIG once, at import: load_kube_config() with no argument
    # uses this module variable.
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube.kubeconfig)
    )
    return kube


@pytest.fixture
def kubelet(kube: Kube, control_plane: ControlPlane) -> NodeView:
    return NodeView(kube, control_plane.root / "kubelet")


def operator_kubeconfig(kube: Kube, path: Path, release: str = "") -> tuple[Path, str]:
    """A kubeconfig for the chart's operator ServiceAccount in the test's namespace, through
    the fault proxy; returns it and the ServiceAccount's username."""
    release = release or f"op-{kube.namespace}"
    user, token = chartops.apply_identity(kube.client, kube.namespace, release)
    proxy = kube.start_proxy()
    return write_kubeconfig(path, proxy.url, kube.plane.pki.ca_crt, None, None, token), user


@contextlib.contextmanager
def running_operator(
    kube_env: Kube, tmp_path: Path, resync_seconds: float = 1.0, env: dict[str, str] | None = None
) -> Iterator[Operator]:
    """`sparring operator` as a child process (kill/restart at will) watching the test's
    namespace as the chart's ServiceAccount."""
    release = f"op-{kube_env.namespace}"
    kubeconfig, user = operator_kubeconfig(kube_env, tmp_path / "operator.kubeconfig", release)
    op = Operator(
        kubeconfig, tmp_path / "operator.log", namespace=kube_env.namespace,
        resync_seconds=resync_seconds, env=env,
    )  # fmt: skip
    op.user = user
    op.start()
    try:
        yield op
    finally:
        op.kill()
        chartops.delete_cluster_objects(kube_env.client, release)


@pytest.fixture
def operator(kube_env: Kube, tmp_path: Path) -> Iterator[Operator]:
    with running_operator(kube_env, tmp_path) as op:
        yield op


@pytest.fixture
def s3_game(s3_storage: StorageSpec, kube_env: Kube) -> dict[str, Any]:
    """apo-tiny (2 rounds) as a resource, storing in moto with credentials from a Secret."""
    create_secret(kube_env, "s3-credentials", "testing", "testing")
    return apo_tiny(s3_storage)
