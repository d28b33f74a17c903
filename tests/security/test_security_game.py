"""A whole game played with distinctive credentials: they appear nowhere but in their Secret,
and every phase pod runs sandboxed.

The game (examples/apo-tiny.yaml, one round) stores in moto S3 with credentials from a Secret
holding canary values (moto accepts any keys). It is played once for this module by the real
operator process (as the chart's ServiceAccount) on the real control plane, and every test reads
what it left behind:
* every object in the game's namespace but the Secret itself (the game and its status, Jobs,
  Pods with their termination messages, ConfigMaps, Events, ...), the API server's audit log,
  the operator's log, every phase pod's log, and every object in the store: no canary, in
  plain text, base64 or URL-encoded;
* the phase containers get the credentials only as `secretKeyRef`s to that Secret;
* each phase pod: no service-account token, the Pod Security "restricted" profile (non-root,
  no privilege escalation, all capabilities dropped, seccomp RuntimeDefault), read-only root
  filesystem, only configMap/emptyDir volumes, no host namespaces or ports.
The phase processes get no AWS variables from the test's environment (the process kubelet
passes none through), so the game succeeding also proves the secretKeyRefs carried the keys.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from faultops import GAME
from harness.cluster import Kube, delete_namespace, new_namespace
from harness.controlplane import ControlPlane
from harness.fixtures import RESTRICTED, operator_kubeconfig
from harness.gameops import Operator, apo_tiny, create, create_secret, wait_phase
from kubernetes import client as k8s
from sparring_trainer.document import StorageSpec

# Every kind of object a game could leave in its namespace.
NAMESPACED_KINDS = (
    "sparring.dev/v1alpha1/adversarialgames",
    "batch/v1/jobs",
    "v1/pods",
    "v1/configmaps",
    "v1/secrets",
    "v1/events",
    "v1/serviceaccounts",
    "v1/services",
    "apps/v1/deployments",
    "rbac.authorization.k8s.io/v1/roles",
    "rbac.authorization.k8s.io/v1/rolebindings",
)
KEY_ID = "AKIACANARY7Q2W9SPARRING"
SECRET_KEY = "cAnArY/sparring+Secret=" + uuid.uuid4().hex
SECRET = "team-store-credentials"


@dataclass
class Played:
    api: Kube
    kubelet_root: Path
    operator: Operator
    bucket: str
    endpoint: str
    status: dict[str, Any]


@pytest.fixture(scope="module")
def played(
    tmp_path_factory: pytest.TempPathFactory, s3_server: str, control_plane: ControlPlane
) -> Iterator[Played]:
    tmp = tmp_path_factory.mktemp("secure-game")
    bucket = f"secure-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET_KEY,
    )
    s3.create_bucket(Bucket=bucket)
    admin = Kube(control_plane, "default", tmp)
    namespace = new_namespace(k8s.CoreV1Api(admin.client), "secure", **RESTRICTED)
    admin.close()
    api = Kube(control_plane, namespace, tmp)
    kubeconfig, user = operator_kubeconfig(api, tmp / "operator.kubeconfig")
    operator = Operator(kubeconfig, tmp / "operator.log", namespace=namespace)
    operator.user = user
    operator.start()
    try:
        create_secret(api, SECRET, KEY_ID, SECRET_KEY)
        storage = StorageSpec(uri=f"s3://{bucket}/games", endpoint=s3_server, path_style=True)
        create(api, apo_tiny(storage, secret=SECRET, rounds=1))
        obj = wait_phase(api, GAME, "Succeeded", operator)
        yield Played(
            api, control_plane.root / "kubelet", operator, bucket, s3_server, obj["status"]
        )
    finally:
        operator.kill()
        delete_namespace(api)
        api.close()


def _canaries() -> list[str]:
    forms = []
    for value in (KEY_ID, SECRET_KEY):
        forms += [value, base64.b64encode(value.encode()).decode(), urllib.parse.quote(value)]
        forms.append(urllib.parse.quote_plus(value))
    return sorted(set(forms))


def _leaks(where: str, text: str) -> list[str]:
    return [f"{where}: contains {c[:12]}..." for c in _canaries() if c in text]


def test_credentials_appear_nowhere_but_in_their_secret(played: Played) -> None:
    assert played.status["completedRounds"] == 1
    api, leaks, kinds = played.api, [], set()
    for path in NAMESPACED_KINDS:
        for obj in api.list(path):
            kind, name = path.rsplit("/", 1)[1], obj["metadata"]["name"]
            if kind == "secrets" and name == SECRET:
                assert _leaks("the Secret", json.dumps(obj))  # the search does find them
                continue
            kinds.add(kind)
            leaks += _leaks(f"{kind} {name}", json.dumps(obj))
    assert {"adversarialgames", "jobs", "pods", "configmaps", "events"} <= kinds, kinds
    leaks += _leaks("API audit log", api.plane.audit_log.read_text())
    leaks += _leaks("operator log", played.operator.log.read_text(errors="replace"))
    logs = sorted((played.kubelet_root / "logs").glob(f"{api.namespace}_*.log"))
    assert len(logs) >= 6  # prepare and five phases
    for log in logs:
        leaks += _leaks(f"pod log {log.name}", log.read_text(errors="replace"))
    s3 = boto3.client(
        "s3",
        endpoint_url=played.endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET_KEY,
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=played.bucket)["Contents"]]
    assert any(k.endswith("_SUCCESS") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=played.bucket, Key=key)["Body"].read()
        leaks += [f"store {key}" for c in _canaries() if c.encode() in body]
    assert not leaks, leaks


def test_phase_containers_get_credentials_only_as_secret_key_refs(played: Played) -> None:
    jobs = played.api.list("batch/v1/jobs")
    assert len(jobs) == 6
    for job in jobs:
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert "envFrom" not in container
        aws = {e["name"]: e for e in container["env"] if e["name"].startswith("AWS_")}
        assert set(aws) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in aws[var]
            assert aws[var]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": var}}
    config = played.api.get("v1/configmaps", f"{GAME}-game")
    assert config is not None
    storage = json.loads(config["data"]["game.json"])["spec"]["storage"]
    assert storage["secretRef"] == {
        "name": SECRET,
        "accessKeyIdKey": "AWS_ACCESS_KEY_ID",
        "secretAccessKeyKey": "AWS_SECRET_ACCESS_KEY",
    }


def _restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """The Pod Security Standards "restricted" profile, plus what the design adds (no token,
    read-only root filesystem)."""
    bad = []
    pod_sc = pod_spec.get("securityContext") or {}
    if pod_spec.get("automountServiceAccountToken") is not False:
        bad.append("a service-account token is mounted")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(host):
            bad.append(host)
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= {"configMap", "emptyDir", "secret", "projected", "ephemeral"}:
            bad.append(f"volume {volume['name']}: {kinds}")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        bad.append("seccompProfile is not RuntimeDefault")
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            bad.append(f"{c['name']}: may run as root")
        if 0 in (sc.get("runAsUser"), pod_sc.get("runAsUser")):
            bad.append(f"{c['name']}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: privilege escalation allowed")
        if sc.get("privileged"):
            bad.append(f"{c['name']}: privileged")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            bad.append(f"{c['name']}: capabilities not all dropped")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{c['name']}: capabilities added")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{c['name']}: writable root filesystem")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            bad.append(f"{c['name']}: hostPort")
    return bad


def test_phase_pods_get_no_token_and_the_restricted_profile(played: Played) -> None:
    jobs = played.api.list("batch/v1/jobs")
    pods = played.api.list("v1/pods")
    assert len(jobs) == 6 and len(pods) >= 6
    for obj in jobs:
        violations = _restricted_violations(obj["spec"]["template"]["spec"])
        assert not violations, (obj["metadata"]["name"], violations)
    for obj in pods:  # what actually ran
        assert not _restricted_violations(obj["spec"]), obj["metadata"]["name"]


def test_the_sandbox_check_catches_what_it_should() -> None:
    """The checker above is not vacuous: a typical unsafe pod trips every rule."""
    unsafe = {
        "hostNetwork": True,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [
            {
                "name": "phase",
                "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                "ports": [{"containerPort": 80, "hostPort": 80}],
            }
        ],
    }
    assert len(_restricted_violations(unsafe)) == 11


def test_the_game_secret_is_read_only_in_the_games_namespace(played: Played) -> None:
    # The API server's audit log of the operator's identity, not what the operator says it did.
    reads = {
        (r.namespace, r.name, r.verb)
        for r in played.api.audit(played.operator.user)
        if r.resource == "secrets"
    }
    assert reads == {(played.api.namespace, SECRET, "get")}, reads
    assert Path(played.operator.log).exists()
