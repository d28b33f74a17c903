"""A real Prometheus scrapes the operator during a game: the game's round and metrics are
queryable, the running phase's progress shows, and a deleted game's series disappear."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import chartops
from harness.fixtures import operator_kubeconfig
from harness.gameops import GROUP, PLURAL, VERSION, Operator, create, wait_phase
from harness.rawclient import wait_for
from kubernetes import client as k8s

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs the Debian package prometheus (scripts/test installs it)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: sparring-operator\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--query.lookback-delta=5s",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture
def monitored(kube_env: Any, kubelet: Any, tmp_path: Path) -> Iterator[tuple[Operator, Prometheus]]:
    port = free_port()
    kubeconfig, user = operator_kubeconfig(kube_env, tmp_path / "operator.kubeconfig")
    op = Operator(kubeconfig, tmp_path / "operator.log", port, namespace=kube_env.namespace)
    op.user = user
    op.start()
    prom = Prometheus(tmp_path, f"127.0.0.1:{port}")
    try:
        wait_for(prom.ready, 60, message="prometheus never became ready")
        yield op, prom
    finally:
        prom.stop()
        op.kill()
        chartops.delete_cluster_objects(kube_env.client, f"op-{kube_env.namespace}")


def test_prometheus_sees_the_game_and_forgets_it_when_deleted(
    kube_env: Any, monitored: tuple[Operator, Prometheus], s3_game: dict[str, Any]
) -> None:
    op, prom = monitored
    s3_game["spec"]["rounds"] = 1
    create(kube_env, s3_game)
    wait_phase(kube_env, "apo-tiny", "Succeeded", op)
    # (The running phase's progress in status and as a gauge is tested deterministically in
    # tests/test_progress.py: tiny phases finish too fast to catch it here reliably.)

    def scraped(expr: str) -> list[dict[str, Any]] | None:
        return prom.query(expr) or None

    rounds = wait_for(
        lambda: scraped('sparring_game_completed_rounds{name="apo-tiny"} == 1'),
        60,
        message="completed rounds never reached Prometheus",
    )
    assert rounds[0]["metric"]["namespace"] == kube_env.namespace
    accuracy = wait_for(
        lambda: scraped('sparring_game_metric{name="apo-tiny",metric="rm_accuracy"}'),
        30,
        message="round metrics never reached Prometheus",
    )
    assert 0.0 <= float(accuracy[0]["value"][1]) <= 1.0
    assert scraped('sparring_game_status{name="apo-tiny",phase="Succeeded"} == 1')
    assert scraped("sparring_phase_duration_seconds_count > 0")
    assert scraped("sparring_build_info")

    k8s.CustomObjectsApi(kube_env.client).delete_namespaced_custom_object(
        GROUP, VERSION, kube_env.namespace, PLURAL, "apo-tiny"
    )
    wait_for(
        lambda: not prom.query('sparring_game_status{name="apo-tiny"}'),
        60,
        message="the deleted game's series are still there",
    )
    assert not prom.query('sparring_game_metric{name="apo-tiny"}')
