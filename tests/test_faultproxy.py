"""The fault proxy of the real-API-server harness, against a tiny HTTPS upstream (no Kubernetes):
what passes through unchanged, what the proxy answers itself, and how watch streams end."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness.controlplane import write_kubeconfig
from harness.faultproxy import FaultProxy, parse_resource

PODS = "/api/v1/namespaces/ns1/pods"
JOBS = "/apis/batch/v1/namespaces/ns1/jobs"
BIG = "/api/v1/namespaces/ns1/configmaps"
BIG_BODY = json.dumps({"items": ["x" * 100] * 3000}).encode()
RESET = "reset"
Pushed = dict[str, Any] | str | None


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# -- the upstream: an HTTPS server with a CA of its own -----------------------------------------
def key_usage(*allowed: str) -> x509.KeyUsage:
    names = "digital_signature content_commitment key_encipherment data_encipherment"
    names += " key_agreement key_cert_sign crl_sign encipher_only decipher_only"
    return x509.KeyUsage(**{name: name in allowed for name in names.split()})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server-key.pem): a CA and a leaf for 127.0.0.1 that it signed."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "faultproxy test CA")])

    def builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    ca = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage("key_cert_sign", "crl_sign"), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class Upstream:
    """Echoes GETs and POSTs; streams on watches what :meth:`push` sends: an event, None (end
    the stream) or RESET (reset the connection)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cert, key)
        self.hits: list[tuple[str, str]] = []  # (method, path?query)
        self.open_watches = 0
        self._queues: set[asyncio.Queue[Pushed]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=[self._serve(sock)], daemon=True
        )
        self._thread.start()
        assert self._ready.wait(10)

    async def _serve(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        server = aiohttp.web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1)
        await runner.setup()
        await aiohttp.web.SockSite(runner, sock, ssl_context=self.tls).start()
        self._ready.set()
        await self._stopping.wait()
        for queue in self._queues:
            queue.put_nowait(None)
        await runner.cleanup()

    def stop(self) -> None:
        assert self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._loop.close()

    def push(self, event: Pushed) -> None:
        def put() -> None:
            for queue in self._queues:
                queue.put_nowait(event)

        self._loop.call_soon_threadsafe(put)

    def watch_hits(self) -> list[str]:
        return [path for _, path in self.hits if "watch=" in path]

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.hits.append((request.method, request.path_qs))
        if request.path == PODS and request.query.get("watch") in ("true", "1"):
            return await self._watch(request)
        if request.path == PODS:
            echo = {
                "authorization": request.headers.get("Authorization"),
                "query": request.rel_url.raw_query_string,
                "user_agent": request.headers.get("User-Agent"),
            }
            response = aiohttp.web.json_response(echo, headers={"Audit-Id": "a1"})
            response.headers.add("Warning", '299 - "one"')
            response.headers.add("Warning", '299 - "two"')
            return response
        if request.path == JOBS and request.method == "POST":
            body = await request.read()
            return aiohttp.web.Response(body=body, status=201, content_type=request.content_type)
        if request.path == BIG:
            response = aiohttp.web.Response(body=BIG_BODY, content_type="application/json")
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                response.enable_compression()
            return response
        return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)

    async def _watch(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        queue: asyncio.Queue[Pushed] = asyncio.Queue()
        self._queues.add(queue)
        self.open_watches += 1
        try:
            response = aiohttp.web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            while (event := await queue.get()) is not None:
                if event == RESET and request.transport is not None:
                    request.transport.abort()
                    return response
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
            return response
        finally:
            self._queues.discard(queue)
            self.open_watches -= 1


@pytest.fixture
def upstream(tls: tuple[Path, Path, Path]) -> Iterator[Upstream]:
    server = Upstream(tls[1], tls[2])
    yield server
    server.stop()


@pytest.fixture
def proxy(upstream: Upstream, tls: tuple[Path, Path, Path]) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.url, tls[0]) as proxy:
        yield proxy


# -- clients ------------------------------------------------------------------------------------
def call(
    proxy: FaultProxy, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request(
            method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


OpenWatch = Callable[..., http.client.HTTPResponse]


@pytest.fixture
def open_watch() -> Iterator[OpenWatch]:
    """Start a watch on pods through a proxy: ``open_watch(proxy, query="watch=true")``."""
    conns: list[http.client.HTTPConnection] = []

    def start(proxy: FaultProxy, query: str = "watch=true") -> http.client.HTTPResponse:
        conns.append(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10))
        conns[-1].request("GET", f"{PODS}?{query}")
        response = conns[-1].getresponse()
        assert response.status == 200
        return response

    yield start
    for conn in conns:
        conn.close()


def event(n: int) -> dict[str, Any]:
    return {"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": f"p{n}"}}}


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/namespaces/ns/pods", "pods"),
        ("/api/v1/namespaces/ns/pods/p1/log", "pods/log"),
        ("/api/v1/namespaces", "namespaces"),
        ("/api/v1/namespaces/ns", "namespaces"),
        ("/api/v1/namespaces/ns/status", "namespaces/status"),
        ("/api/v1/namespaces/ns/secrets/s", "secrets"),
        ("/api/v1/nodes/n1/proxy/metrics", "nodes/proxy"),
        ("/api/v1/namespaces/ns/events", "events"),
        ("/apis/batch/v1/namespaces/ns/jobs", "jobs"),
        (
            "/apis/sparring.dev/v1/namespaces/ns/adversarialgames/g1/status",
            "adversarialgames/status",
        ),
        (
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.y",
            "customresourcedefinitions",
        ),
        ("/apis/batch/v1", None),
        ("/api/v1", None),
        ("/version", None),
    ],
)
def test_parse_resource(path: str, resource: str | None) -> None:
    assert parse_resource(path) == resource


