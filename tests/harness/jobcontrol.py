"""What the Job controller and the kubelet write, as pure functions over dicts: the Pod a Job
gets, the Pod's status while it runs and when it ends, and the Job's status after each pod
(Kubernetes >= 1.31 shapes: SuccessCriteriaMet/FailureTarget come with Complete/Failed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .apiserver import LOG_PATH_ANNOTATION
from .errors import now


def condition(ctype: str, reason: str, message: str) -> dict[str, Any]:
    stamp = now()
    return {
        "type": ctype,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }


def has_condition(obj: dict[str, Any], *types: str) -> bool:
    return any(
        c.get("type") in types and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def true_conditions(obj: dict[str, Any]) -> dict[str, str]:
    """``{type: reason}`` of the conditions with status True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return {c["type"]: c.get("reason", "") for c in conditions if c.get("status") == "True"}


def finished(job: dict[str, Any]) -> bool:
    return has_condition(job, "Complete", "Failed")


def policy_action(job: dict[str, Any], pod_status: dict[str, Any], exit_code: int) -> str:
    """The action of the first matching ``podFailurePolicy`` rule (no match: Count)."""
    for rule in ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []:
        codes = rule.get("onExitCodes")
        if codes and exit_code != 0:
            inside = exit_code in (codes.get("values") or [])
            if inside == (codes.get("operator", "In") == "In"):
                return str(rule["action"])
        for wanted in rule.get("onPodConditions") or []:
            for cond in pod_status.get("conditions") or []:
                status = wanted.get("status", "True")
                if cond.get("type") == wanted.get("type") and cond.get("status") == status:
                    return str(rule["action"])
    return "Count"


def pod_manifest(job: dict[str, Any], pod_name: str, log_path: Path, node: str) -> dict[str, Any]:
    """The Pod of a Job: template labels plus the Job's own, a controller ownerReference."""
    meta, template = job["metadata"], job["spec"]["template"]
    tmeta = template.get("metadata") or {}
    job_labels = {
        "job-name": meta["name"],
        "batch.kubernetes.io/job-name": meta["name"],
        "controller-uid": meta["uid"],
        "batch.kubernetes.io/controller-uid": meta["uid"],
    }
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    annotations = {**(tmeta.get("annotations") or {}), LOG_PATH_ANNOTATION: str(log_path)}
    return {
        "metadata": {
            "name": pod_name,
            "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {}), **job_labels},
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": {**template["spec"], "nodeName": node},
    }


def waiting_status(pod: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    return {
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            }
        ]
    }


def running_status(pod: dict[str, Any]) -> dict[str, Any]:
    container, stamp = pod["spec"]["containers"][0], now()
    ready = ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    return {
        "phase": "Running",
        "startTime": stamp,
        "podIP": "127.0.0.1",
        "hostIP": "127.0.0.1",
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": stamp} for t in ready],
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": stamp}},
            }
        ],
    }


def terminated_status(
    pod: dict[str, Any] | None, exit_code: int, message: str, succeeded: bool, preempted: bool
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "False", "lastTransitionTime": now()}]
    if preempted:
        conditions.append(
            condition(
                "DisruptionTarget",
                "PreemptionByScheduler",
                "harness: preempted by LocalKubelet.preempt()",
            )
        )
    status: dict[str, Any] = {
        "phase": "Succeeded" if succeeded else "Failed",
        "conditions": conditions,
    }
    if pod is not None:
        container = pod["spec"]["containers"][0]
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "message": message,
            "startedAt": now(),
            "finishedAt": now(),
        }
        status["containerStatuses"] = [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ]
    return status


def _others(job: dict[str, Any], *types: str) -> list[dict[str, Any]]:
    return [
        c for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") not in types
    ]


def started_status(job: dict[str, Any]) -> dict[str, Any]:
    status = job.get("status") or {}
    return {
        "active": 1,
        "startTime": status.get("startTime") or now(),
        "conditions": _others(job, "Suspended") or None,
    }


def suspended_status(job: dict[str, Any]) -> dict[str, Any]:
    suspended = condition("Suspended", "JobSuspended", "Job suspended")
    conditions = [*_others(job, "Suspended"), suspended]
    return {"conditions": conditions, "active": 0, "ready": 0, "startTime": None}


def status_after_pod(
    job: dict[str, Any],
    pod_status: dict[str, Any],
    exit_code: int,
    succeeded: bool,
    deadline_exceeded: bool,
) -> dict[str, Any]:
    """The Job's status once a pod has ended: counted or ignored by ``podFailurePolicy``,
    then Complete, Failed (DeadlineExceeded, PodFailurePolicy, BackoffLimitExceeded), or
    neither (the next pod will be started)."""
    status = job.get("status") or {}
    conditions = _others(job, "Suspended")
    patch: dict[str, Any] = {"active": 0, "ready": 0}
    action = "Count" if succeeded else policy_action(job, pod_status, exit_code)
    failed = int(status.get("failed") or 0) + (0 if succeeded or action == "Ignore" else 1)
    backoff = int((job.get("spec") or {}).get("backoffLimit", 6))
    done: tuple[str, str] | None = None
    if succeeded:
        patch.update(succeeded=int(status.get("succeeded") or 0) + 1, completionTime=now())
        conditions += [
            condition(t, "CompletionsReached", "Reached expected number of succeeded pods")
            for t in ("SuccessCriteriaMet", "Complete")
        ]
    elif deadline_exceeded:
        done = ("DeadlineExceeded", "Job was active longer than specified deadline")
    elif action == "FailJob":
        done = (
            "PodFailurePolicy",
            f"Container failed with exit code {exit_code} matching a FailJob rule",
        )
    elif action != "Ignore" and failed > backoff:
        done = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    if done is not None:
        conditions += [condition(t, *done) for t in ("FailureTarget", "Failed")]
    patch.update(failed=failed or None, conditions=conditions or None)
    return patch
