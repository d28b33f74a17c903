"""The CRD from `crds/` on the real API server: accepted, its CEL rules compiled (within the
cost budget, or the server refuses the CRD), and those rules reject what they promise to.
Then every broken game in `tests/bad_games/` is sent to the API server and to `sparring
validate`: the table below records which of the two rejects it, and none passes both.
The runtime CRDs (SparringRuntime, ClusterSparringRuntime) from `crds/` are installed too: a
valid runtime of each kind is accepted, and so are the chart's default runtime and its phase
pods' NetworkPolicy (server-side dry run).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.config
import pytest
import yaml
from harness.chartops import CHART
from harness.chartops import render as render_chart
from harness.controlplane import ControlPlane
from harness.fixtures import install_crd
from harness.gameops import GROUP, PLURAL, ROOT, VERSION
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from sparring_operator.crdgen import runtime_crd_path
from sparring_operator.runtimeapi import CLUSTER_RUNTIME_PLURAL, RUNTIME_PLURAL
from sparring_operator.validate import check_file

BAD_GAMES = sorted((ROOT / "tests" / "bad_games").glob("*.yaml"))
GOOD = yaml.safe_load((ROOT / "examples" / "apo-tiny.yaml").read_text())

# Who rejects each broken file: "api" (the API server, when applied), "validate" (`sparring
# validate`), or "both". Files that are not one YAML mapping never reach the API server: kubectl
# refuses them itself, so the API server column says "-" (not sent) for them.
REJECTED_BY = {
    "apl-gail-mode.yaml": "validate",  # the operator refuses it too (InvalidSpec)
    "apl-without-settings.yaml": "validate",
    "bad-update-method.yaml": "both",
    "data-hf-reference.yaml": "validate",  # the operator refuses it too (InvalidSpec)
    "data-path-dotdot.yaml": "validate",
    "data-unknown-builtin.yaml": "validate",  # the operator refuses it too (InvalidSpec)
    "duplicate-key.yaml": "validate",
    "empty.yaml": "validate",
    "gpu-batch-uneven.yaml": "validate",  # the operator refuses it too (InvalidSpec)
    "inline-credentials.yaml": "both",
    "missing-local-model.yaml": "validate",  # on a cluster the path is in the pod: exit 3 there
    "multi-document.yaml": "validate",
    "name-too-long.yaml": "both",
    "negative-learning-rate.yaml": "both",
    "not-a-mapping.yaml": "validate",
    "pod-env-credential.yaml": "validate",  # the operator refuses it too (InvalidSpec)
    "pod-env-reserved.yaml": "validate",  # the operator refuses it too (InvalidSpec)
    "pod-mount-unknown-volume.yaml": "validate",  # the operator refuses it too (InvalidSpec)
    "pod-volume-hostpath.yaml": "both",
    "qlora.yaml": "validate",  # the operator refuses it too (InvalidSpec) before any Job
    "rounds-zero.yaml": "both",
    "samples-per-query-one.yaml": "both",
    "snake-case-path.yaml": "both",
    "storage-http.yaml": "validate",
    "syntax-error.yaml": "validate",
    "toleration-index.yaml": "both",
    "unknown-field.yaml": "both",
    "wrong-api-version.yaml": "both",
    "wrong-kind.yaml": "both",
}


def _custom(kube: Any) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(kube.client)


def _create(kube: Any, doc: dict[str, Any]) -> dict[str, Any]:
    # Strict field validation, as `kubectl apply` sends by default: unknown fields are errors.
    return dict(
        _custom(kube).create_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, PLURAL, doc, field_validation="Strict"
        )
    )


def _reason(err: ApiException) -> str:
    try:
        return str(json.loads(err.body).get("message"))
    except (TypeError, ValueError):
        return str(err.reason)


def test_the_crd_rules_reject_what_they_promise(kube: Any) -> None:
    game = copy.deepcopy(GOOD)
    game["metadata"] = {"name": "cel-rules"}
    _create(kube, game)

    def patch(spec: dict[str, Any]) -> ApiException:
        with pytest.raises(ApiException) as refused:
            _custom(kube).patch_namespaced_custom_object(
                GROUP, VERSION, kube.namespace, PLURAL, "cel-rules", {"spec": spec}
            )
        assert refused.value.status == 422, refused.value
        return refused.value

    rounds = game["spec"]["rounds"]
    assert "may grow but never shrink" in _reason(patch({"rounds": rounds - 1}))
    changed = {"uri": "s3://another-bucket/games"}
    assert "spec.storage is immutable" in _reason(patch({"storage": changed}))
    # Growing is allowed, and so is leaving storage as it is.
    _custom(kube).patch_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, PLURAL, "cel-rules", {"spec": {"rounds": rounds + 1}}
    )

    # spec.game may change while the game is Pending, and not once it has started.
    lr = {"game": {"policy": {"update": {"learningRate": 0.0003}}}}
    _custom(kube).patch_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, PLURAL, "cel-rules", {"spec": lr}
    )
    _custom(kube).patch_namespaced_custom_object_status(
        GROUP, VERSION, kube.namespace, PLURAL, "cel-rules", {"status": {"phase": "Running"}}
    )
    lr["game"]["policy"]["update"]["learningRate"] = 0.0004
    assert "spec.game is immutable once the game has started" in _reason(patch(lr))
    _custom(kube).patch_namespaced_custom_object(  # rounds may still grow
        GROUP, VERSION, kube.namespace, PLURAL, "cel-rules", {"spec": {"rounds": rounds + 2}}
    )

    too_long = copy.deepcopy(GOOD)
    too_long["metadata"] = {"name": "a" * 37}
    with pytest.raises(ApiException) as refused:
        _create(kube, too_long)
    assert "metadata.name must be at most 36 characters" in _reason(refused.value)
    fits = copy.deepcopy(GOOD)
    fits["metadata"] = {"name": "a" * 36}
    _create(kube, fits)


def _api_verdict(kube: Any, path: Path) -> str:
    """ "reject" / "accept" from the API server; "-" when the file is not one mapping."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError:
        return "-"
    if len(docs) != 1 or not isinstance(docs[0], dict):
        return "-"
    doc = docs[0]
    doc.setdefault("metadata", {}).pop("namespace", None)
    if doc.get("kind") != "AdversarialGame" or doc.get("apiVersion") != f"{GROUP}/{VERSION}":
        # The server has no such kind: what kubectl would send goes nowhere.
        return "reject"
    try:
        created = _create(kube, doc)
    except ApiException as err:
        assert err.status in (400, 422), err
        return "reject"
    _custom(kube).delete_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, PLURAL, created["metadata"]["name"]
    )
    return "accept"


