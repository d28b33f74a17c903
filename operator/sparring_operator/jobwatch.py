"""A game's phase Jobs as the decision core needs them, read with as few API calls as it can.

The Job's own status says most of it: running (a ready pod), finished (a condition), queued
(suspended by Kueue). Pods are read only when it cannot say enough: once for a finished Job
(its termination message and exit code never change), and for an active Job none of whose
pods is ready (is it starting, or stuck: unschedulable, image not pullable, a missing Secret?).
A Job whose pods cannot even be created (missing ServiceAccount, Pod Security) has only the
Job controller's FailedCreate event to say so.

The Jobs themselves are listed only by a pass that must be sure (a resync, a change of the
game, the first pass of a game): a pass woken by a Job or pod event reads the copies the Job
watch delivered, with the operator's own writes applied as they return. With phases that take
time, each Job wakes its game four or five times (created, started, its pod's exit, complete);
listing on each of those passes was most of the operator's API traffic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from sparring_operator import metrics
from sparring_operator.actions import QUEUED, STUCK_REASONS, ObservedJob
from sparring_operator.jobs import LABEL_ATTEMPT, LABEL_GAME, LABEL_PHASE, LABEL_ROUND
from sparring_operator.status import epoch
from sparring_operator.watchcache import GameKey, resource_version, slim

# Set by the operator when it gives up on an attempt whose pod never started (core.FailJob):
# the Job then fails on its deadline, and these say why in place of "DeadlineExceeded".
FAILED_REASON = "sparring.dev/failed-reason"
FAILED_MESSAGE = "sparring.dev/failed-message"
# A Job this young is being started (scheduled, its image pulled), not stuck: its pods are not
# read yet. Phases that finish within it never cost a pod list while active.
STUCK_CHECK_AFTER = 10.0
_EXIT_CODE = re.compile(r"exit code (\d+)")
log = logging.getLogger("sparring.jobwatch")


@dataclass(frozen=True)
class PodOutcome:
    message: str = ""
    exit_code: int | None = None
    pod_created: float = 0.0  # of the pod it came from: a newer pod's outcome replaces it


@dataclass
class JobWatch:
    api: k8s.ApiClient
    # Per game, so that a deleted game's entries go with it (`forget`): its Jobs as last seen
    # (by uid), finished Job (by uid) -> what its pod said, and the Jobs whose duration is
    # already in the histogram.
    _jobs: dict[GameKey, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _outcomes: dict[GameKey, dict[str, PodOutcome]] = field(default_factory=dict)
    _timed: dict[GameKey, set[str]] = field(default_factory=dict)
    # Jobs that ended before this process started are not timed: a restart must not count
    # them twice.
    _started: float = field(default_factory=time.time)
    # Watch events update the copies on the event loop while passes read them in threads.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tracked(self) -> set[GameKey]:
        return set(self._jobs) | set(self._outcomes) | set(self._timed)

    def forget(self, namespace: str, game: str) -> None:
        with self._lock:
            self._jobs.pop((namespace, game), None)
            self._outcomes.pop((namespace, game), None)
        self._timed.pop((namespace, game), None)

    # ---- the cache: a pass woken by a watch event reads the game's Jobs from here ----------
    def seen(self, job: dict[str, Any], deleted: bool = False) -> None:
        """A Job as a watch event or our own write returned it. Only games listed since this
        process started are kept: events of a deleted game's Jobs (the garbage collector
        removes them after the game) must not bring its entry back."""
        job = _slim_job(job)
        meta = job["metadata"]
        key = (meta.get("namespace", ""), (meta.get("labels") or {}).get(LABEL_GAME, ""))
        uid = meta.get("uid")
        with self._lock:
            jobs = self._jobs.get(key)
            if jobs is None or not uid:
                return
            if deleted:
                jobs.pop(uid, None)
                return
            known = jobs.get(uid)
            if known is None or resource_version(job) >= resource_version(known):
                jobs[uid] = job

    def gone(self, namespace: str, game: str, name: str) -> None:
        """A Job we deleted: out of the cache before its watch event says so."""
        with self._lock:
            jobs = self._jobs.get((namespace, game), {})
            for uid in [u for u, j in jobs.items() if j["metadata"].get("name") == name]:
                del jobs[uid]

    def _list(self, namespace: str, game: str) -> dict[str, dict[str, Any]]:
        """The game's Jobs from the API server (its watch cache), as plain JSON: the client's
        model classes cost more CPU to build than the request itself. Entries newer than the
        list (written by us after the server answered) are kept."""
        batch: Any = k8s.BatchV1Api(self.api)
        response = batch.list_namespaced_job(
            namespace, label_selector=f"{LABEL_GAME}={game}", _preload_content=False
        )
        listing = json.loads(response.data)
        listed_at = resource_version(listing)
        jobs = {j["metadata"]["uid"]: _slim_job(j) for j in listing.get("items") or []}
        with self._lock:
            for uid, job in self._jobs.get((namespace, game), {}).items():
                if resource_version(job) > listed_at:  # newer than any listed copy
                    jobs[uid] = job
            self._jobs[(namespace, game)] = jobs
            return dict(jobs)

    def observe(
        self, namespace: str, game: str, uid: str | None, fresh: bool = True
    ) -> list[ObservedJob]:
        """The game's Jobs: labelled with its name and controlled by this incarnation (`uid`).
        A Job of a deleted game of the same name waits for the garbage collector, which works
        asynchronously; counting it would adopt another game's attempt. `fresh` lists them
        from the API server; otherwise the watch's copies are used once the game was listed.
        The operator's own creates, patches and deletes update those copies as they return,
        so a pass never misses a Job it created itself (it would start it twice)."""
        key = (namespace, game)
        with self._lock:
            cached = dict(self._jobs[key]) if key in self._jobs else None
        items = list((self._list(namespace, game) if fresh or cached is None else cached).values())
        with self._lock:
            outcomes = dict(self._outcomes.get(key, {}))
        timed = self._timed.get(key, set())
        observed, seen = [], set()
        for job in items:
            meta = job.get("metadata") or {}
            if uid is not None and controller_uid(meta.get("ownerReferences")) != uid:
                continue
            if meta.get("deletionTimestamp"):
                continue
            labels = meta.get("labels") or {}
            try:
                rnd, phase = int(labels[LABEL_ROUND]), labels[LABEL_PHASE]
                attempt = int(labels[LABEL_ATTEMPT])
            except (KeyError, ValueError):
                continue  # not one of ours (or tampered with): never act on it
            seen.add(meta["uid"])
            created = epoch(meta.get("creationTimestamp")) or time.time()
            seen_job = ObservedJob(
                meta["name"], rnd, phase, attempt, "Active", created,
                resource_version=meta.get("resourceVersion") or "",
            )  # fmt: skip
            ended = _ended(job)
            if ended is None:
                observed.append(self._active(namespace, job, seen_job))
                continue
            state, reason, message, finished = ended
            outcome = outcomes.get(meta["uid"])
            if outcome is None:
                outcome = outcomes[meta["uid"]] = self._pod_outcome(namespace, meta["name"])
            annotations = meta.get("annotations") or {}
            if reason == "DeadlineExceeded" and annotations.get(FAILED_REASON):
                # The operator ended it (core.FailJob): its reason, not the deadline's.
                reason, message = annotations[FAILED_REASON], annotations.get(FAILED_MESSAGE, "")
            else:
                message = outcome.message or message
            exit_code = outcome.exit_code
            if exit_code is None and (m := _EXIT_CODE.search(_condition_message(job))):
                exit_code = int(m.group(1))  # the pod is gone; the Job's condition names it
            if finished is not None and finished >= self._started and meta["uid"] not in timed:
                timed.add(meta["uid"])
                outcome_label = "succeeded" if state == "Succeeded" else "failed"
                metrics.PHASE_DURATION.labels(phase, outcome_label).observe(
                    max(0.0, finished - created)
                )
            observed.append(
                ObservedJob(
                    meta["name"], rnd, phase, attempt, state, created,
                    finished_at=finished, reason=reason, message=message, exit_code=exit_code,
                )
            )  # fmt: skip
        # Only Jobs that still exist are remembered: retired ones leave no entry behind.
        with self._lock:
            outcomes |= self._outcomes.get(key, {})  # what pod events brought meanwhile
            self._outcomes[key] = {u: o for u, o in outcomes.items() if u in seen}
        self._timed[key] = timed & seen
        return observed

    def _active(self, namespace: str, job: dict[str, Any], seen: ObservedJob) -> ObservedJob:
        """An active Job, with why its pod is not running when it is not."""
        if (job.get("spec") or {}).get("suspend"):
            queue = (job["metadata"].get("labels") or {}).get("kueue.x-k8s.io/queue-name")
            why = f"admission by Kueue queue {queue}" if queue else "the Job to be resumed"
            return _waiting(seen, QUEUED, f"suspended, waiting for {why}", seen.created_at)
        status = job.get("status") or {}
        if (status.get("ready") or 0) > 0:
            return seen  # a pod is running
        uncounted = status.get("uncountedTerminatedPods") or {}
        if not status.get("active") and (status.get("succeeded") or uncounted.get("succeeded")):
            return seen  # its pod succeeded; the Job controller is writing the verdict
        if time.time() - seen.created_at < STUCK_CHECK_AFTER:
            return seen
        try:
            return self._stuck(namespace, job, seen)
        except ApiException as exc:
            # Best-effort: a refused or failed read must not keep the game from its pass.
            log.warning("why Job %s has no running pod: not read (%s)", seen.name, exc.reason)
            return seen

    def _stuck(self, namespace: str, job: dict[str, Any], seen: ObservedJob) -> ObservedJob:
        core: Any = k8s.CoreV1Api(self.api)
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={seen.name}").items
        live = [
            p for p in pods if (p.status.phase if p.status else "") in ("Pending", "Running", "")
        ]
        if live:
            pod = max(live, key=lambda p: epoch(p.metadata.creation_timestamp) or 0.0)
            reason, message, since = pod_waiting(pod)
            return _waiting(seen, reason, message, since) if reason else seen
        if pods:
            # Between a pod's end and the Job's verdict, or before a replacement is created:
            # the Job controller is at work, nothing is stuck.
            return seen
        # No pod was ever created: only the Job controller's events say why (quota, a missing
        # ServiceAccount, Pod Security). This Job's own (by uid: names repeat across games).
        selector = f"involvedObject.uid={job['metadata']['uid']},reason=FailedCreate"
        events = core.list_namespaced_event(namespace, field_selector=selector).items
        if not events:
            return seen
        # The first one: later ones differ only in the generated pod name, and status should
        # change when the situation does, not with every retry of the Job controller.
        first = min(events, key=lambda e: epoch(e.first_timestamp or e.event_time) or 0.0)
        since = epoch(first.first_timestamp or first.event_time) or seen.created_at
        return _waiting(seen, "FailedCreate", str(first.message or ""), since)

    def _pod_outcome(self, namespace: str, job: str) -> PodOutcome:
        """What the newest pod of a finished Job said, read from the API when its exit was not
        seen in the pod watch (an operator restart, a watch gap)."""
        core: Any = k8s.CoreV1Api(self.api)
        response = core.list_namespaced_pod(
            namespace, label_selector=f"job-name={job}", _preload_content=False
        )
        pods = json.loads(response.data).get("items") or []
        pods.sort(key=lambda p: epoch(p["metadata"].get("creationTimestamp")) or 0.0)
        for pod in reversed(pods):
            outcome = outcome_of_pod(pod)
            if outcome.message or outcome.exit_code is not None:
                return outcome
        return PodOutcome()

    def pod_ended(self, pod: dict[str, Any]) -> None:
        """A phase pod's exit as its watch event shows it: its Job's outcome, kept so that the
        pass that sees the Job finished needs no pod list. The newest pod of a Job wins."""
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace", ""), (meta.get("labels") or {}).get(LABEL_GAME, ""))
        job_uid = controller_uid(meta.get("ownerReferences"))
        outcome = outcome_of_pod(pod)
        with self._lock:
            outcomes = self._outcomes.get(key)
            if key not in self._jobs or outcomes is None or job_uid is None:
                return  # a game not listed (yet, or any more): the list path covers it
            known = outcomes.get(job_uid)
            if known is None or outcome.pod_created >= known.pod_created:
                outcomes[job_uid] = outcome


def _slim_job(job: dict[str, Any]) -> dict[str, Any]:
    """What `observe` reads of a Job: not its pod template, which is most of its size."""
    out = slim(job, ("status",), annotations=(FAILED_REASON, FAILED_MESSAGE))
    out["spec"] = {"suspend": (job.get("spec") or {}).get("suspend")}
    return out


def outcome_of_pod(pod: dict[str, Any]) -> PodOutcome:
    """What an ended pod said: the phase's summary or its error (the trainer writes JSON; its
    error line is shown) with the exit code, or why the pod was evicted."""
    status = pod.get("status") or {}
    created = epoch((pod.get("metadata") or {}).get("creationTimestamp")) or 0.0
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated is None:
            continue
        text = str(terminated.get("message") or "")
        with contextlib.suppress(ValueError, AttributeError):  # not the trainer's JSON
            text = str(json.loads(text).get("error") or text)
        code = terminated.get("exitCode")
        if text or code:
            return PodOutcome(text or str(status.get("message") or ""), code, created)
    return PodOutcome(str(status.get("message") or ""), None, created)  # e.g. evicted


def pod_waiting(pod: Any) -> tuple[str, str, float | None]:
    """Why a pod is not running yet if it is stuck: (reason, message, since) or ("", "", None)
    while it is on its way (being scheduled, pulling, creating its container)."""
    status = pod.status
    created = epoch(pod.metadata.creation_timestamp)
    for cond in (status.conditions or []) if status else []:
        if (
            cond.type == "PodScheduled"
            and cond.status == "False"
            and cond.reason == "Unschedulable"
        ):
            return (
                "Unschedulable",
                str(cond.message or ""),
                epoch(cond.last_transition_time) or created,
            )
    for container in (status.container_statuses or []) if status else []:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in STUCK_REASONS:
            # The kubelet alternates ErrImagePull and ImagePullBackOff on each pull retry: one
            # situation, one reason.
            reason = "ImagePullBackOff" if waiting.reason == "ErrImagePull" else waiting.reason
            return reason, str(waiting.message or ""), created
    return "", "", None


def _waiting(job: ObservedJob, reason: str, message: str, since: float | None) -> ObservedJob:
    return replace(job, waiting=reason, waiting_message=message[:500], waiting_since=since)


def _conditions(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list((job.get("status") or {}).get("conditions") or [])


def _ended(job: dict[str, Any]) -> tuple[str, str, str, float | None] | None:
    for cond in _conditions(job):
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            state = "Succeeded" if cond["type"] == "Complete" else "Failed"
            when = epoch(cond.get("lastTransitionTime"))
            return state, cond.get("reason") or "", cond.get("message") or "", when
    return None


def _condition_message(job: dict[str, Any]) -> str:
    return " ".join(
        str(c.get("message") or "") for c in _conditions(job) if c.get("type") == "Failed"
    )


def controller_uid(owners: list[dict[str, Any]] | None) -> str | None:
    """The uid of an object's controlling owner (ownerReferences as JSON)."""
    return next((o.get("uid") for o in owners or [] if o.get("controller")), None)
