"""Shared fixtures: a local S3 server (moto_server on 127.0.0.1) and storage specs for it and for
a temporary directory. Nothing here touches the network beyond the loopback interface."""

from __future__ import annotations

import os
import re

# Before torch/numpy can be imported by any test module: one thread each keeps CI predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sparring_trainer.document import StorageSpec

# Set by .ci/run (epoch seconds): no slow test starts after it, so CI's fixed time budget is
# never overrun; each one skipped that way is reported as such, by name.
DEADLINE_ENV = "SPARRING_SLOW_DEADLINE"

_DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}

# The Kubernetes API stand-in and the test kubelet (tests/harness/).
pytest_plugins = ["harness.fixtures"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll `url` until any HTTP answer comes back; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # an HTTP error status still means the server is up
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"moto_server did not answer at {url} within {timeout:.0f} s:\n"
                    f"{log.read_text()}"
                ) from None
            time.sleep(0.05)


_S3_LOGS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL (``http://127.0.0.1:PORT``) of a moto S3 server running for the session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    _S3_LOGS[f"http://127.0.0.1:{port}"] = log
    env = {**os.environ, **_DUMMY_CREDENTIALS}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(f"{url}/moto-api/", proc, log, timeout=30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_requests(s3_server: str) -> Callable[[], list[str]]:
    """The S3 server's access log so far, one "METHOD /bucket/key" per request (moto logs
    every request it answers): what reached the store, as the store saw it."""
    log = _S3_LOGS[s3_server]

    def read() -> list[str]:
        return re.findall(r'"([A-Z]+ /\S*) HTTP/', log.read_text(errors="replace"))

    return read


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials in the environment, and no way for boto3 to pick up the developer's
    own profile, config files or instance metadata instead."""
    for name, value in _DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_storage(s3_server: str, aws_credentials: None) -> StorageSpec:
    """A fresh, empty bucket on the session's moto server, as ``s3://<bucket>/prefix``."""
    import boto3

    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    return StorageSpec(uri=f"s3://{bucket}/prefix", endpoint=s3_server, path_style=True)


@pytest.fixture
def file_storage(tmp_path: Path) -> StorageSpec:
    """A store in a fresh temporary directory."""
    return StorageSpec(uri=f"file://{tmp_path / 'store'}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    deadline = os.environ.get(DEADLINE_ENV)
    if deadline and item.get_closest_marker("slow") and time.time() > float(deadline):
        pytest.skip(f"CI's time budget for slow tests is spent (${DEADLINE_ENV})")
