"""The same end-to-end game on a real cluster (kind, k3d, a lab cluster). Skipped unless given:

    SPARRING_TEST_KUBECONFIG      kubeconfig of the cluster (namespace: SPARRING_TEST_NAMESPACE,
                                  default "default")
    SPARRING_TEST_TRAINER_IMAGE   an image built from images/trainer, loadable by the cluster
    SPARRING_TEST_S3_URI          s3://bucket[/prefix] (the bucket must exist)
    SPARRING_TEST_S3_ENDPOINT     S3 endpoint reachable from pods AND from this machine
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   put into a Secret for the game

    SPARRING_TEST_KUBECONFIG=~/.kube/config ... .venv/bin/pytest -m cluster tests/cluster

The operator runs here (out of cluster) against that kubeconfig; the phases run as real Jobs.
It can be re-run against the same cluster: the CRD is applied (created, or replaced when it
exists), and each run makes its own Secret and game and deletes both afterwards. The control
plane of `scripts/kube up` serves as such a cluster too (any image name will do there: the
process kubelet runs commands from this project's environment).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("SPARRING_TEST_KUBECONFIG", "SPARRING_TEST_TRAINER_IMAGE", "SPARRING_TEST_S3_URI",
          "SPARRING_TEST_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # fmt: skip

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not all(os.environ.get(v) for v in NEEDED),
        reason="real-cluster suite: set " + ", ".join(NEEDED),
    ),
]


def test_apo_tiny_on_a_real_cluster(tmp_path: Path) -> None:
    from kubernetes import client, config

    kubeconfig = os.path.expanduser(os.environ["SPARRING_TEST_KUBECONFIG"])
    namespace = os.environ.get("SPARRING_TEST_NAMESPACE", "default")
    api = config.new_client_from_config(config_file=kubeconfig)
    crd = yaml.safe_load((ROOT / "crds" / "adversarialgames.sparring.dev.yaml").read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(crd)
    except client.ApiException as err:
        if err.status != 409:
            raise
        # A re-run: bring the CRD to this checkout's version.
        crd["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(
            crd["metadata"]["name"]
        ).metadata.resource_version
        ext.replace_custom_resource_definition(crd["metadata"]["name"], crd)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    created = core.create_namespaced_secret(namespace, {
        "metadata": {"generateName": "sparring-s3-"},
        "stringData": {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    })  # fmt: skip
    secret = created.metadata.name  # by name: other Secrets of the namespace are not ours
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    name = f"apo-tiny-{int(time.time())}"
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"]["storage"] = {"uri": os.environ["SPARRING_TEST_S3_URI"],
                              "endpoint": os.environ["SPARRING_TEST_S3_ENDPOINT"],
                              "pathStyle": True, "secretRef": {"name": secret}}  # fmt: skip
    env = {**os.environ, "KUBECONFIG": kubeconfig, "SPARRING_RESYNC_SECONDS": "5",
           "SPARRING_TRAINER_IMAGE": os.environ["SPARRING_TEST_TRAINER_IMAGE"]}  # fmt: skip
    log = (tmp_path / "operator.log").open("wb")
    operator = subprocess.Popen(
        [sys.executable, "-m", "sparring_operator", "operator", "--namespace", namespace],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        custom.create_namespaced_custom_object(
            "sparring.dev", "v1alpha1", namespace, "adversarialgames", doc
        )
        deadline = time.monotonic() + 1800
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            obj = custom.get_namespaced_custom_object(
                "sparring.dev", "v1alpha1", namespace, "adversarialgames", name
            )
            status = dict(obj.get("status") or {})
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(5)  # a real cluster: polling the resource, bounded by the deadline
        assert status.get("phase") == "Succeeded", status
        assert status.get("completedRounds") == 2
    finally:
        operator.terminate()
        operator.wait(30)
        with contextlib.suppress(client.ApiException):
            custom.delete_namespaced_custom_object(
                "sparring.dev", "v1alpha1", namespace, "adversarialgames", name
            )
        core.delete_namespaced_secret(secret, namespace)
