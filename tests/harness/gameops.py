"""Helpers of the operator tests (e2e, faults, security, RBAC): the operator as a process, the
tiny game as a resource on S3, and calls on game resources."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from sparring_trainer.document import StorageSpec

from .rawclient import wait_for

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "sparring.dev", "v1alpha1", "adversarialgames"
GAME_TIMEOUT = 420.0
PHASES = ("sample", "update-adversary", "score", "update-policy", "evaluate")
# What a container needs to be admitted where Pod Security "restricted" is enforced.
RESTRICTED_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


class Operator:
    """The operator as a child process with its log in a file; restartable."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        metrics_port: int = 0,
        namespace: str = "default",
        resync_seconds: float = 1.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig, self.log, self.metrics_port = kubeconfig, log, metrics_port
        self.env = env or {}  # e.g. SPARRING_DEFAULT_RUNTIME
        self.namespace, self.resync_seconds = namespace, resync_seconds
        self.user = ""  # the Kubernetes username it authenticates as, where known
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "SPARRING_RESYNC_SECONDS": f"{self.resync_seconds:g}",
            **self.env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sparring_operator",
                    "operator",
                    "--namespace",
                    self.namespace,
                    "--metrics-port",
                    str(self.metrics_port),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def create(api: Any, doc: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(api.client).create_namespaced_custom_object(
        GROUP, VERSION, api.namespace, PLURAL, doc
    )


def get(api: Any, name: str) -> dict[str, Any]:
    obj = k8s.CustomObjectsApi(api.client).get_namespaced_custom_object(
        GROUP, VERSION, api.namespace, PLURAL, name
    )
    return dict(obj)


def patch_spec(api: Any, name: str, spec: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(api.client).patch_namespaced_custom_object(
        GROUP, VERSION, api.namespace, PLURAL, name, {"spec": spec}
    )


def wait_phase(
    api: Any, name: str, phase: str, op: Operator, timeout: float = GAME_TIMEOUT
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = get(api, name)
        status = obj.get("status") or {}
        if status.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"game failed: {status.get('message')}\n{op.tail()}")
        return obj if status.get("phase") == phase else None

    return wait_for(
        reached,
        timeout,
        message=lambda: (
            f"{name} never reached {phase}:\n{get(api, name).get('status')}\n{op.tail()}"
        ),
    )


def jobs(api: Any, game: str) -> list[dict[str, Any]]:
    return [dict(j) for j in api.list("batch/v1/jobs", None, f"sparring.dev/game={game}")]


def create_secret(
    api: Any, name: str, key_id: str, secret_key: str, namespace: str | None = None
) -> None:
    k8s.CoreV1Api(api.client).create_namespaced_secret(
        namespace or api.namespace,
        {
            "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key},
        },
    )


def apo_tiny(
    storage: StorageSpec, secret: str = "s3-credentials", rounds: int = 2
) -> dict[str, Any]:
    """examples/apo-tiny.yaml as a resource storing in `storage` with a secretRef, and quick
    retries (backoff 1 s) so that fault tests do not wait."""
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["rounds"] = rounds
    doc["spec"]["storage"] = {
        "uri": storage.uri,
        "endpoint": storage.endpoint,
        "pathStyle": True,
        "secretRef": {"name": secret},
    }
    doc["spec"]["phases"] = {"default": {"retry": {"limit": 2, "backoffSeconds": 1}}}
    return dict(doc)
