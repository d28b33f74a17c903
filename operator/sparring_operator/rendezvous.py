"""The headless Service of a multi-node phase attempt (a pure manifest builder, as jobs.py).

Each pod of a multi-node attempt's Indexed Job gets the hostname JOB-INDEX and the Job's name
as its subdomain; this Service, named as the Job, publishes those names in cluster DNS, so that
every node's torchrun finds pod 0 (`jobs.rendezvous_host`). The same shape as Kubeflow
Trainer's JobSet and PyTorchJob.
"""

from __future__ import annotations

from typing import Any

from sparring_operator.api import AdversarialGame
from sparring_operator.jobs import RENDEZVOUS_PORT, job_name, phase_labels


def build_rendezvous_service(
    game: AdversarialGame, round: int, phase: str, attempt: int
) -> dict[str, Any]:
    """The headless Service of a multi-node attempt, named as its Job: it gives each pod a DNS
    name as soon as it exists (publishNotReadyAddresses: the pods have no readiness to wait
    for), so that the other nodes find pod 0. Owner references are added by the caller."""
    name = job_name(game.metadata.name, round, phase, attempt)
    labels = phase_labels(game, round, phase, attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": game.metadata.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "protocol": "TCP"}],
        },
    }
