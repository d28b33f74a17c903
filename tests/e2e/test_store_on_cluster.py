"""A store no pod can share is refused on a cluster before any Job exists (issue "The operator,
correct on a real cluster", 1): a game without `spec.storage` gets the local default
`file://./.sparring`, which every phase pod would resolve inside its own scratch folder; the
operator marks it Failed (InvalidSpec, naming spec.storage.uri) instead of letting each
successful Job count as a failure until the retries run out."""

from __future__ import annotations

from typing import Any

import yaml
from harness.gameops import ROOT, Operator, create, jobs, wait_phase


def test_a_game_with_the_local_default_store_fails_naming_the_field_and_runs_nothing(
    kube_env: Any, operator: Operator
) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())
    doc["spec"].pop("storage", None)
    create(kube_env, doc)
    obj = wait_phase(kube_env, "apo-tiny", "Failed", operator, timeout=60)
    message = obj["status"]["message"]
    assert message.startswith("invalid spec: spec.storage.uri: 'file://./.sparring'"), message
    reasons = {c["type"]: c["reason"] for c in obj["status"]["conditions"]}
    assert reasons["Failed"] == "InvalidSpec"
    assert not jobs(kube_env, "apo-tiny")
    configmaps = {c["metadata"]["name"] for c in kube_env.list("v1/configmaps")}
    assert configmaps <= {"kube-root-ca.crt"}, configmaps
