"""kopf handlers: thin triggers over one level-triggered reconcile.

Creation, resumption, spec updates, a periodic resync and every event of a Job the operator
owns all lead to the same `Reconciler.reconcile(body)`, which derives everything from the Jobs
and the store. Missing an event therefore costs at most one resync interval, never a game.

No handler here makes kopf put a finalizer on games: nothing needs to happen before a game
goes (its Jobs and ConfigMap are garbage-collected through their owner references, its
checkpoints stay in the store), and a finalizer would strand every game, and its namespace,
once the operator is uninstalled or down. That is why the resync is a loop of our own over the
games kopf's watch reports, not a `kopf.timer` (kopf gives every object with a timer or daemon
a finalizer, to stop it before deletion).

    sparring operator --namespace team-a            # or --all-namespaces
    kopf run --standalone -m sparring_operator.handlers --namespace team-a
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from sparring_trainer.lease import DEFAULT_SECONDS

from sparring_operator import metrics
from sparring_operator.api import GROUP, PLURAL, VERSION
from sparring_operator.jobs import LABEL_GAME, OperatorSettings
from sparring_operator.leases import GameLeases
from sparring_operator.reconcile import Reconciler

RESYNC_SECONDS = float(os.environ.get("SPARRING_RESYNC_SECONDS", "30"))
# Fixed, not asyncio's cores + 4: each thread grows its own malloc arena, and 16 threads doubled
# the operator's RSS (about 260 to 510 MB in tests/e2e/test_soak.py), past the chart's 512Mi
# limit; a big node must not change that.
RECONCILE_THREADS = int(os.environ.get("SPARRING_RECONCILE_THREADS", "6"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """All operator settings in one place (kopf's docs/configuration.rst)."""
    # kopf's own bookkeeping goes to annotations under our prefix: the generated status schema
    # is strict, so anything kopf wrote into .status would be silently pruned.
    # No handler needs a finalizer any more; naming the one older versions added lets kopf
    # recognise and remove it from their games.
    settings.persistence.finalizer = "sparring.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sparring.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sparring.dev", key="last-handled-configuration"
    )
    # Only the phase Jobs and pods are streamed to us (server-side selectors): with
    # --all-namespaces, a watch of every pod of the cluster would cost far more than our games.
    settings.watching.label_selectors["batch", "v1", "jobs"] = LABEL_GAME
    settings.watching.label_selectors["", "v1", "pods"] = LABEL_GAME
    settings.posting.level = logging.WARNING  # our own Events say what happened; skip kopf's
    settings.watching.server_timeout = 300  # re-list every 5 min: heals a silently dead watch
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # KUBECONFIG, for a local operator and the test harness
    configuration = k8s.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = RECONCILE_THREADS  # one connection per pass thread
    memo.reconciler = Reconciler(
        k8s.ApiClient(configuration),
        OperatorSettings(
            trainer_image=os.environ.get("SPARRING_TRAINER_IMAGE", OperatorSettings.trainer_image),
            phase_service_account=os.environ.get("SPARRING_PHASE_SERVICE_ACCOUNT") or None,
            allow_file_store=os.environ.get("SPARRING_ALLOW_FILE_STORE") == "1",
        ),
        # The chart's ClusterSparringRuntime, for games that name no runtime.
        default_runtime=os.environ.get("SPARRING_DEFAULT_RUNTIME") or None,
        require_runtime=os.environ.get("SPARRING_REQUIRE_RUNTIME") == "1",
        # Every pass renews a game's lease; a game has one at least every resync, so the lease
        # must outlast a few resyncs.
        leases=GameLeases(max(DEFAULT_SECONDS, 3 * RESYNC_SECONDS)),
    )
    memo.locks = {}
    memo.queued = set()  # games with a pass waiting for their lock
    memo.relist = set()  # games whose next pass must read the API server, not the watch
    metrics.TRACKED_GAMES.set_function(lambda: len(_tracked(memo)))


def _tracked(memo: kopf.Memo) -> set[tuple[str, str]]:
    """Every game this process keeps something for: what `game_seen` must forget."""
    games: set[tuple[str, str]] = getattr(memo, "games", set())
    return memo.reconciler.tracked() | set(memo.locks) | games


def _key(body: Any) -> tuple[str, str]:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


async def _reconcile(memo: kopf.Memo, key: tuple[str, str], fresh: bool = True) -> None:
    """One pass over the game (namespace, name), one at a time per game. The pass decides from
    the game as it is now, read inside the lock: a body handed to a trigger predates any pass
    that ran while the trigger waited, and deciding from its status again repeats that pass's
    events. "As it is now" is the API server's answer for a `fresh` pass (a resync, a change
    of the game), and the watch's newest copy with our own writes applied for a pass woken by
    a Job or pod event (see `JobWatch`): the resync bounds how long a missed watch event can
    mislead. Whatever triggered it, the pass sets when the game is looked at next
    (`memo.due`, which the resync loop follows): kopf retries no event handler, so a retry
    backoff or an error's delay raised from a Job or pod event would otherwise be lost."""
    if fresh:
        memo.relist.add(key)
    if key in memo.queued:
        # A pass for this game waits for the lock and has not read the game yet: it will see
        # whatever caused this trigger (and reads afresh if this one asked to). Skipping keeps
        # a burst of Job and pod events from queueing one pass each (a workqueue's
        # de-duplication).
        return
    lock = memo.locks.setdefault(key, asyncio.Lock())  # one pass per game at a time
    memo.queued.add(key)
    try:
        await lock.acquire()
    finally:
        memo.queued.discard(key)
    next_pass = RESYNC_SECONDS
    try:
        started = time.perf_counter()
        fresh = key in memo.relist
        memo.relist.discard(key)
        try:
            reconciler = memo.reconciler
            current = await asyncio.to_thread(reconciler.games.read, key[0], key[1], fresh)
            if current is None:
                # Deleted meanwhile (its DELETED event may have been missed in a watch restart):
                # forget it here too; garbage collection removes its Jobs.
                _forget(memo, key, keep_lock=key in memo.queued)
                return
            if current["metadata"].get("deletionTimestamp"):
                return  # going (foreground deletion): start nothing new for it
            decision = await asyncio.to_thread(reconciler.reconcile, current, fresh)
            if decision.requeue_after is not None:  # e.g. a retry backoff ending before then
                next_pass = min(RESYNC_SECONDS, max(1.0, decision.requeue_after))
        except kopf.TemporaryError as exc:  # e.g. the store is down: status says so
            next_pass = exc.delay or RETRY_BACKOFF
            raise
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            next_pass = RETRY_BACKOFF
            raise
        finally:
            metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
            if key in memo.games:
                memo.due[key] = asyncio.get_running_loop().time() + next_pass
                memo.wake.set()
    finally:
        lock.release()


