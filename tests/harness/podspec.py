"""Turn a Pod's first container into a local command line: argv, environment, working
directory, and local directories standing in for the volumes.

Paths inside the container do not exist here, so every mount path (and the
``terminationMessagePath``) is mapped to a directory or file under the pod's own directory,
and every command/args/env value (or the value part of ``--flag=/path``) that starts with one
of those paths is rewritten. A program that opens a hard-coded path is not rewritten, though:
in-cluster clients (kopf, ``kubernetes.config.load_incluster_config``) read the fixed
``/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}``. Mounts under
:data:`BIND_PREFIXES` are therefore also listed in :attr:`Prepared.binds`, for the runtime to
bind-mount at their real path in a private mount namespace. Binding every mount that way would
hide what the host keeps there (a mount at ``/tmp`` would hide the test's own files), so the
others stay rewritten.

Only the first container runs; init containers and sidecars do not. ``python``/``python3`` as
the command is the kubelet's own interpreter (the venv's). Volumes are written once, when the
container starts (no updates of ConfigMap/Secret volumes, no token rotation).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from kubernetes.utils import parse_quantity

from . import podnames

PASS_THROUGH_ENV = ("PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS", "LANG", "TMPDIR")
# Where in-cluster programs look for their credentials by a fixed path.
BIND_PREFIXES = ("/var/run/secrets/", "/run/secrets/")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_PYTHON = re.compile(r"python(3(\.\d+)?)?")
_DEFAULT_MODE = 0o644


class Sources(Protocol):
    """What the kubelet reads from the API server to build a container."""

    def read(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret or ConfigMap as a dict; None when it does not exist."""

    def token(self, pod: dict[str, Any], audience: str | None, expiration: int) -> str:
        """A ServiceAccount token bound to `pod` (TokenRequest); raises :class:`NotReady`."""


class NotReady(Exception):
    """A referenced Secret/ConfigMap is missing: the real kubelet keeps the pod Pending
    (waiting with this reason) and retries, and so does the process kubelet."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclasses.dataclass
class Prepared:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_path: Path
    mounts: dict[str, Path]  # mountPath in the container -> local path
    binds: dict[str, tuple[Path, bool]]  # mountPath -> (local path, read-only), see BIND_PREFIXES


@dataclasses.dataclass
class Node:
    """What a container may learn about the node it runs on."""

    name: str = ""
    allocatable: dict[str, str] = dataclasses.field(default_factory=dict)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are substituted, undefined ones are
    left as they are, and ``$$`` is a literal ``$``."""
    return _VAR_REF.sub(
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text
    )


def _decoded(obj: dict[str, Any], secret: bool) -> dict[str, bytes]:
    if secret:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    files = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return files


def _write(target: Path, rel: str, data: bytes, mode: int) -> None:
    path = target / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _object_files(
    source: dict[str, Any], secret: bool, namespace: str, volume: str, read: Sources
) -> list[tuple[str, bytes, int | None]]:
    """(path, content, mode) of a Secret/ConfigMap volume (or projected) source."""
    ref = source.get("secretName" if secret else "name") or source.get("name", "")
    obj = read.read("secrets" if secret else "configmaps", namespace, ref)
    if obj is None and not source.get("optional"):
        kind = "secret" if secret else "configmap"
        raise NotReady(
            "ContainerCreating",
            f'MountVolume.SetUp failed for volume "{volume}" : {kind} "{ref}" not found',
        )
    files = _decoded(obj or {}, secret)
    items = source.get("items") or [{"key": key} for key in files]
    result = []
    for item in items:
        if item["key"] not in files:
            if obj is not None and not source.get("optional"):
                kind = "secret" if secret else "config"
                raise NotReady(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{volume}" : configmap references '
                    f"non-existent {kind} key: {item['key']}",
                )
            continue
        result.append((item.get("path", item["key"]), files[item["key"]], item.get("mode")))
    return result


