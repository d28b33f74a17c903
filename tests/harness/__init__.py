"""A Kubernetes stand-in for tests on a machine with no cluster and no Docker.

* :class:`KubeApi` (``kubeapi.py``): an API server on 127.0.0.1 built on kmock
  (``apiserver.py``: HTTP, request log, faults; ``watches.py``; ``store.py`` + ``deletion.py``:
  object semantics; ``patching.py``, ``selectors.py``, ``resources.py``: formats and kinds).
* :class:`LocalKubelet` (``kubelet.py``): runs each Job's container command as a local process
  (``podspec.py``) and reports Pod and Job status as the kubelet and the Job controller would
  (``jobcontrol.py``).
* pytest fixtures ``kube_api``, ``kube_env``, ``kubelet`` (``fixtures.py``); in-process kopf
  with ``kopfrun.kopf_runner()``; ``rawclient.wait_for()`` for polling; ``mini_operator.py``.
"""

from .apiserver import RequestRecord
from .errors import ApiError
from .kubeapi import KubeApi
from .kubelet import LocalKubelet
from .resources import ADVERSARIAL_GAMES, ResourceDef

__all__ = [
    "ADVERSARIAL_GAMES",
    "ApiError",
    "KubeApi",
    "LocalKubelet",
    "RequestRecord",
    "ResourceDef",
]