def test_headers_query_and_body_pass_through(proxy: FaultProxy, upstream: Upstream) -> None:
    query = "labelSelector=app%3Dx%2Cb%21%3Dc&limit=5"
    status, headers, body = call(
        proxy, "GET", f"{PODS}?{query}", Authorization="Bearer t0k", User_Agent="kopf/1.0"
    )
    assert status == 200
    echo = json.loads(body)
    assert echo == {"authorization": "Bearer t0k", "query": query, "user_agent": "kopf/1.0"}
    assert headers["Audit-Id"] == "a1"
    assert headers.get_all("Warning") == ['299 - "one"', '299 - "two"']

    payload = json.dumps({"kind": "Job", "metadata": {"name": "ü"}}).encode()
    status, headers, body = call(proxy, "POST", JOBS, payload, Content_Type="application/json")
    assert (status, body, headers["Content-Type"]) == (201, payload, "application/json")
    assert upstream.hits == [("GET", f"{PODS}?{query}"), ("POST", JOBS)]
    records = proxy.records
    assert [(r.method, r.resource, r.status, r.injected, r.watch) for r in records] == [
        ("GET", "pods", 200, False, False),
        ("POST", "jobs", 201, False, False),
    ]
    assert records[0].query == query and records[0].user_agent == "kopf/1.0"


def test_compressed_body_is_not_altered(proxy: FaultProxy) -> None:
    status, headers, body = call(proxy, "GET", BIG, Accept_Encoding="gzip")
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == BIG_BODY
    status, headers, body = call(proxy, "GET", BIG)
    assert "Content-Encoding" not in headers and body == BIG_BODY


def test_fail_next_is_answered_by_the_proxy(proxy: FaultProxy, upstream: Upstream) -> None:
    fault = proxy.fail_next(2, 429, retry_after=3)
    for _ in range(2):
        status, headers, body = call(proxy, "GET", PODS)
        assert (status, headers["Retry-After"]) == (429, "3")
        assert json.loads(body) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "fault injected by the test harness",
            "reason": "TooManyRequests",
            "code": 429,
            "details": {"retryAfterSeconds": 3},
        }
    assert upstream.hits == [] and fault.times == 0
    assert call(proxy, "GET", PODS)[0] == 200
    assert len(upstream.hits) == 1
    assert [(r.status, r.injected) for r in proxy.records] == [
        (429, True),
        (429, True),
        (200, False),
    ]


