"""The artifact store goes away and comes back; corrupted or truncated objects are refused.

Outage: the game's S3 endpoint is a TCP proxy (`faultops.TcpGate`) in front of the session's
moto server. Closing the gate makes the endpoint refuse connections for the operator and for
the phase pods alike, while the test still reaches moto directly. moto keeps its data in
memory, so the proxy, not moto, is what goes down: the data is still there when it comes back.

Corruption: every reader of a phase's outputs checks what it reads against the phase's
`_SUCCESS` manifest (size and sha256): `require_committed(verify=True)` for a whole phase, and
the phases' own `PhaseContext.read_jsonl/read_metrics/fetch_dir` for the objects they use.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from faultops import (
    GAME,
    TcpGate,
    Watchdog,
    assert_store_intact,
    attempts,
    condition,
    pod_messages,
)
from harness.gameops import (
    PHASES,
    ROOT,
    Operator,
    apo_tiny,
    create,
    create_secret,
    get,
    wait_phase,
)
from harness.rawclient import wait_for
from sparring_trainer.contract import make_context
from sparring_trainer.document import GameDocument, StorageSpec
from sparring_trainer.store import (
    ArtifactStore,
    UncommittedError,
    commit,
    open_store,
    phase_prefix,
    require_committed,
)

T = 180.0


@pytest.mark.slow  # ~45 s on 2 cores: run by .ci/run, not by default
def test_store_outage_stalls_the_game_fails_the_phase_retryably_then_the_game_completes(
    kube_env: Any, kubelet: Any, operator: Operator, s3_server: str, s3_storage: StorageSpec
) -> None:
    moto = urlparse(s3_server)
    gate = TcpGate((moto.hostname or "127.0.0.1", moto.port or 80)).open()
    create_secret(kube_env, "s3-credentials", "testing", "testing")
    through_gate = StorageSpec(uri=s3_storage.uri, endpoint=gate.url, path_style=True)
    store = open_store(s3_storage)  # the test's own view goes straight to moto
    tail = operator.tail
    try:
        with Watchdog(kube_env, kubelet) as dog:
            create(kube_env, apo_tiny(through_gate, rounds=1))
            wait_for(lambda: kubelet.running(f"{GAME}-r0001-sample-a1"), T, message=tail)
            gate.close()  # sample-a1 has just started: it cannot read its inputs or commit
            stalled = wait_for(
                lambda: (
                    condition(get(kube_env, GAME), "Stalled").get("status") == "True"
                    and condition(get(kube_env, GAME), "Stalled")
                ),
                T,
                message=tail,
            )
            failed = kubelet.wait_job(f"{GAME}-r0001-sample-a1", timeout=T)
            gate.open()
            obj = wait_phase(kube_env, GAME, "Succeeded", operator)
        dog.check()
    finally:
        gate.close()

    # Meanwhile the game said why it waits, naming the store.
    assert stalled["reason"] == "StoreUnavailable", stalled
    assert s3_storage.uri in stalled["message"], stalled
    # The phase failed as "retryable": exit 1 ended its Job at once (the pod failure policy's
    # catch-all rule), and the exit code, not 2 or 3, made it a retry ...
    reasons = {c["type"]: c.get("reason") for c in failed["status"]["conditions"]}
    assert reasons.get("Failed") == "PodFailurePolicy", reasons
    [message] = pod_messages(kube_env, f"{GAME}-r0001-sample-a1")
    assert json.loads(message)["exitCode"] == 1 and "s3://" in json.loads(message)["error"]
    # ... once, and nothing else ran twice; the stall is over and nothing committed was lost.
    expected = {(0, "prepare"): [f"{GAME}-r0000-prepare-a1"]}
    expected |= {(1, p): [f"{GAME}-r0001-{p}-a1"] for p in PHASES}
    expected[(1, "sample")].append(f"{GAME}-r0001-sample-a2")
    assert attempts(kube_env) == expected
    assert condition(obj, "Stalled")["status"] == "False"
    assert obj["status"]["completedRounds"] == 1
    assert_store_intact(store, kube_env.namespace)

    # A committed checkpoint corrupted in the store afterwards is refused, not loaded.
    policy = phase_prefix(kube_env.namespace, GAME, 1, "update-policy")
    key = f"{s3_storage.uri.split('/', 3)[3]}/{policy}policy/model.safetensors"
    bucket = s3_storage.uri.split("/")[2]
    s3 = store._client  # type: ignore[attr-defined]
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size, one bit pattern flipped
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(UncommittedError, match=r"model\.safetensors does not match"):
        require_committed(store, policy, verify=True)
    played = apo_tiny(s3_storage, rounds=1)
    played["metadata"]["namespace"] = kube_env.namespace
    doc = GameDocument.model_validate(played)
    evaluate = make_context(doc, 1, "evaluate", Path(kubelet.root) / "reader")
    with pytest.raises(UncommittedError, match=r"model\.safetensors does not match"):
        evaluate.fetch_dir(1, "update-policy", "policy")


# ---- readers check what they read ---------------------------------------------------------


def _commit_fake_phase(store: ArtifactStore, tmp: Path) -> str:
    """round 1 update-adversary with a checkpoint dir, a jsonl and metrics, committed."""
    prefix = phase_prefix("default", GAME, 1, "update-adversary")
    ckpt = tmp / "rm"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"hidden": 8}')
    (ckpt / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    store.upload_tree(ckpt, prefix + "rm/")
    store.put_bytes(prefix + "pairs.jsonl", b'{"a": 1}\n{"a": 2}\n')
    store.put_bytes(prefix + "metrics.json", b'{"rm_loss": 0.5}')
    commit(store, prefix)
    return prefix


def _damage(store: ArtifactStore, key: str, how: str) -> None:
    data = store.get_bytes(key)
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "corrupted":
        data = data[:-1] + bytes([data[-1] ^ 0x01])
    if store.uri.startswith("s3://"):  # a raw PUT: no sha256 metadata, as a foreign writer
        bucket, _, root = store.uri[len("s3://") :].partition("/")
        store._client.put_object(  # type: ignore[attr-defined]
            Bucket=bucket, Key=f"{root}/{key}" if root else key, Body=data
        )
    else:
        (Path(store.uri[len("file://") :]) / key).write_bytes(data)


@pytest.fixture(params=["file", "s3"])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageSpec:
    if request.param == "file":
        return StorageSpec(uri=f"file://{tmp_path / 'store'}")
    return StorageSpec.model_validate(request.getfixturevalue("s3_storage"))


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
@pytest.mark.parametrize(
    "name,read",
    [
        ("rm/model.safetensors", lambda ctx: ctx.fetch_dir(1, "update-adversary", "rm")),
        ("pairs.jsonl", lambda ctx: ctx.read_jsonl(1, "update-adversary", "pairs.jsonl")),
        ("metrics.json", lambda ctx: ctx.read_metrics(1, "update-adversary")),
    ],
)
def test_phase_inputs_are_checked_against_the_manifest_as_they_are_read(
    any_storage: StorageSpec, tmp_path: Path, how: str, name: str, read: Any
) -> None:
    store = open_store(any_storage)
    prefix = _commit_fake_phase(store, tmp_path)
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"]["storage"] = any_storage.model_dump(by_alias=True, exclude_none=True)
    game = GameDocument.model_validate(doc)

    scratches = itertools.count()

    def reader() -> Any:  # a fresh scratch each time: no local copy from the intact read
        return make_context(game, 1, "score", tmp_path / f"ctx-{next(scratches)}")

    assert read(reader())  # intact: read as before
    _damage(store, prefix + name, how)
    with pytest.raises(UncommittedError, match=f"{name} does not match"):
        read(reader())
    with pytest.raises(UncommittedError, match=f"{name} does not match"):
        require_committed(store, prefix, verify=True)
