"""One reconcile pass of one game: observe the API and the store, decide, act, write status.

The decisions live in `core.decide`; this module only does I/O, through the official
`kubernetes` client (sync; the kopf handlers call it in a worker thread).

1. load the resource and validate its spec (an invalid one fails with the field named);
2. observe the game's Jobs (by label and owner; listed, or as the Job watch delivered them for
   a pass that a Job or pod event woke) and, for ended ones, their pod's termination message;
3. observe the store: committed markers and metrics (cached: committed phases never change);
4. decide; 5. act (create/adopt Jobs, delete Jobs, events, `_COMPLETE`);
6. write status once, only when it changed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, assert_never, cast

import kopf
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from pydantic import ValidationError
from sparring_trainer.lease import LeaseHeld
from sparring_trainer.store import ArtifactStore, StoreError, game_prefix, phase_prefix

from sparring_operator import metrics
from sparring_operator.actions import (
    Action,
    CreateJob,
    Decision,
    DeleteJob,
    FailJob,
    RecordEvent,
    WriteComplete,
)
from sparring_operator.api import (
    GROUP,
    PLURAL,
    VERSION,
    AdversarialGame,
    AdversarialGameStatus,
    StoreLocation,
)
from sparring_operator.core import decide
from sparring_operator.jobs import OperatorSettings, build_configmap, build_job, job_name
from sparring_operator.jobwatch import (
    FAILED_MESSAGE,
    FAILED_REASON,
    GameKey,
    JobWatch,
    controller_uid,
)
from sparring_operator.leases import GameLeases
from sparring_operator.observed import CommittedPhase, observe_store
from sparring_operator.refusals import refused, spec_errors
from sparring_operator.rendezvous import build_rendezvous_service
from sparring_operator.runtimes import RuntimeRefused, RuntimeUnavailable
from sparring_operator.status import epoch, stalled_status, with_progress
from sparring_operator.statuspatch import merge_patch
from sparring_operator.tenancy import NoStoreCredentials, SecretUnavailable, Tenancy
from sparring_operator.watchcache import GameCache

log = logging.getLogger("sparring.reconcile")
COMPLETE = "_COMPLETE"


@dataclass
class Reconciler:
    """Holds the API client, operator settings and the per-process caches."""

    api: k8s.ApiClient
    settings: OperatorSettings = field(default_factory=OperatorSettings)
    # The ClusterSparringRuntime of games that name none (the chart's); None: the built-in one.
    default_runtime: str | None = None
    require_runtime: bool = False  # with no default: a game must name its runtime
    # Per game, evicted when the game goes (`forget`): a long-running operator sees thousands.
    store_cache: dict[GameKey, dict[tuple[str, int, str], CommittedPhase]] = field(
        default_factory=dict
    )
    jobs: JobWatch = field(init=False)
    tenancy: Tenancy = field(init=False)
    # The (uid, document) each game's ConfigMap was last written with: the document changes
    # with the spec, and with the runtime (its store) without a new generation.
    _configmaps: dict[GameKey, tuple[Any, Any]] = field(default_factory=dict)
    games: GameCache = field(init=False)
    # Each active game's lease in its store (one writer per game): `sparring run` refuses a
    # game the operator plays, and the operator a game that `sparring run` plays.
    leases: GameLeases = field(default_factory=GameLeases)

    def __post_init__(self) -> None:
        self.jobs = JobWatch(self.api)
        self.games = GameCache(self.api)
        self.tenancy = Tenancy(self.api, self.settings, self.default_runtime, self.require_runtime)

    def tracked(self) -> set[GameKey]:
        """Games with something kept here."""
        return (
            set(self.store_cache)
            | set(self._configmaps)
            | self.games.tracked()
            | self.jobs.tracked()
            | self.leases.tracked()
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop everything kept for a deleted game."""
        self.store_cache.pop((namespace, name), None)
        self._configmaps.pop((namespace, name), None)
        self.games.forget(namespace, name)
        self.jobs.forget(namespace, name)
        self.leases.release(namespace, name)

    # The generated client's type stubs want its model classes; we send plain dicts (which it
    # accepts) and read attributes, so the handles are typed loosely on purpose.
    def _batch(self) -> Any:
        return k8s.BatchV1Api(self.api)

    def _core(self) -> Any:
        return k8s.CoreV1Api(self.api)

    def _custom(self) -> Any:
        return k8s.CustomObjectsApi(self.api)

    # ---- reconcile ----------------------------------------------------------------------
    def reconcile(self, body: dict[str, Any], fresh: bool = True) -> Decision:
        """One pass. `fresh` lists the game's Jobs; otherwise the watch's copies serve."""
        meta = body.get("metadata", {})
        namespace, name = meta["namespace"], meta["name"]
        generation = meta.get("generation")
        old = _old_status(body)
        stored = dict(body.get("status") or {})
        now = time.time()
        try:
            game = AdversarialGame.model_validate(
                {
                    "apiVersion": body.get("apiVersion"),
                    "kind": body.get("kind"),
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": body.get("spec") or {},
                }
            )
        except ValidationError as exc:
            message = f"invalid spec: {spec_errors(exc)}"
            return self._refuse(body, refused("InvalidSpec", message, old, now, generation))
        try:  # the game as its runtime lets it run; nothing is created for a refused one
            placed = self.tenancy.place(game)
        except (RuntimeRefused, RuntimeUnavailable) as exc:
            self._stall(namespace, name, stored, old, exc, now, generation)
        game, settings = placed.game, placed.settings
        if game.spec.storage.uri.startswith("file:") and not self.settings.allow_file_store:
            message = (
                f"invalid spec: spec.storage.uri: {game.spec.storage.uri!r} is a folder on one "
                "machine, which the phase pods and the operator do not share on a cluster; set "
                "spec.storage to an s3:// store (with spec.storage.secretRef)"
            )
            return self._refuse(body, refused("InvalidSpec", message, old, now, generation))
        jobs = self.jobs.observe(namespace, name, meta.get("uid"), fresh)
        if any(j.waiting == "CreateContainerConfigError" for j in jobs):
            self._configmaps.pop((namespace, name), None)  # deleted by someone? write it again
        try:
            store = self.tenancy.open_store(game)
            cache = self.store_cache.setdefault((namespace, name), {})
            view = observe_store(
                store, namespace, name, game.spec.game.kind, game.spec.rounds, cache
            )
            complete = _read_complete(store, namespace, name)
            if old.phase not in ("Succeeded", "Failed"):
                self.leases.hold(store, game)
        except StoreError as exc:
            self._stall(namespace, name, stored, old, exc, now, generation)
        created = epoch(meta.get("creationTimestamp")) or now
        decision = decide(game, generation, old, jobs, view, complete, created, now)
        # Where it plays, for the views (`--kube`): a file:// spec stands for the runtime's store.
        decision.status.storage = StoreLocation.of(game.spec.storage)
        if decision.status.phase in ("Succeeded", "Failed"):
            self.leases.release(namespace, name, store)
        elif any(isinstance(a, CreateJob) for a in decision.actions):
            try:  # e.g. a finished game whose rounds grew: the lease before its first new Job
                self.leases.hold(store, game)
            except StoreError as exc:
                self._stall(namespace, name, stored, old, exc, now, generation)
        for action in decision.actions:
            self.act(body, game, action, store, settings)
        job = decision.status.active_job
        if job is not None and decision.status.phase == "Running":
            report = _progress_report(store, phase_prefix(namespace, name, job.round, job.phase))
            decision.status = with_progress(decision.status, report)
        self.write_status(namespace, name, stored, decision.status)
        self.export(namespace, name, decision.status)
        return decision

    def _stall(
        self,
        namespace: str,
        name: str,
        stored: dict[str, Any],
        old: AdversarialGameStatus,
        exc: Exception,
        now: float,
        generation: int | None,
    ) -> NoReturn:
        """The runtime refuses the game or is missing, the store is down, its Secret missing,
        or another writer holds the game: say so in status, and let kopf retry (a fixed spec,
        runtime or Secret lets the game go on by itself)."""
        reason = next(r for t, r in _STALL_REASONS if isinstance(exc, t))
        self.write_status(
            namespace, name, stored, stalled_status(old, reason, str(exc), now, generation)
        )
        raise kopf.TemporaryError(f"{reason}: {exc}", delay=10) from exc

    def _refuse(self, body: dict[str, Any], decision: Decision) -> Decision:
        """A game that cannot be played: its events and status, and nothing else."""
        meta = body["metadata"]
        for action in decision.actions:
            if isinstance(action, RecordEvent):
                self.event(body, action)
        self.write_status(meta["namespace"], meta["name"], dict(body.get("status") or {}),
                          decision.status)  # fmt: skip
        return decision

    def export(self, namespace: str, name: str, status: AdversarialGameStatus) -> None:
        latest = status.rounds[-1].metrics if status.rounds else {}
        job = status.active_job
        progress = job.progress if job is not None else None
        last = epoch(progress.updated_at) if progress is not None else None
        metrics.GAMES.update(metrics.GameSnapshot(
            name=name, namespace=namespace, phase=status.phase,
            current_round=status.current_round, completed_rounds=status.completed_rounds,
            metrics={k: v for k, v in latest.items() if k != "compute_seconds"},
            progress=progress.percent / 100 if progress is not None else None,
            active_phase=job.phase if job is not None and status.phase == "Running" else None,
            last_progress=last,
        ))  # fmt: skip

    def act(
        self,
        body: dict[str, Any],
        game: AdversarialGame,
        action: Action,
        store: ArtifactStore,
        settings: OperatorSettings,
    ) -> None:
        """Carry out one action for `game` as played on its runtime (`settings` are the
        runtime's: image, pull policy, ServiceAccount)."""
        namespace = game.metadata.namespace
        if isinstance(action, CreateJob):
            if action.retry_reason:
                metrics.PHASE_RETRIES.labels(action.retry_reason).inc()
            self.ensure_configmap(body, game)
            if game.spec.phases.for_phase(action.phase).resources.nodes > 1:
                self.create_rendezvous_service(body, game, action)
            job = build_job(game, action.round, action.phase, action.attempt, settings)
            kopf.adopt(job, owner=cast(Any, body))
            try:
                created = self._batch().create_namespaced_job(
                    namespace, job, _preload_content=False
                )
                self.jobs.seen(json.loads(created.data))
                log.info("created Job %s", job["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 409:  # 409: it exists already (e.g. we restarted): adopt it
                    raise
                self._evict_foreign_job(namespace, job["metadata"]["name"], body)
        elif isinstance(action, DeleteJob):
            try:
                self._batch().delete_namespaced_job(
                    action.name, namespace, propagation_policy="Background"
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
            self.jobs.gone(namespace, game.metadata.name, action.name)
        elif isinstance(action, FailJob):
            self.fail_job(namespace, game.metadata.name, action)
        elif isinstance(action, WriteComplete):
            body_json = json.dumps({"specHash": action.spec_hash, "completedAt": time.time()})
            store.put_bytes(
                game_prefix(namespace, game.metadata.name) + COMPLETE, body_json.encode()
            )
        elif isinstance(action, RecordEvent):
            self.event(body, action)
        else:
            assert_never(action)

    def fail_job(self, namespace: str, game: str, action: FailJob) -> None:
        """End an attempt whose pod never started: the Job controller fails a Job past its
        activeDeadlineSeconds (deleting its pods), and the Job stays as the failed attempt's
        record; the annotations say why in place of DeadlineExceeded."""
        annotations = {FAILED_REASON: action.reason, FAILED_MESSAGE: action.message[:1000]}
        metadata: dict[str, Any] = {"annotations": annotations}
        if action.resource_version:
            # Only the Job as it was judged: if its pod started since, the API server answers
            # 409 and the next pass judges again.
            metadata["resourceVersion"] = action.resource_version
        patch = {"metadata": metadata, "spec": {"activeDeadlineSeconds": 1}}
        try:
            patched = self._batch().patch_namespaced_job(
                action.name, namespace, patch, _preload_content=False
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            return
        self.jobs.seen(json.loads(patched.data))

    def _evict_foreign_job(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """The Job holding our name is ours (adopted as it is) or another incarnation's:
        then it is deleted and the pass retried once the name is free."""
        existing = json.loads(
            self._batch().read_namespaced_job(name, namespace, _preload_content=False).data
        )
        owner = controller_uid(existing["metadata"].get("ownerReferences"))
        if owner == body["metadata"].get("uid"):
            self.jobs.seen(existing)
            return
        try:
            self._batch().delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.jobs.gone(namespace, body["metadata"]["name"], name)
        raise kopf.TemporaryError(f"Job {name} belongs to an earlier game of this name", delay=1)

    def create_rendezvous_service(
        self, body: dict[str, Any], game: AdversarialGame, action: CreateJob
    ) -> None:
        """A multi-node attempt's headless Service, through which its pods find pod 0. Created
        before the Job: an operator that stops between the two never leaves pods that cannot
        meet. Owned by the game (collected with it, as its Jobs are); one per attempt, as the
        pods' subdomain is their Job's name."""
        service = build_rendezvous_service(game, action.round, action.phase, action.attempt)
        kopf.adopt(service, owner=cast(Any, body))
        try:
            self._core().create_namespaced_service(game.metadata.namespace, service)
        except ApiException as exc:
            if exc.status != 409:  # 409: created before a restart; it serves the same pods
                raise

    def ensure_configmap(self, body: dict[str, Any], game: AdversarialGame) -> None:
        """The game document the phase pods mount, written once per incarnation and document
        (each phase used to rewrite it: two requests per Job)."""
        cm = build_configmap(game)
        key = (game.metadata.namespace, game.metadata.name)
        written = (body["metadata"].get("uid"), cm["data"])
        if self._configmaps.get(key) == written:
            return
        kopf.adopt(cm, owner=cast(Any, body))
        core = self._core()
        try:
            core.create_namespaced_config_map(game.metadata.namespace, cm)
            self._configmaps[key] = written
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Keep it in step with the spec (rounds may have grown since it was written), and
            # owned by this incarnation: left to a deleted one, the garbage collector would
            # remove it under a running pod.
            patch = {
                "data": cm["data"],
                "metadata": {"ownerReferences": cm["metadata"]["ownerReferences"]},
            }
            # (A JSON merge patch replaces the owner list; a strategic one would add ours to it.)
            core.patch_namespaced_config_map(
                cm["metadata"]["name"],
                game.metadata.namespace,
                patch,
                _content_type="application/merge-patch+json",
            )
        self._configmaps[key] = written

    def event(self, body: dict[str, Any], action: RecordEvent) -> None:
        meta = body["metadata"]
        stamp = datetime.now().astimezone().isoformat()
        event = {
            "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "AdversarialGame",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": action.reason,
            "message": action.message[:1024],
            "type": action.type,
            "source": {"component": "sparring-operator"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": "sparring-operator",
        }
        try:
            self._core().create_namespaced_event(meta["namespace"], event)
        except ApiException as exc:  # events are informational: never fail a reconcile on them
            log.warning("event %s not posted: %s", action.reason, exc.reason)

    def write_status(
        self, namespace: str, name: str, stored: dict[str, Any], new: AdversarialGameStatus
    ) -> None:
        """Make the stored status equal `new`: fields that went away are removed, and nothing
        is written when nothing changed (see statuspatch)."""
        changes = merge_patch(stored, new.model_dump(mode="json", by_alias=True, exclude_none=True))
        if not changes:
            return
        patch = {"status": changes}
        try:
            written = self._custom().patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, patch
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted while we reconciled: nothing left to report on
                raise
            return
        self.games.remember(written)


# Most specific first: NoStoreCredentials is a SecretUnavailable, both are StoreErrors.
_STALL_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (RuntimeRefused, "RuntimeRefused"),
    (RuntimeUnavailable, "RuntimeUnavailable"),
    (NoStoreCredentials, "NoStoreCredentials"),
    (SecretUnavailable, "SecretUnavailable"),
    (LeaseHeld, "LeaseHeld"),
    (Exception, "StoreUnavailable"),
)


def _old_status(body: dict[str, Any]) -> AdversarialGameStatus:
    try:
        return AdversarialGameStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return AdversarialGameStatus()  # unreadable (hand-edited?) status: recompute from scratch


def _read_complete(store: ArtifactStore, namespace: str, game: str) -> str | None:
    key = game_prefix(namespace, game) + COMPLETE
    if not store.exists(key):
        return None
    return str(json.loads(store.get_bytes(key)).get("specHash") or "")


def _progress_report(store: ArtifactStore, prefix: str) -> dict[str, Any] | None:
    """The running phase's own progress report, if it wrote one (best-effort: none yet, or a
    torn one, is no report)."""
    try:
        report = json.loads(store.get_bytes(prefix + "_progress.json"))
    except (StoreError, ValueError):
        return None
    return report if isinstance(report, dict) else None


__all__ = ["Reconciler", "job_name"]
