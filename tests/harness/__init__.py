"""A Kubernetes stand-in for tests on a machine with no cluster and no Docker.

* :class:`KubeApi` (``kubeapi.py``): an API server on 127.0.0.1 built on kmock, with the object
  semantics kopf and the operator need (``store.py``), a request log and fault injection.
* :class:`LocalKubelet` (``kubelet.py``): runs each Job's container command as a local process
  and reports Pod and Job status the way the kubelet and the Job controller would.
* pytest fixtures ``kube_api`` and ``kubelet`` (``fixtures.py``).
"""

from .apiserver import RequestRecord
from .errors import ApiError
from .kubeapi import KubeApi
from .resources import ADVERSARIAL_GAMES, ResourceDef

__all__ = ["ADVERSARIAL_GAMES", "ApiError", "KubeApi", "RequestRecord", "ResourceDef"]
