"""Fixtures of the operator e2e tests: the operator process and a game stored in moto S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gameops import ROOT, Operator
from kubernetes import client as k8s
from sparring_trainer.config import StorageSpec


@pytest.fixture
def operator(kube_env: Any, kubelet: Any, tmp_path: Path) -> Iterator[Operator]:
    op = Operator(kube_env.kubeconfig, tmp_path / "operator.log").start()
    yield op
    op.kill()


@pytest.fixture
def s3_game(s3_storage: StorageSpec, kube_env: Any) -> dict[str, Any]:
    """apo-tiny as a resource, storing in moto with credentials from a Secret."""
    k8s.CoreV1Api(kube_env.client).create_namespaced_secret(
        "default",
        {
            "metadata": {"name": "s3-credentials"},
            "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        },
    )
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"] = {
        "uri": s3_storage.uri,
        "endpoint": s3_storage.endpoint,
        "pathStyle": True,
        "secretRef": {"name": "s3-credentials"},
    }
    doc["spec"]["phases"] = {"default": {"retry": {"limit": 2, "backoffSeconds": 1}}}
    return dict(doc)