def test_every_bad_game_is_rejected_by_the_api_server_or_by_validate(kube: Any) -> None:
    seen = {}
    for path in BAD_GAMES:
        api = _api_verdict(kube, path)
        validated = "reject" if check_file(path).errors else "accept"
        assert (api, validated) != ("accept", "accept"), f"{path.name} passes both"
        who = {("reject", "reject"): "both", ("reject", "accept"): "api"}.get(
            (api, validated), "validate"
        )
        seen[path.name] = who
    assert seen == REJECTED_BY


def test_every_pod_setting_is_accepted_by_the_api_server(kube: Any) -> None:
    """A game with every pod setting is a valid resource, and the Job built from it is one
    too: created server-side (dry run), so the API server's own validation of the pod
    template, not only our schema, accepts what the builder writes."""
    from sparring_operator.api import AdversarialGame
    from sparring_operator.jobs import OperatorSettings, build_job

    doc = yaml.safe_load((ROOT / "tests" / "data" / "pod-settings.yaml").read_text())
    doc["metadata"]["namespace"] = kube.namespace
    doc["spec"]["modelCache"] = {"ephemeral": {"size": "500Gi", "storageClassName": "local-nvme"}}
    created = _create(kube, copy.deepcopy(doc))
    assert created["spec"]["pod"]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "hf"
    game = AdversarialGame.model_validate(doc)
    job = build_job(game, 0, "prepare", 1, OperatorSettings())
    accepted = k8s.BatchV1Api(kube.client).create_namespaced_job(
        kube.namespace, job, dry_run="All", field_validation="Strict"
    )
    pod = accepted.spec.template.spec
    assert pod.runtime_class_name == "nvidia" and pod.image_pull_secrets[0].name == "registry"
    assert [v.name for v in pod.volumes] == [
        "game", "scratch", "shm", "model-cache", "datasets", "certs"
    ]  # fmt: skip
    claim = pod.volumes[3].ephemeral.volume_claim_template.spec
    assert claim.storage_class_name == "local-nvme"
    assert claim.resources.requests == {"storage": "500Gi"}
    assert pod.containers[0].env[-2].value_from.secret_key_ref.key == "token"
    assert pod.affinity.node_affinity is not None and pod.topology_spread_constraints


