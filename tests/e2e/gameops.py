"""Helpers of the operator e2e tests: the operator as a process, and game resource calls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.rawclient import wait_for
from kubernetes import client as k8s

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "sparring.dev", "v1alpha1", "adversarialgames"
GAME_TIMEOUT = 420.0
PHASES = ("sample", "update-adversary", "score", "update-policy", "evaluate")


class Operator:
    """The operator as a child process with its log in a file; restartable."""

    def __init__(self, kubeconfig: Path, log: Path, metrics_port: int = 0) -> None:
        self.kubeconfig, self.log, self.metrics_port = kubeconfig, log, metrics_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "SPARRING_RESYNC_SECONDS": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sparring_operator",
                    "operator",
                    "--namespace",
                    "default",
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
        GROUP, VERSION, "default", PLURAL, doc
    )


def get(api: Any, name: str) -> dict[str, Any]:
    obj = k8s.CustomObjectsApi(api.client).get_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, name
    )
    return dict(obj)


def patch_spec(api: Any, name: str, spec: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(api.client).patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, name, {"spec": spec}
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
    return [dict(j) for j in api.list("batch/v1/jobs", "default", f"sparring.dev/game={game}")]
