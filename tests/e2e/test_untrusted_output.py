"""A phase's metrics.json comes from a user-chosen image and is not trusted (issue "The operator,
correct on a real cluster", 6): a NaN (which the API server cannot even parse in a status
write), a non-number or hundreds of keys fail the game as bad output, naming the phase and the
key, instead of blocking every status write or flooding status and Prometheus labels."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness.gameops import Operator, create, jobs, wait_phase
from sparring_operator.observed import BadOutput, checked_metrics
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import commit, open_store, phase_prefix


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    found = [c for c in obj["status"].get("conditions") or [] if c["type"] == ctype]
    return found[0] if found else {}


BAD = {
    "nan": (b'{"rm_accuracy": NaN}', "'rm_accuracy' is 'nan': not a finite number"),
    "word": (b'{"rm_accuracy": "high"}', "'rm_accuracy' is 'high': not a finite number"),
    "many": (
        json.dumps({f"m{i}": i for i in range(500)}).encode(),
        "metrics.json has 500 keys; at most 64",
    ),
}


@pytest.mark.parametrize("raw,message", BAD.values(), ids=list(BAD))
def test_checked_metrics_refuses_what_status_and_prometheus_cannot_hold(
    raw: bytes, message: str
) -> None:
    with pytest.raises(BadOutput, match="round 0 prepare: ") as refused:
        checked_metrics(raw, "round 0 prepare")
    assert message in str(refused.value)
    assert checked_metrics(b'{"rm_accuracy": 1, "x.y-z": 0.5}', "p") == {
        "rm_accuracy": 1.0,
        "x.y-z": 0.5,
    }
    with pytest.raises(BadOutput, match="metric name"):
        checked_metrics(b'{"a b": 1}', "p")


def test_a_committed_phase_with_a_nan_metric_fails_the_game_naming_it(
    kube_env: Any, operator: Operator, s3_game: dict[str, Any], s3_storage: StorageSpec
) -> None:
    # Round 0 as a rogue image would commit it: a checkpoint, and a NaN among its metrics.
    store = open_store(s3_storage)
    prefix = phase_prefix(kube_env.namespace, "apo-tiny", 0, "prepare")
    store.put_bytes(prefix + "policy/model.bin", b"weights")
    store.put_bytes(prefix + "metrics.json", b'{"compute_seconds": 1.5, "rm_accuracy": NaN}')
    commit(store, prefix)

    create(kube_env, s3_game)
    obj = wait_phase(kube_env, "apo-tiny", "Failed", operator, timeout=60)
    failed = condition(obj, "Failed")
    assert failed["reason"] == "BadPhaseOutput", failed
    assert "round 0 prepare: metric 'rm_accuracy' is 'nan'" in obj["status"]["message"]
    assert not jobs(kube_env, "apo-tiny")  # nothing after the bad phase was played
    reasons = [e["reason"] for e in kube_env.list("v1/events")]
    assert reasons.count("BadPhaseOutput") == 1, reasons
