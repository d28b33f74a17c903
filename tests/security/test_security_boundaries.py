"""Trust boundaries between games: Secrets of the game's own namespace only, store paths that
stay inside the game's own prefix, and names and URIs that cannot climb out of it.

* A game whose `secretRef` names a Secret that exists only in another namespace is Stalled
  (reason SecretUnavailable, naming Secret and namespace), creates no Job, and the operator
  never asks for a Secret outside the game's namespace; once the Secret exists in the game's
  namespace the game starts by itself. A Secret that lacks a key is reported the same way.
* Every artifact of a game lives under `{namespace}/{game}/`: two different games' prefixes
  are never one inside the other (property-tested), and keys, names, URIs and references with
  `..`, absolute paths, backslashes or control characters are rejected (tables), by validation
  before anything runs and by the store on every key.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from faultops import GAME, attempts, condition
from harness.gameops import Operator, apo_tiny, create, create_secret, get
from harness.rawclient import wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client as k8s
from pydantic import ValidationError
from sparring_operator.api import AdversarialGame
from sparring_trainer.document import GameDocument, StorageSpec
from sparring_trainer.store import (
    FileStore,
    StoreError,
    UncommittedError,
    check_key,
    commit,
    game_prefix,
    phase_prefix,
    require_committed,
)

T = 60.0


def _stalled(api: Any, name: str) -> dict[str, Any] | None:
    cond = condition(get(api, name), "Stalled")
    return cond if cond.get("status") == "True" else None


def test_a_game_can_only_use_secrets_of_its_own_namespace(
    kube_env: Any, operator: Operator, s3_storage: StorageSpec
) -> None:
    core = k8s.CoreV1Api(kube_env.client)
    team_b = kube_env.namespace + "-b"
    core.create_namespace({"metadata": {"name": team_b}})
    create_secret(kube_env, "s3-credentials", "testing", "testing", namespace=team_b)
    core.create_namespaced_secret(
        kube_env.namespace,
        {"metadata": {"name": "half"}, "stringData": {"AWS_ACCESS_KEY_ID": "x"}},
    )
    create(kube_env, apo_tiny(s3_storage, rounds=1))  # secretRef: s3-credentials, only in team B
    no_key = apo_tiny(s3_storage, secret="half", rounds=1)
    no_key["metadata"]["name"] = "no-key"
    create(kube_env, no_key)

    stalled = wait_for(lambda: _stalled(kube_env, GAME), T, message=operator.tail)
    assert stalled["reason"] == "SecretUnavailable"
    expected = f"Secret 's3-credentials' not found in namespace '{kube_env.namespace}'"
    assert expected in stalled["message"]
    half = wait_for(lambda: _stalled(kube_env, "no-key"), T, message=operator.tail)
    assert half["reason"] == "SecretUnavailable"
    assert "'half'" in half["message"] and "no key 'AWS_SECRET_ACCESS_KEY'" in half["message"]
    assert attempts(kube_env) == {} and attempts(kube_env, "no-key") == {}
    # The API server's audit log: every Secret request the operator's identity made.
    operator_reads = {r.namespace for r in kube_env.audit(operator.user) if r.resource == "secrets"}
    assert operator_reads == {kube_env.namespace}
    core.delete_namespace(team_b)

    # Stalled, not Failed: the Secret in the game's own namespace lets the game start.
    create_secret(kube_env, "s3-credentials", "testing", "testing")
    wait_for(lambda: attempts(kube_env), T, message=operator.tail)
    wait_for(lambda: not _stalled(kube_env, GAME), T, message=operator.tail)
    assert get(kube_env, GAME)["status"]["phase"] == "Running"


# ---- store prefixes -----------------------------------------------------------------------

dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
phases = st.sampled_from(["prepare", "sample", "score", "update-adversary", "evaluate"])


@settings(max_examples=200, deadline=None)
@given(a=st.tuples(dns_label, dns_label), b=st.tuples(dns_label, dns_label), r=st.integers(0, 99))
def test_two_games_never_share_a_prefix(a: tuple[str, str], b: tuple[str, str], r: int) -> None:
    pa, pb = game_prefix(*a), game_prefix(*b)
    assert pa == f"{a[0]}/{a[1]}/"
    if a != b:
        assert not pa.startswith(pb) and not pb.startswith(pa)
    for phase in ("prepare", "sample", "update-policy"):
        assert phase_prefix(*a, r, phase).startswith(pa)


@pytest.mark.parametrize(
    "key",
    [
        "../other-game/x",
        "a/../../b",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "a\\..\\b",
        "a\x00b",
        "a\nb",
        "",
        "a/.sparring-tmp-x",
        "..",
    ],
)
def test_store_keys_that_could_escape_are_rejected(tmp_path: Any, key: str) -> None:
    with pytest.raises(StoreError, match="invalid key"):
        check_key(key)
    store = FileStore(tmp_path)
    with pytest.raises(StoreError):
        store.put_bytes(key, b"x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "namespace,game",
    [("..", "g"), ("ns", ".."), ("a/b", "g"), ("ns", "g/../x"), ("", "g"), ("ns", "-g\n")],
)
def test_prefix_names_that_could_escape_are_rejected(namespace: str, game: str) -> None:
    with pytest.raises(StoreError, match="invalid"):
        phase_prefix(namespace, game, 1, "sample")


def test_a_tampered_manifest_cannot_point_outside_its_prefix(tmp_path: Any) -> None:
    store = FileStore(tmp_path)
    prefix = phase_prefix("team-a", "g", 1, "sample")
    store.put_bytes(prefix + "samples.jsonl", b"{}\n")
    commit(store, prefix)
    manifest = json.loads(store.get_bytes(prefix + "_SUCCESS"))
    manifest["files"]["../../../team-b/g/round-0001/sample/samples.jsonl"] = {"size": 3}
    store.put_bytes(prefix + "_SUCCESS", json.dumps(manifest).encode())
    with pytest.raises(UncommittedError, match="not a valid manifest"):
        require_committed(store, prefix, verify=True)


# ---- validation, before anything runs ------------------------------------------------------

BAD_FIELDS = [
    (("spec", "storage", "uri"), "s3://bucket/../team-b", "spec.storage.uri"),
    (("spec", "storage", "uri"), "file://../../etc", "spec.storage.uri"),
    (("spec", "storage", "uri"), "http://bucket/x", "spec.storage.uri"),
    (("spec", "storage", "endpoint"), "file:///var/run/secrets", "spec.storage.endpoint"),
    (("spec", "storage", "secretRef", "name"), "../kube-system/x", "spec.storage.secretRef"),
    (("spec", "storage", "secretRef", "name"), "team-b/keys", "spec.storage.secretRef"),
    (("spec", "storage", "accessKeyId"), "AKIA...", "spec.storage"),
    (("spec", "game", "data", "preferences", "path"), "../../etc/pairs", "spec.game.data"),
    (("spec", "game", "data", "preferences", "path"), "a\\..\\b.jsonl", "spec.game.data"),
    (("spec", "game", "data", "preferences", "path"), " ", "spec.game.data"),
    (("spec", "game", "policy", "model"), "../team-b/policy", "spec.game.policy.model"),
    (("spec", "game", "policy", "model"), "file://../x", "spec.game.policy.model"),
    (("spec", "game", "adversary", "model"), "weird model ref", "spec.game.adversary.model"),
    (("metadata", "name"), "../apo", "metadata.name"),
    (("metadata", "name"), "a/b", "metadata.name"),
    (("metadata", "namespace"), "team-b/x", "metadata.namespace"),
    (("metadata", "name"), "Apo", "metadata.name"),
]


@pytest.mark.parametrize("path,value,field", BAD_FIELDS, ids=[v for _, v, _ in BAD_FIELDS])
def test_names_uris_and_references_that_could_escape_are_rejected(
    s3_server: str, path: tuple[str, ...], value: str, field: str
) -> None:
    doc = apo_tiny(
        StorageSpec(uri="s3://bucket/games", endpoint=s3_server, path_style=True), rounds=1
    )
    doc["metadata"]["namespace"] = "default"
    node = doc
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    with pytest.raises(ValidationError) as operator_view:
        AdversarialGame.model_validate(doc)
    located = [".".join(map(str, e["loc"])) for e in operator_view.value.errors()]
    messages = " ".join(e["msg"] for e in operator_view.value.errors())
    assert any(loc.startswith(field) for loc in located) or field in messages, located
    if path[0] == "spec" and path[1] in ("storage", "game"):
        with pytest.raises(ValidationError):  # the trainer reads the same models
            GameDocument.model_validate(doc)
