"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager
and the process kubelet (``kubelet.py``), started from the binaries ``scripts/kube-build``
builds with ``go build`` at one pinned release.

``scripts/kube up`` / ``down`` and the tests' ``control_plane`` fixture both use
:class:`ControlPlane`. Every process it starts is recorded (pid and argv) in ``state.json``
under its root, and ``stop`` signals exactly those, so a ``down`` never touches another
cluster's processes.

The API server runs with RBAC authorization, ServiceAccount token issuance (TokenRequest, a
signing key of its own), PodSecurity and OwnerReferencesPermissionEnforcement admission, and an
audit log (one JSON line per request, the request log of the tests and of the RBAC recorder).
The controller manager runs the controllers the operator relies on (Jobs, garbage collection,
namespaces, ServiceAccounts and their tokens, Deployments for the chart's operator) under its
own identity, with per-controller ServiceAccount credentials as on kubeadm clusters.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .pki import SERVICE_CIDR, Pki

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = os.environ.get("SPARRING_KUBE_VERSION", "1.35.4")
NODE_NAME = "sparring-node"
# Only the controllers this project's objects need, so that nothing acts on a node the process
# kubelet does not pretend to have (no node lifecycle tainting, no IPAM, no volume attach).
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "pod-garbage-collector-controller",
    "ttl-after-finished-controller",
    "endpointslice-controller",
    "resourcequota-controller",
    "disruption-controller",
)
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
"""


def bin_dir() -> Path:
    """The pinned binaries, building them on a cold machine (``scripts/kube-build``)."""
    override = os.environ.get("SPARRING_KUBE_BIN")
    if override:
        return Path(override)
    out = subprocess.run(
        [str(ROOT / "scripts" / "kube-build")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(
    path: Path, server: str, ca: Path, cert: Path | None, key: Path | None, token: str = ""
) -> Path:
    user: dict[str, str] = {}
    if cert is not None and key is not None:
        user = {"client-certificate": str(cert), "client-key": str(key)}
    if token:
        user["token"] = token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sparring", "cluster": {"server": server}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "sparring", "context": {"cluster": "sparring", "user": "user"}}],
        "current-context": "sparring",
    }
    if server.startswith("https:"):
        config["clusters"][0]["cluster"]["certificate-authority"] = str(ca)  # type: ignore[index]
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


class ControlPlane:
    def __init__(
        self, root: Path, with_kubelet: bool = True, controller_qps: int | None = None
    ) -> None:
        self.root = root.resolve()
        self.with_kubelet = with_kubelet
        # The controller manager's client rate limit (its default: 20 requests/s, burst 30, per
        # controller). A benchmark of hundreds of Jobs a minute would otherwise measure it.
        self.controller_qps = controller_qps
        self.pki = Pki(self.root / "pki")
        self.state_file = self.root / "state.json"
        self.logs = self.root / "logs"
        self.audit_log = self.logs / "audit.jsonl"
        self.kubeconfig = self.root / "admin.kubeconfig"
        self.processes: dict[str, dict[str, Any]] = {}
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- start ----------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> ControlPlane:
        if self.state_file.exists():
            raise RuntimeError(f"{self.root} holds a running control plane; stop it first")
        bins = bin_dir()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki.create()
        admin = self.pki.client("sparring-admin", ("system:masters",))
        try:
            etcd_port = self._start_etcd(bins)
            self.port = free_port()
            write_kubeconfig(self.kubeconfig, self.server, self.pki.ca_crt, *admin)
            self._start_apiserver(bins, etcd_port)
            self._wait_ready(timeout)
            self._start_controller_manager(bins)
            if self.with_kubelet:
                self._start_kubelet()
            self._wait_default_serviceaccount(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        # A session of its own: `scripts/kube up` returns while the cluster runs, and a Ctrl-C
        # in the shell that started it does not take the cluster down half-way.
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else {**os.environ},
            start_new_session=True,
        )
        log.close()
        self.processes[name] = {"pid": proc.pid, "argv0": argv[0], "start": _start_time(proc.pid)}
        self.state_file.write_text(
            json.dumps({"processes": self.processes, "server": self.server}, indent=2)
        )
        self._popen[name] = proc

    def _start_etcd(self, bins: Path) -> int:
        client, peer = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                str(bins / "etcd"),
                "--name=test",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=test=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                # A test cluster's data is thrown away: fsync buys nothing but seconds.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        return client

    def _start_apiserver(self, bins: Path, etcd_port: int) -> None:
        policy = self.root / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        pki = self.pki.root
        self._spawn(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={self.pki.ca_crt}",
                f"--service-account-key-file={self.pki.sa_pub}",
                f"--service-account-signing-key-file={self.pki.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                # On top of the default set (PodSecurity, ServiceAccount, NamespaceLifecycle,
                # ...): an ownerReference with blockOwnerDeletion needs the right to update the
                # owner's finalizers, as on hardened clusters (OpenShift enables it).
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                "--allow-privileged=false",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                # One file, never rotated (the default rotates at 100 MB, which a benchmark of
                # hundreds of games passes: its readers would miss the older requests).
                "--audit-log-maxsize=100000",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self, bins: Path) -> None:
        cert, key = self.pki.client("system:kube-controller-manager")
        kubeconfig = write_kubeconfig(
            self.root / "controller-manager.kubeconfig", self.server, self.pki.ca_crt, cert, key
        )
        self._spawn(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_crt}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--secure-port=0",
                # Finished Jobs' pods are the operator's evidence; the default threshold
                # (12500 terminated pods) already keeps them, and GC runs promptly.
                "--concurrent-gc-syncs=5",
                "--v=1",
                *(
                    [
                        f"--kube-api-qps={self.controller_qps}",
                        f"--kube-api-burst={self.controller_qps * 3 // 2}",
                        "--concurrent-job-syncs=20",
                    ]
                    if self.controller_qps
                    else []
                ),
            ],
        )

    def _start_kubelet(self) -> None:
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        self._spawn(
            "kubelet",
            [
                sys.executable,
                "-m",
                "harness.kubelet",
                "--kubeconfig",
                str(self.kubeconfig),
                "--node",
                NODE_NAME,
                "--root",
                str(self.root / "kubelet"),
            ],
            env=env,
        )

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(
            str(self.pki.root / "sparring-admin.crt"), str(self.pki.root / "sparring-admin.key")
        )
        return ctx

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl(), timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode(errors="replace")

    def _check_alive(self) -> None:
        for name, proc in self._popen.items():
            if proc.poll() is not None:
                log = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError):
                status, body = self.http_get("/readyz")
                if status == 200:
                    return
                last = body
            time.sleep(0.2)
        raise TimeoutError(f"the API server was not ready within {timeout:.0f} s: {last}")

    def _wait_default_serviceaccount(self, timeout: float) -> None:
        """Pods can be created in `default` once its ServiceAccount and root CA exist."""
        deadline = time.monotonic() + timeout
        paths = (
            "/api/v1/namespaces/default/serviceaccounts/default",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
        )
        while time.monotonic() < deadline:
            self._check_alive()
            if all(self.http_get(p)[0] == 200 for p in paths):
                return
            time.sleep(0.2)
        raise TimeoutError("the controller manager never created the default ServiceAccount")

    # -- stop -----------------------------------------------------------------------------
    @classmethod
    def attach(cls, root: Path) -> ControlPlane:
        """The control plane recorded under `root` (for ``scripts/kube down``)."""
        plane = cls(root)
        state = json.loads(plane.state_file.read_text())
        plane.processes = state["processes"]
        plane.port = int(state["server"].rsplit(":", 1)[1])
        return plane

    def stop(self, grace: float = 10.0) -> list[str]:
        """SIGTERM each recorded process that is still the one we started (same start time),
        kubelet first and etcd last; SIGKILL what is left after `grace`. Returns their names."""
        stopped = []
        for name in reversed(list(self.processes)):
            info = self.processes[name]
            pid = int(info["pid"])
            if _start_time(pid) != info["start"]:
                continue  # gone, or the pid now belongs to someone else
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _start_time(pid) == info["start"] and not _is_zombie(pid):
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
            proc = self._popen.get(name)
            if proc is not None:
                proc.wait()
            stopped.append(name)
        self.state_file.unlink(missing_ok=True)
        return stopped


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: with the pid, it names one process forever."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _pythonpath() -> str:
    parts = [str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/kube", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    default_root = Path(
        os.environ.get("SPARRING_KUBE_ROOT")
        or Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
        / "sparring"
        / "kube"
    )
    parser.add_argument("--root", type=Path, default=default_root)
    parser.add_argument("--no-kubelet", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "up":
        plane = ControlPlane(args.root, with_kubelet=not args.no_kubelet).start()
        print(f"control plane v{KUBE_VERSION} at {plane.server}; logs in {plane.logs}")
        print(f"export KUBECONFIG={plane.kubeconfig}")
        return 0
    if not (args.root / "state.json").exists():
        print(f"no control plane recorded under {args.root}", file=sys.stderr)
        return 1 if args.command == "status" else 0
    plane = ControlPlane.attach(args.root)
    if args.command == "status":
        print(plane.http_get("/readyz")[1])
        return 0
    print("stopped: " + ", ".join(plane.stop()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
