"""Children of a previous incarnation (issue "The operator, correct on a real cluster", 4).

A game deleted and re-created under the same name (GitOps does this) finds the old one's Jobs
and ConfigMap still there: the real garbage collector removes them asynchronously. The operator
must neither adopt such a Job (its name is deterministic, so a create answers 409) nor leave
the ConfigMap owned by the dead incarnation, where the collector would delete it under a
running pod. Here the "old incarnation" is another live game object, so that the collector
leaves its children alone and the test is deterministic.
"""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest
from harness.gameops import GROUP, PLURAL, VERSION, apo_tiny, create_secret, get
from harness.rawclient import wait_for
from kubernetes import client as k8s
from sparring_operator.api import AdversarialGame
from sparring_operator.jobs import OperatorSettings, build_configmap, build_job
from sparring_operator.reconcile import Reconciler
from sparring_trainer.document import StorageSpec


def _owner(obj: Any) -> str:
    return next(o.uid for o in obj.metadata.owner_references if o.controller)


def test_a_recreated_game_takes_over_neither_old_jobs_nor_loses_its_configmap(
    kube: Any, s3_storage: StorageSpec
) -> None:
    create_secret(kube, "s3-credentials", "testing", "testing")
    custom, batch, core = (
        k8s.CustomObjectsApi(kube.client),
        k8s.BatchV1Api(kube.client),
        k8s.CoreV1Api(kube.client),
    )
    doc = apo_tiny(s3_storage, rounds=1)
    # The previous incarnation, kept alive under another name, owns children named for ours.
    old_doc = copy.deepcopy(doc) | {"metadata": {"name": "previous"}}
    previous = custom.create_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, PLURAL, old_doc
    )
    game = AdversarialGame.model_validate(
        doc | {"metadata": {"name": "apo-tiny", "namespace": kube.namespace}}
    )
    stale_job = build_job(game, 0, "prepare", 1, OperatorSettings())
    stale_job["spec"]["suspend"] = True  # a leftover: it never needs to run here
    stale_cm = build_configmap(game)
    for child in (stale_job, stale_cm):
        kopf.adopt(child, owner=previous)
    batch.create_namespaced_job(kube.namespace, stale_job)
    core.create_namespaced_config_map(kube.namespace, stale_cm)

    created = custom.create_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL, doc)
    reconciler = Reconciler(kube.client)
    # First pass: the name is taken by the other incarnation's Job: it is deleted, not adopted.
    with pytest.raises(kopf.TemporaryError, match="earlier game of this name"):
        reconciler.reconcile(get(kube, "apo-tiny"))

    def own_job() -> Any:
        try:
            reconciler.reconcile(get(kube, "apo-tiny"))
        except kopf.TemporaryError:
            return None  # the old Job is still going away
        job = batch.read_namespaced_job("apo-tiny-r0000-prepare-a1", kube.namespace)
        return job if _owner(job) == created["metadata"]["uid"] else None

    job = wait_for(own_job, 60, interval=0.5, message="the game never got a Job of its own")
    assert not job.spec.suspend
    cm = core.read_namespaced_config_map("apo-tiny-game", kube.namespace)
    assert [o.uid for o in cm.metadata.owner_references] == [created["metadata"]["uid"]]
