"""The chart, rendered and installed with the real Helm library (helm-python-sdk).

The suites run the operator as a process that authenticates as the chart's ServiceAccount, with
the chart's own RBAC objects applied to the test's namespace: every call it makes is authorized
(or refused) by those rules, as on a cluster. The install test installs the whole chart.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.utils
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sparring"
IDENTITY_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


def render(values: dict[str, Any], release: str, namespace: str) -> list[dict[str, Any]]:
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(
            values=copy.deepcopy(values), name=release, namespace=namespace, is_install=True
        )
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith("NOTES.txt"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def namespaced_values(namespace: str) -> dict[str, Any]:
    """The chart's namespaced variant, watching `namespace` only."""
    return {
        "watchNamespaces": [namespace],
        "rbac": {"scope": "namespace", "observeClusterScope": True},
        "crds": {"enabled": False},
    }


def apply_identity(
    client: kubernetes.client.ApiClient, namespace: str, release: str
) -> tuple[str, str]:
    """Create the chart's ServiceAccount and RBAC for an operator watching `namespace`;
    returns (username, a fresh token for it)."""
    objects = [
        o
        for o in render(namespaced_values(namespace), release, namespace)
        if o["kind"] in IDENTITY_KINDS
    ]
    for obj in objects:
        kubernetes.utils.create_from_dict(client, obj, namespace=namespace)
    # The chart makes two ServiceAccounts: the operator's and the phase pods' (component phase).
    sa = next(
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "ServiceAccount"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    )
    return f"system:serviceaccount:{namespace}:{sa}", token(client, namespace, sa)


def token(client: kubernetes.client.ApiClient, namespace: str, sa: str, seconds: int = 7200) -> str:
    request = kubernetes.client.CoreV1Api(client).create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": seconds}}
    )
    return str(request.status.token)


def delete_cluster_objects(client: kubernetes.client.ApiClient, release: str) -> None:
    """The cluster-scoped objects `apply_identity` made (a namespace's deletion leaves them)."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(client)
    selector = f"app.kubernetes.io/instance={release}"
    for binding in rbac.list_cluster_role_binding(label_selector=selector).items:
        rbac.delete_cluster_role_binding(binding.metadata.name)
    for role in rbac.list_cluster_role(label_selector=selector).items:
        rbac.delete_cluster_role(role.metadata.name)