def test_a_multi_node_attempt_is_accepted_by_the_api_server(kube: Any) -> None:
    """The Indexed Job of a two-node attempt and its headless Service, created server-side
    (dry run): what the builders write for `nodes > 1` is valid for the API server itself."""
    from sparring_operator.api import AdversarialGame
    from sparring_operator.jobs import OperatorSettings, build_job
    from sparring_operator.rendezvous import build_rendezvous_service

    doc = copy.deepcopy(GOOD) | {"metadata": {"name": "nodes", "namespace": kube.namespace}}
    game = AdversarialGame.model_validate(doc)
    res = game.spec.phases.default.resources.model_copy(update={"nodes": 2, "gpu": 1})
    phases = game.spec.phases.model_copy(
        update={"default": game.spec.phases.default.model_copy(update={"resources": res})}
    )
    game = game.model_copy(update={"spec": game.spec.model_copy(update={"phases": phases})})
    service = build_rendezvous_service(game, 1, "update-policy", 1)
    job = build_job(game, 1, "update-policy", 1, OperatorSettings())
    created_service = k8s.CoreV1Api(kube.client).create_namespaced_service(
        kube.namespace, service, dry_run="All", field_validation="Strict"
    )
    assert created_service.spec.cluster_ip == "None"
    created = k8s.BatchV1Api(kube.client).create_namespaced_job(
        kube.namespace, job, dry_run="All", field_validation="Strict"
    )
    assert created.spec.completion_mode == "Indexed" and created.spec.completions == 2
    assert created.spec.template.spec.subdomain == service["metadata"]["name"]


# --- the runtimes ---------------------------------------------------------------------------

RUNTIME = {
    "images": ["registry.example.com/ml/sparring-trainer:0.1.0",
               "registry.example.com/ml/sparring-trainer:*"],
    "serviceAccountName": "sparring-phase",
    "phases": {"default": {"resources": {"gpu": 1, "memory": "32Gi"}},
               "updatePolicy": {"resources": {"gpu": 8, "nodes": 2}}},
    "scheduling": {"queueName": "ml", "nodeSelector": {"pool": "gpu"},
                   "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "storage": {"uri": "s3://games/prod", "endpoint": "https://minio.example.com:9000",
                "pathStyle": True, "secretRef": {"name": "s3-credentials"},
                "allowedUris": ["s3://scratch"], "allowedEndpoints": ["https://*.s3.example.com"]},
    "allowedModelSources": ["hf://meta-llama/"],
    "overridable": ["resources", "scheduling", "storage"],
}  # fmt: skip


@pytest.fixture(scope="module")
def runtime_crds(control_plane: ControlPlane) -> None:
    """Both runtime CRDs from `crds/`, installed once (left installed, like the game's: the
    control plane lives for the session; one installed already is taken as it is)."""
    client = kubernetes.config.new_client_from_config(
        config_file=str(control_plane.kubeconfig), persist_config=False
    )
    try:
        for cluster in (False, True):
            try:
                install_crd(client, ROOT / runtime_crd_path(cluster))
            except ApiException as err:
                if err.status != 409:
                    raise
    finally:
        client.close()