def _downward_files(
    pod: dict[str, Any], container: dict[str, Any], items: Iterable[dict[str, Any]], node: Node
) -> list[tuple[str, bytes, int | None]]:
    result = []
    for item in items:
        if "fieldRef" in item:
            path = item["fieldRef"]["fieldPath"]
            meta = pod["metadata"]
            if path in ("metadata.labels", "metadata.annotations"):
                pairs = sorted((meta.get(path.split(".")[1]) or {}).items())
                value = "\n".join(f'{k}="{v}"' for k, v in pairs)
            else:
                value = _field(pod, path)
        else:
            ref = item.get("resourceFieldRef") or {}
            named = ref.get("containerName")
            owner = next((c for c in pod["spec"]["containers"] if c["name"] == named), container)
            value = _resource(owner, ref, node)
        result.append((item["path"], value.encode(), item.get("mode")))
    return result


def _volume_files(
    pod: dict[str, Any], volume: dict[str, Any], read: Sources, node: Node
) -> list[tuple[str, bytes, int | None]] | None:
    """The files of a volume that has content, or None for an empty/shared directory."""
    namespace, name = pod["metadata"]["namespace"], volume["name"]
    container = pod["spec"]["containers"][0]
    if "configMap" in volume or "secret" in volume:
        secret = "secret" in volume
        return _object_files(
            volume["secret" if secret else "configMap"], secret, namespace, name, read
        )
    if "downwardAPI" in volume:
        return _downward_files(pod, container, volume["downwardAPI"].get("items") or [], node)
    if "projected" not in volume:
        return None
    files: list[tuple[str, bytes, int | None]] = []
    for source in volume["projected"].get("sources") or []:
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            token = read.token(pod, sat.get("audience"), int(sat.get("expirationSeconds", 3600)))
            files.append((sat["path"], token.encode(), None))
        elif "configMap" in source or "secret" in source:
            secret = "secret" in source
            src = source["secret" if secret else "configMap"]
            files += _object_files(src, secret, namespace, name, read)
        elif "downwardAPI" in source:
            files += _downward_files(pod, container, source["downwardAPI"].get("items") or [], node)
    return files


def _volumes(
    pod: dict[str, Any], pod_dir: Path, shared: Path, read: Sources, node: Node
) -> dict[str, Path]:
    namespace = pod["metadata"]["namespace"]
    result: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        local = pod_dir / "volumes" / name
        files = _volume_files(pod, volume, read, node)
        if files is not None:
            # Rewritten on each (re)start, as a fresh mount would be: nothing stale stays.
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
            kinds = ("configMap", "secret", "downwardAPI", "projected")
            source = next(volume[k] for k in kinds if k in volume)
            default = int(source.get("defaultMode", _DEFAULT_MODE))
            for rel, data, mode in files:
                _write(local, rel, data, default if mode is None else int(mode))
        elif "persistentVolumeClaim" in volume:  # shared by every pod that mounts the claim
            local = shared / "pvc" / namespace / volume["persistentVolumeClaim"]["claimName"]
        elif "hostPath" in volume:  # never the real host path: a shared stand-in directory
            local = shared / "hostpath" / volume["hostPath"]["path"].strip("/")
        local.mkdir(parents=True, exist_ok=True)  # emptyDir (any medium) and the rest: empty
        result[name] = local
    return result


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise NotReady("CreateContainerConfigError", f"unsupported fieldRef {path!r}")


def _resource(container: dict[str, Any], ref: dict[str, Any], node: Node) -> str:
    """``resourceFieldRef`` as the kubelet computes it: rounded up to the divisor; an unset
    limit is the node's allocatable."""
    kind, _, name = ref.get("resource", "").partition(".")
    amount = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if amount is None:
        amount = node.allocatable.get(name, "0") if kind == "limits" else "0"
    value = parse_quantity(amount) / parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(value))


def _key_ref(ref: dict[str, Any], plural: str, namespace: str, read: Sources) -> str | None:
    obj = read.read(plural, namespace, ref.get("name", ""))
    data = _decoded(obj, plural == "secrets") if obj is not None else None
    if data is None or ref.get("key") not in data:
        if ref.get("optional"):
            return None
        what, kind = ("secret", "Secret") if plural == "secrets" else ("configmap", "ConfigMap")
        missing = (
            f'{what} "{ref.get("name")}" not found'
            if data is None
            else f"couldn't find key {ref.get('key')} in {kind} {namespace}/{ref.get('name')}"
        )
        raise NotReady("CreateContainerConfigError", missing)
    return data[ref["key"]].decode(errors="replace")


