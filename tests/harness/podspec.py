"""Turn a Pod's first container into a local command line: argv, environment, working
directory, and local directories standing in for the volumes.

Paths inside the container do not exist here, so every mount path (and the
``terminationMessagePath``) is mapped to a directory or file under the pod's own directory,
and every command/args/env value (or the value part of ``--flag=/path``) that starts with one
of those paths is rewritten. Only the first container runs; init containers and sidecars do
not. ``python``/``python3`` as the command is the test's interpreter (the venv's).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Reader = Callable[[str, str, str], "dict[str, Any] | None"]  # (plural, namespace, name) -> obj

PASS_THROUGH_ENV = ("PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS", "LANG", "TMPDIR")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_PYTHON = re.compile(r"python(3(\.\d+)?)?")


class NotReady(Exception):
    """A referenced Secret/ConfigMap is missing: the real kubelet keeps the pod Pending
    (waiting with this reason) and retries, and so does the harness kubelet."""

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


def _write_volume(target: Path, files: dict[str, bytes], items: list[dict[str, Any]]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    wanted = [(item["key"], item.get("path", item["key"])) for item in items] or [
        (key, key) for key in files
    ]
    for key, rel in wanted:
        if key in files:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(files[key])


def _volumes(pod: dict[str, Any], pod_dir: Path, shared: Path, read: Reader) -> dict[str, Path]:
    namespace = pod["metadata"]["namespace"]
    result: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        local = pod_dir / "volumes" / name
        if "configMap" in volume or "secret" in volume:
            secret = "secret" in volume
            source = volume["secret" if secret else "configMap"]
            ref = source.get("secretName" if secret else "name", "")
            obj = read("secrets" if secret else "configmaps", namespace, ref)
            if obj is None and not source.get("optional"):
                kind = "secret" if secret else "configmap"
                raise NotReady(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{name}": {kind} "{ref}" not found',
                )
            _write_volume(local, _decoded(obj or {}, secret), source.get("items") or [])
        elif "persistentVolumeClaim" in volume:  # shared by every pod that mounts the claim
            local = shared / "pvc" / namespace / volume["persistentVolumeClaim"]["claimName"]
        elif "hostPath" in volume:  # never the real host path: a shared stand-in directory
            local = shared / "hostpath" / volume["hostPath"]["path"].strip("/")
        local.mkdir(parents=True, exist_ok=True)  # emptyDir and anything else: empty
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
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise NotReady("CreateContainerConfigError", f"unsupported fieldRef {path!r}")


def _key_ref(ref: dict[str, Any], plural: str, namespace: str, read: Reader) -> str | None:
    obj = read(plural, namespace, ref.get("name", ""))
    data = _decoded(obj, plural == "secrets") if obj is not None else None
    if data is None or ref.get("key") not in data:
        if ref.get("optional"):
            return None
        what = "secret" if plural == "secrets" else "configmap"
        missing = (
            f'{what} "{ref.get("name")}" not found'
            if data is None
            else f"couldn't find key {ref.get('key')} in {what} {namespace}/{ref.get('name')}"
        )
        raise NotReady("CreateContainerConfigError", missing)
    return data[ref["key"]].decode(errors="replace")


def _env(
    pod: dict[str, Any], container: dict[str, Any], read: Reader, base: dict[str, str]
) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}  # the container's own variables, for $(VAR) expansion
    for source in container.get("envFrom") or []:
        plural = "secrets" if "secretRef" in source else "configmaps"
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        obj = read(plural, namespace, ref.get("name", ""))
        if obj is None and not ref.get("optional"):
            raise NotReady(
                "CreateContainerConfigError", f'{plural[:-1]} "{ref.get("name")}" not found'
            )
        for key, value in _decoded(obj or {}, plural == "secrets").items():
            env[source.get("prefix", "") + key] = value.decode(errors="replace")
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
            resource = value_from["resourceFieldRef"].get("resource", "")
            kind, _, name = resource.partition(".")
            value = str(((container.get("resources") or {}).get(kind) or {}).get(name, "0"))
        else:
            value = _expand(str(var.get("value", "")), env)
        if value is not None:
            env[var["name"]] = value
    return {**base, **env}


def prepare(
    pod: dict[str, Any], pod_dir: Path, shared: Path, read: Reader, extra_env: dict[str, str]
) -> Prepared:
    """Everything needed to start the pod's first container; raises :class:`NotReady`."""
    container = pod["spec"]["containers"][0]
    volumes = _volumes(pod, pod_dir, shared, read)
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        local = volumes.get(mount["name"], pod_dir / "volumes" / mount["name"])
        local = local / mount.get("subPath", "")
        local.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"].rstrip("/") or "/"] = local
    termination_path = pod_dir / "termination-log"
    termination_path.write_text("")
    mounts[container.get("terminationMessagePath") or "/dev/termination-log"] = termination_path

    def rewrite(text: str) -> str:
        flag, eq, value = text.partition("=")
        if eq and flag.startswith("-") and value.startswith("/"):
            return f"{flag}={rewrite(value)}"
        for prefix in sorted(mounts, key=len, reverse=True):
            if text == prefix or text.startswith(prefix + "/"):
                return str(mounts[prefix]) + text[len(prefix) :]
        return text

    home = pod_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    # The venv's bin first: its console scripts and `python` in child processes resolve there.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin")])
    base = {
        "PATH": path,
        "HOME": str(home),
        "HOSTNAME": pod["metadata"]["name"],
    }
    base.update({k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ})
    base.update(extra_env)
    env = {k: rewrite(v) for k, v in _env(pod, container, read, base).items()}
    argv = [
        rewrite(_expand(str(a), env))
        for a in (container.get("command") or []) + (container.get("args") or [])
    ]
    if not argv:
        raise ValueError(
            "the harness kubelet cannot run an image's entrypoint: the container needs a command"
        )
    if _PYTHON.fullmatch(os.path.basename(argv[0])):
        argv[0] = sys.executable
    cwd = Path(rewrite(container["workingDir"])) if container.get("workingDir") else Path()
    if not container.get("workingDir") or not cwd.is_dir():
        cwd = pod_dir / "work"
        cwd.mkdir(parents=True, exist_ok=True)
    return Prepared(argv=argv, env=env, cwd=cwd, termination_path=termination_path, mounts=mounts)