@pytest.fixture
def cluster_runtimes(kube: Any, runtime_crds: None) -> Iterator[list[str]]:
    """Names of the ClusterSparringRuntimes a test creates, deleted afterwards (a namespace's
    deletion does not reach cluster-scoped objects)."""
    names: list[str] = []
    yield names
    for name in names:
        _custom(kube).delete_cluster_custom_object(GROUP, VERSION, CLUSTER_RUNTIME_PLURAL, name)


def _runtime(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name},
            "spec": copy.deepcopy(spec)}  # fmt: skip


def test_runtimes_of_both_kinds_are_accepted(kube: Any, cluster_runtimes: list[str]) -> None:
    custom = _custom(kube)
    name = f"gpu-{kube.namespace}"
    doc = _runtime("ClusterSparringRuntime", name, RUNTIME)
    created = custom.create_cluster_custom_object(
        GROUP, VERSION, CLUSTER_RUNTIME_PLURAL, doc, field_validation="Strict"
    )
    cluster_runtimes.append(name)
    assert created["spec"]["imagePullPolicy"] == "Always"  # the CRD's default, as the model's
    assert created["spec"]["phases"]["updatePolicy"]["resources"] == {"gpu": 8, "nodes": 2}
    local = custom.create_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, RUNTIME_PLURAL,
        _runtime("SparringRuntime", "team", {"images": ["trainer:1"]}), field_validation="Strict",
    )  # fmt: skip
    assert local["metadata"]["namespace"] == kube.namespace
    # Scalar defaults only (crdgen.scalar_defaults_only); RuntimeSpec fills in the rest.
    assert local["spec"] == {"images": ["trainer:1"], "imagePullPolicy": "Always"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"images": ["trainer:*"]}, "images[0] is the default image"),
        ({"images": []}, "spec.images"),
        ({"images": ["trainer:1"], "overridable": ["game"]}, "spec.overridable[0]"),
        ({"images": ["trainer:1"], "storage": {"bucket": "x"}}, 'unknown field "spec.storage'),
    ],
)
def test_a_broken_runtime_is_refused(
    kube: Any, runtime_crds: None, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as refused:
        _custom(kube).create_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, RUNTIME_PLURAL,
            _runtime("SparringRuntime", "broken", spec), field_validation="Strict",
        )  # fmt: skip
    assert refused.value.status in (400, 422), refused.value
    assert message in _reason(refused.value)


@pytest.mark.parametrize("values_file", [None, "ci-values.yaml"])
def test_the_charts_default_runtime_and_phase_network_policy_are_accepted(
    kube: Any, runtime_crds: None, values_file: str | None
) -> None:
    """What the chart renders for the runtime and the phase pods, sent with server-side dry
    run and strict field validation: the CRD (and RuntimeSpec's aliases) and the NetworkPolicy
    API accept it, `except` blocks included."""
    values: dict[str, Any] = {}
    if values_file:
        values = yaml.safe_load((CHART / "ci" / values_file).read_text(encoding="utf-8"))
    values["crds"] = {"enabled": False}
    values["phaseServiceAccount"] = {"namespaces": [kube.namespace]}
    values["phaseNetworkPolicy"] = {**values.get("phaseNetworkPolicy", {}), "enabled": True}
    objects = render_chart(values, "sparring", "sparring-system")
    (runtime,) = [o for o in objects if o["kind"] == "ClusterSparringRuntime"]
    accepted = _custom(kube).create_cluster_custom_object(
        GROUP, VERSION, CLUSTER_RUNTIME_PLURAL, runtime, dry_run="All", field_validation="Strict"
    )
    assert accepted["spec"]["images"] == runtime["spec"]["images"]
    (policy,) = [
        o for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == kube.namespace
    ]  # fmt: skip
    assert policy["metadata"]["labels"]["app.kubernetes.io/component"] == "phase"
    answer = k8s.NetworkingV1Api(kube.client).create_namespaced_network_policy(
        kube.namespace, policy, dry_run="All", field_validation="Strict"
    )
    blocks = [
        peer.ip_block for rule in answer.spec.egress for peer in rule.to or [] if peer.ip_block
    ]
    assert blocks and all(b._except for b in blocks if b.cidr in ("0.0.0.0/0", "::/0"))