def _env(
    pod: dict[str, Any], container: dict[str, Any], read: Sources, base: dict[str, str], node: Node
) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}  # the container's own variables, for $(VAR) expansion
    for source in container.get("envFrom") or []:
        plural = "secrets" if "secretRef" in source else "configmaps"
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        obj = read.read(plural, namespace, ref.get("name", ""))
        if obj is None and not ref.get("optional"):
            raise NotReady(
                "CreateContainerConfigError", f'{plural[:-1]} "{ref.get("name")}" not found'
            )
        for key, data in _decoded(obj or {}, plural == "secrets").items():
            env[source.get("prefix", "") + key] = data.decode(errors="replace")
    for var in container.get("env") or []:
        value_from = var.get("valueFrom") or {}
        value: str | None
        if "secretKeyRef" in value_from:
            value = _key_ref(value_from["secretKeyRef"], "secrets", namespace, read)
        elif "configMapKeyRef" in value_from:
            value = _key_ref(value_from["configMapKeyRef"], "configmaps", namespace, read)
        elif "fieldRef" in value_from:
            value = _field(pod, value_from["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in value_from:
            value = _resource(container, value_from["resourceFieldRef"], node)
        else:
            value = _expand(str(var.get("value", "")), env)
        if value is not None:
            env[var["name"]] = value
    return {**base, **env}


def _rewriter(mounts: dict[str, Path]) -> Callable[[str], str]:
    prefixes = sorted(mounts, key=len, reverse=True)

    def rewrite(text: str) -> str:
        flag, eq, value = text.partition("=")
        if eq and flag.startswith("-") and value.startswith("/"):
            return f"{flag}={rewrite(value)}"
        for prefix in prefixes:
            if text == prefix or text.startswith(prefix + "/"):
                return str(mounts[prefix]) + text[len(prefix) :]
        return text

    return rewrite


def prepare(
    pod: dict[str, Any],
    pod_dir: Path,
    shared: Path,
    sources: Sources,
    extra_env: dict[str, str],
    node: Node | None = None,
    hosts: str | None = None,
) -> Prepared:
    """Everything needed to start the pod's first container; raises :class:`NotReady` (the
    pod waits) or ``ValueError`` (it cannot run here at all). `hosts`: the pod's /etc/hosts
    (``podnames.py``), bound over the node's."""
    node = node or Node()
    container = pod["spec"]["containers"][0]
    volumes = _volumes(pod, pod_dir, shared, sources, node)
    mounts: dict[str, Path] = {}
    binds: dict[str, tuple[Path, bool]] = {}
    for mount in container.get("volumeMounts") or []:
        local = volumes.get(mount["name"], pod_dir / "volumes" / mount["name"])
        local = local / mount.get("subPath", "")
        local.mkdir(parents=True, exist_ok=True)
        target = mount["mountPath"].rstrip("/") or "/"
        mounts[target] = local
        if (target + "/").startswith(BIND_PREFIXES):
            binds[target] = (local, bool(mount.get("readOnly")))
    if hosts is not None:
        podnames.write_hosts(podnames.hosts_path(pod_dir), hosts)
        binds["/etc/hosts"] = (podnames.hosts_path(pod_dir), True)
    termination_path = pod_dir / "termination-log"
    termination_path.write_text("")
    mounts[container.get("terminationMessagePath") or "/dev/termination-log"] = termination_path
    rewrite = _rewriter(mounts)

    home = pod_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    # The venv's bin first: its console scripts and `python` in child processes resolve there.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin")])
    base = {"PATH": path, "HOME": str(home), "HOSTNAME": pod["metadata"]["name"]}
    base.update({k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ})
    base.update(extra_env)
    env = {k: rewrite(v) for k, v in _env(pod, container, sources, base, node).items()}
    argv = [
        rewrite(_expand(str(a), env))
        for a in (container.get("command") or []) + (container.get("args") or [])
    ]
    if not argv:
        raise ValueError(
            "the process kubelet cannot run an image's entrypoint: the container needs a command"
        )
    if _PYTHON.fullmatch(os.path.basename(argv[0])):
        argv[0] = sys.executable
    cwd = Path(rewrite(container["workingDir"])) if container.get("workingDir") else Path()
    if not container.get("workingDir") or not cwd.is_dir():
        cwd = pod_dir / "work"
        cwd.mkdir(parents=True, exist_ok=True)
    return Prepared(argv, env, cwd, termination_path, mounts, binds)