def _forget(memo: kopf.Memo, key: tuple[str, str], keep_lock: bool = False) -> None:
    """Drop everything kept for a deleted game. Its lock stays while a pass waits on it: a new
    lock beside it would let a pass run at the same time."""
    memo.games.discard(key)
    memo.due.pop(key, None)
    memo.relist.discard(key)
    if not keep_lock:
        memo.locks.pop(key, None)
    metrics.GAMES.forget(*key)
    memo.reconciler.forget(*key)  # its cached store reads and Job outcomes


# A pass that fails on an unexpected error (the API answered 500 or 429, a connection broke) is
# retried after one resync interval, as a missed event would be; kopf's default is 60 s, and
# for the timer too, which stalled a game for a minute after a single API hiccup.
RETRY_BACKOFF = RESYNC_SECONDS


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=RETRY_BACKOFF)
async def game_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(memo, _key(body))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def game_seen(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Keep the set of games for the resync loop (`type` None: the initial list); forget a
    deleted game, its metric series included (an on.delete handler would only run for objects
    held back by a finalizer)."""
    key = _key(body)
    if type == "DELETED":
        memo.games.discard(key)
        lock = memo.locks.get(key)
        if lock is not None:
            async with lock:
                pass  # a pass in flight exports the game's series: let it end, then forget
        _forget(memo, key, keep_lock=key in memo.queued)
    else:
        memo.reconciler.games.remember(dict(body))  # what passes woken by its Jobs decide from
        memo.games.add(key)


async def _resync_forever(memo: kopf.Memo) -> None:
    """Reconcile every known game when it is due: RESYNC_SECONDS after its last pass, or sooner
    when that pass asked to come back (a retry backoff, a pending timeout, an error's delay)."""
    loop = asyncio.get_running_loop()
    while True:
        memo.wake.clear()
        now = loop.time()
        for key in list(memo.games):
            # A new game was just reconciled by its create handler: first resync one tick later.
            if memo.due.setdefault(key, now + RESYNC_SECONDS) > now:
                continue
            memo.due[key] = now + RESYNC_SECONDS  # the pass sets its own; this if it is skipped
            try:
                await _reconcile(memo, key)
            except kopf.TemporaryError as exc:
                logging.getLogger(__name__).info("resync of %s/%s: %s", *key, exc)
            except Exception:
                logging.getLogger(__name__).exception("resync of %s/%s failed", *key)
        for key in set(memo.due) - memo.games:
            del memo.due[key]
        wake = min(memo.due.values(), default=now + RESYNC_SECONDS)
        with contextlib.suppress(TimeoutError):  # woken early when a pass moved a game up
            await asyncio.wait_for(memo.wake.wait(), timeout=max(0.1, wake - loop.time()))


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    # A pass mostly waits on the API server and the store, in one of these threads.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(RECONCILE_THREADS, thread_name_prefix="reconcile")
    )
    memo.games = set()
    memo.due = {}  # game -> loop time of its next pass
    memo.wake = asyncio.Event()  # a pass moved a game's next pass earlier
    memo.resync = asyncio.create_task(_resync_forever(memo), name="sparring-resync")


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "resync", None)
    if task is not None:
        task.cancel()


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_GAME: kopf.PRESENT})
async def job_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A phase Job changed (or vanished): reconcile its game now rather than at the next tick,
    from the Job as this event shows it."""
    memo.reconciler.jobs.seen(dict(body), deleted=type == "DELETED")
    key = (body["metadata"]["namespace"], body["metadata"]["labels"][LABEL_GAME])
    await _reconcile(memo, key, fresh=False)


def _pod_ended(body: kopf.Body, **_: Any) -> bool:
    return (body.get("status") or {}).get("phase") in ("Succeeded", "Failed")


@kopf.on.event("", "v1", "pods", labels={LABEL_GAME: kopf.PRESENT}, when=_pod_ended)
async def pod_ended(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A phase pod exited: it committed its outputs before that, so the next phase can start
    now. Its Job says so only later (the Job controller batches pod updates for a second before
    it marks a Job Complete), and the hand-off would wait for that. What the pod said (its
    summary or error, its exit code) is kept as its Job's outcome: no pod list is needed."""
    memo.reconciler.jobs.pod_ended(dict(body))
    key = (body["metadata"]["namespace"], body["metadata"]["labels"][LABEL_GAME])
    await _reconcile(memo, key, fresh=False)


@kopf.on.probe(id="games")
def games_probe(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: how many games this process is tracking."""
    return len(getattr(memo, "locks", {}))
