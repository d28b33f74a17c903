"""kopf handlers: thin triggers over one level-triggered reconcile.

Creation, resumption, spec updates, a periodic timer and every event of a Job the operator
owns all lead to the same `Reconciler.reconcile(body)`, which derives everything from the Jobs
and the store. Missing an event therefore costs at most one timer interval, never a game.

    sparring operator --namespace team-a            # or --all-namespaces
    kopf run --standalone -m sparring_operator.handlers --namespace team-a
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from sparring_operator import metrics
from sparring_operator.api import GROUP, PLURAL, VERSION
from sparring_operator.jobs import LABEL_GAME, OperatorSettings
from sparring_operator.reconcile import Reconciler

RESYNC_SECONDS = float(os.environ.get("SPARRING_RESYNC_SECONDS", "30"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """All operator settings in one place (kopf's docs/configuration.rst)."""
    # kopf's own bookkeeping goes to annotations under our prefix: the generated status schema
    # is strict, so anything kopf wrote into .status would be silently pruned.
    settings.persistence.finalizer = "sparring.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sparring.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sparring.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what happened; skip kopf's
    settings.watching.server_timeout = 300  # re-list every 5 min: heals a silently dead watch
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # KUBECONFIG, for a local operator and the test harness
    memo.reconciler = Reconciler(
        k8s.ApiClient(),
        OperatorSettings(
            trainer_image=os.environ.get("SPARRING_TRAINER_IMAGE", OperatorSettings.trainer_image),
            phase_service_account=os.environ.get("SPARRING_PHASE_SERVICE_ACCOUNT") or None,
        ),
    )
    memo.locks = {}


async def _reconcile(memo: kopf.Memo, body: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    lock = memo.locks.setdefault(key, asyncio.Lock())  # one pass per game at a time
    async with lock:
        started = time.perf_counter()
        try:
            decision = await asyncio.to_thread(memo.reconciler.reconcile, dict(body))
        except kopf.TemporaryError:
            raise  # e.g. the store is down: status says so; kopf retries
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            raise
        finally:
            metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
    if decision.requeue_after is not None and decision.requeue_after < RESYNC_SECONDS:
        # A retry backoff ends before the next timer tick: come back exactly then.
        raise kopf.TemporaryError(
            "waiting for retry backoff", delay=max(1.0, decision.requeue_after)
        )


# A pass that fails on an unexpected error (the API answered 500 or 429, a connection broke) is
# retried after one resync interval, as a missed event would be; kopf's default is 60 s, and
# for the timer too, which stalled a game for a minute after a single API hiccup.
RETRY_BACKOFF = RESYNC_SECONDS


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=RETRY_BACKOFF)
async def game_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(memo, body)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def game_deleted(name: str, namespace: str | None, **_: Any) -> None:
    """Drop the game's series: optional, so kopf adds no finalizer for it."""
    metrics.GAMES.forget(namespace or "", name)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS,
    backoff=RETRY_BACKOFF,
)
async def game_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(memo, body)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_GAME: kopf.PRESENT})
async def job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A phase Job changed (or vanished): reconcile its game now rather than at the next tick."""
    namespace, game = body["metadata"]["namespace"], body["metadata"]["labels"][LABEL_GAME]
    api = k8s.CustomObjectsApi(memo.reconciler.api)
    try:
        owner = await asyncio.to_thread(
            api.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, game
        )
    except ApiException as exc:
        if exc.status == 404:
            return  # the game is gone; garbage collection removes its Jobs
        raise
    await _reconcile(memo, owner)


@kopf.on.probe(id="games")
def games_probe(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: how many games this process is tracking."""
    return len(getattr(memo, "locks", {}))
