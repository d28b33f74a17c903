"""What the chart renders, sent to the real API server: every object of the default values and
of each `charts/sparring/ci/*.yaml` is created with server-side dry run (`dryRun=All`, strict
field validation), so the API server validates, defaults and admits it without storing it.
A name or namespace it would refuse (a glob in `watchNamespaces`, say) fails here, not at
`helm install`.

Why the kubernetes client and not Helm's own `install(..., dry_run="server")`: Helm's server dry
run only maps each kind through discovery; it never sends the objects, so it accepts a
`metadata.name` of `Bad_Name` or a namespace that does not exist.

The CRD is installed by the session fixture (from `crds/`, which tests/test_chart.py keeps
identical to the chart's copy), so it is rendered with `crds.enabled=false`. The Prometheus
operator's kinds get a stand-in CRD here that checks metadata only (name, namespace, labels);
their specs are checked against hand-written schemas in tests/test_chart.py.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.dynamic
import pytest
import yaml
from harness.chartops import CHART, render
from harness.controlplane import ControlPlane
from harness.rawclient import wait_for
from kubernetes.client.rest import ApiException

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the `dev` extra) is needed")

RELEASE = "sparring"
RELEASE_NAMESPACE = f"sparring-dry-{uuid.uuid4().hex[:6]}"
VALUE_SETS = {"default": {}} | {
    f"ci/{p.name}": yaml.safe_load(p.read_text(encoding="utf-8"))
    for p in sorted((CHART / "ci").glob("*.yaml"))
}
# Stand-ins for the Prometheus operator's CRDs (kind, plural): metadata checked, spec kept as is.
MONITORING_KINDS = [("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")]


def _values(name: str) -> dict[str, Any]:
    values = copy.deepcopy(VALUE_SETS[name])
    values.setdefault("crds", {})["enabled"] = False
    return values


def _message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body).get("message"))
    except (TypeError, ValueError):
        return str(err.reason)


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(
        config_file=str(control_plane.kubeconfig), persist_config=False
    )
    try:
        yield client
    finally:
        client.close()


def _stand_in_crd(kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def dynamic(admin: kubernetes.client.ApiClient) -> Iterator[kubernetes.dynamic.DynamicClient]:
    """A dynamic client that knows every kind the chart renders: the stand-in monitoring CRDs
    and every namespace the value sets name are created (and deleted afterwards) first."""
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    core = kubernetes.client.CoreV1Api(admin)
    crds, namespaces = [], []
    try:
        for kind, plural in MONITORING_KINDS:
            crd = _stand_in_crd(kind, plural)
            try:
                ext.create_custom_resource_definition(crd)
            except ApiException as err:
                if err.status != 409:
                    raise
                continue
            crds.append(crd["metadata"]["name"])
        for name in crds:
            wait_for(
                lambda name=name: any(
                    c.type == "Established" and c.status == "True"
                    for c in ext.read_custom_resource_definition(name).status.conditions or []
                ),
                30,
                message=f"{name} was never Established",
            )
        wanted = {RELEASE_NAMESPACE} | {
            obj["metadata"]["namespace"]
            for name in VALUE_SETS
            for obj in render(_values(name), RELEASE, RELEASE_NAMESPACE)
            if obj["metadata"].get("namespace")
        }
        existing = {ns.metadata.name for ns in core.list_namespace().items}
        for name in sorted(wanted - existing):
            core.create_namespace({"metadata": {"name": name}})
            namespaces.append(name)
        yield kubernetes.dynamic.DynamicClient(admin)
    finally:
        for name in namespaces:
            core.delete_namespace(name)
        for name in crds:
            ext.delete_custom_resource_definition(name)


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_every_rendered_object_is_accepted_by_the_api_server(
    dynamic: kubernetes.dynamic.DynamicClient, admin: kubernetes.client.ApiClient, values_name: str
) -> None:
    objects = render(_values(values_name), RELEASE, RELEASE_NAMESPACE)
    assert objects
    refused = []
    for obj in objects:
        meta = obj["metadata"]
        where = f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = meta.get("namespace") if resource.namespaced else None
        assert bool(namespace) == resource.namespaced, f"{where}: namespace does not fit the kind"
        try:
            answer = resource.create(
                body=obj,
                namespace=namespace,
                dry_run="All",
                # As `kubectl apply` sends it: an unknown field is an error, not a warning.
                query_params=[("fieldValidation", "Strict")],
            )
        except ApiException as err:
            refused.append(f"{where}: {err.status} {_message(err)}")
            continue
        # The server answered with the object as it would have stored it.
        assert answer.metadata.name == meta["name"], where
        assert answer.metadata.uid, where
    assert not refused, f"{values_name}: the API server refused:\n" + "\n".join(refused)
    # Dry run: nothing was stored.
    apps = kubernetes.client.AppsV1Api(admin)
    assert not apps.list_namespaced_deployment(RELEASE_NAMESPACE).items


def test_a_glob_namespace_is_refused_at_render_time_as_the_api_server_would(
    admin: kubernetes.client.ApiClient,
) -> None:
    # The API server cannot hold a namespace "team-*", so nothing rendered into it can exist.
    with pytest.raises(ApiException) as refused:
        kubernetes.client.CoreV1Api(admin).create_namespace(
            {"metadata": {"name": "team-*"}}, dry_run="All"
        )
    assert refused.value.status == 422, refused.value
    assert "RFC 1123" in _message(refused.value)
    # The chart says so before anything is sent, naming the value.
    for key, values in [
        ("watchNamespaces", {"watchNamespaces": ["team-*"]}),
        ("phaseServiceAccount.namespaces", {"phaseServiceAccount": {"namespaces": ["team-*"]}}),
    ]:
        with pytest.raises(helm.HelmError, match=rf'{key}\[0\] = "team-\*" is not a namespace'):
            render({**values, "crds": {"enabled": False}}, RELEASE, RELEASE_NAMESPACE)