def test_fail_next_filters_and_order(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.fail_next(1, 500, method="post", path=r"/jobs$")
    assert call(proxy, "GET", PODS)[0] == 200
    status, _, body = call(proxy, "POST", JOBS, b"{}")
    assert (status, json.loads(body)["reason"]) == (500, "InternalError")
    assert call(proxy, "POST", JOBS, b"{}")[0] == 201

    proxy.fail_next(1, 503)
    proxy.fail_next(1, 500)
    statuses = [call(proxy, "GET", PODS)[0] for _ in range(3)]
    assert statuses == [503, 500, 200]
    assert [f.times for f in proxy.faults] == [0, 0, 0]

    proxy.fail_next(5, 500, path="labelSelector=")
    assert call(proxy, "GET", f"{PODS}?labelSelector=a")[0] == 500
    proxy.clear_faults()
    assert proxy.faults == [] and call(proxy, "GET", f"{PODS}?labelSelector=a")[0] == 200
    assert len(upstream.hits) == 4


def test_watch_events_are_not_buffered(
    proxy: FaultProxy, upstream: Upstream, open_watch: OpenWatch
) -> None:
    watch = open_watch(proxy)
    wait_for(lambda: upstream.open_watches == 1)
    assert proxy.open_watches() == 1
    for n in range(3):
        upstream.push(event(n))  # the next one only after this one has arrived
        assert json.loads(watch.readline()) == event(n)
    upstream.push(None)
    assert watch.read() == b""
    wait_for(lambda: proxy.open_watches() == 0)
    [record] = proxy.records
    assert (record.watch, record.resource, record.status, record.injected) == (
        True,
        "pods",
        200,
        False,
    )


def test_either_side_ending_a_watch_ends_the_other(
    proxy: FaultProxy, upstream: Upstream, open_watch: OpenWatch
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", f"{PODS}?watch=true")
    assert conn.getresponse().status == 200
    wait_for(lambda: upstream.open_watches == 1)
    conn.close()  # the client leaves: the upstream watch must not linger
    wait_for(lambda: upstream.open_watches == 0 and proxy.open_watches() == 0)

    watch = open_watch(proxy)
    wait_for(lambda: upstream.open_watches == 1)
    upstream.push(event(1))
    assert json.loads(watch.readline()) == event(1)
    upstream.push(RESET)  # the upstream breaks off: the client must not see a complete body
    with pytest.raises((http.client.HTTPException, OSError)):
        watch.read()
    wait_for(lambda: proxy.open_watches() == 0)


def test_drop_watches_cleanly(proxy: FaultProxy, upstream: Upstream, open_watch: OpenWatch) -> None:
    watch = open_watch(proxy)
    wait_for(lambda: upstream.open_watches == 1)
    upstream.push(event(1))
    assert json.loads(watch.readline()) == event(1)
    assert proxy.drop_watches() == 1
    assert watch.read() == b""  # a complete chunked body: no IncompleteRead
    assert proxy.open_watches() == 0
    wait_for(lambda: upstream.open_watches == 0)  # the upstream watch is not leaked


def test_drop_watches_abruptly(
    proxy: FaultProxy, upstream: Upstream, open_watch: OpenWatch
) -> None:
    watch = open_watch(proxy)
    wait_for(lambda: upstream.open_watches == 1)
    upstream.push(event(1))
    assert json.loads(watch.readline()) == event(1)
    assert proxy.drop_watches(abrupt=True) == 1
    with pytest.raises((http.client.HTTPException, OSError)):
        watch.read()
    wait_for(lambda: upstream.open_watches == 0)


def test_expire_watches(proxy: FaultProxy, upstream: Upstream, open_watch: OpenWatch) -> None:
    proxy.expire_watches(5)
    proxy.expire_watches(0)  # replaces the pending count: nothing expires
    first = open_watch(proxy, "watch=true&resourceVersion=41")
    wait_for(lambda: upstream.open_watches == 1)
    upstream.push(None)
    assert first.read() == b""
    wait_for(lambda: upstream.open_watches == 0)

    proxy.expire_watches(1)
    plain = open_watch(proxy)  # no resourceVersion: nothing to expire
    wait_for(lambda: upstream.open_watches == 1)
    upstream.push(event(1))
    assert json.loads(plain.readline()) == event(1)

    expired = open_watch(proxy, "watch=true&resourceVersion=42")
    assert json.loads(expired.readline()) == {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "too old resource version: 42",
            "reason": "Expired",
            "code": 410,
        },
    }
    assert expired.read() == b""
    assert upstream.watch_hits() == [f"{PODS}?watch=true&resourceVersion=41", f"{PODS}?watch=true"]

    resumed = open_watch(proxy, "watch=1&resourceVersion=43")  # expire_watches(1): used up
    wait_for(lambda: upstream.open_watches == 2)
    upstream.push(event(2))
    assert json.loads(resumed.readline()) == event(2)
    assert [(r.query, r.status, r.injected) for r in proxy.records] == [
        ("watch=true&resourceVersion=41", 200, False),
        ("watch=true", 200, False),
        ("watch=true&resourceVersion=42", 200, True),
        ("watch=1&resourceVersion=43", 200, False),
    ]


def test_upstream_tls_is_verified(upstream: Upstream) -> None:
    with FaultProxy(upstream.url, ca_file=None) as proxy:
        status, _, body = call(proxy, "GET", PODS)
        assert status == 502 and json.loads(body)["kind"] == "Status"
        assert upstream.hits == [] and "certificate" in proxy.errors[0].lower()
        assert proxy.records[0].status == 502


def test_kubeconfig_works_with_the_kubernetes_client(proxy: FaultProxy, tmp_path: Path) -> None:
    kubernetes = pytest.importorskip("kubernetes")
    no_ca = tmp_path / "unused-ca"  # plain http: no CA goes into the kubeconfig
    path = write_kubeconfig(tmp_path / "kubeconfig", proxy.url, no_ca, None, None, "s3cret")
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == proxy.url
    client = kubernetes.config.new_client_from_config(config_file=str(path))
    try:
        api = kubernetes.client.CoreV1Api(client)
        response = api.list_namespaced_pod("ns1", _preload_content=False)
        assert json.loads(response.data)["authorization"] == "Bearer s3cret"
    finally:
        client.close()


def test_stop_ends_open_watches(
    upstream: Upstream, tls: tuple[Path, Path, Path], open_watch: OpenWatch
) -> None:
    with FaultProxy(upstream.url, tls[0]) as proxy:
        watch = open_watch(proxy)
        wait_for(lambda: upstream.open_watches == 1)
    assert watch.read() == b""
    wait_for(lambda: upstream.open_watches == 0)
    assert proxy._thread is not None and not proxy._thread.is_alive()
