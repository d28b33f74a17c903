"""Phase Jobs and the game ConfigMap as plain Kubernetes manifests (pure functions, no API calls).

Each phase of each round runs as one ``batch/v1`` Job whose single container runs the phase
contract's command (``python -m sparring_trainer PHASE --game /etc/sparring/game.json --round N``,
the same command ``sparring run`` runs locally). The game document reaches the pod through a
ConfigMap mounted at ``/etc/sparring``; S3 credentials reach it only as ``secretKeyRef``s.

The kopf handlers create these objects and add owner references with ``kopf.adopt``; nothing here
talks to a server, so every choice below is unit-tested (and schema-checked) without a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sparring_trainer.config import ALL_PHASES

from sparring_operator.api import API_VERSION, KIND, AdversarialGame, overlay
from sparring_operator.podsettings import MODEL_CACHE_DIR

GAME_DIR = "/etc/sparring"
GAME_KEY = "game.json"
GAME_FILE = f"{GAME_DIR}/{GAME_KEY}"
SCRATCH_DIR = "/scratch"
TERMINATION_LOG = "/dev/termination-log"
CONTAINER = "phase"
GPU_RESOURCE = "nvidia.com/gpu"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MAX_NAME = 63

LABEL_GAME = "sparring.dev/game"
LABEL_ROUND = "sparring.dev/round"
LABEL_PHASE = "sparring.dev/phase"
LABEL_ATTEMPT = "sparring.dev/attempt"

# Exit codes of the phase container that no retry can fix: 2 is a bad command line (an
# operator/image version mismatch), 3 is the trainer's "bad input" (game file, model or data
# reference, malformed data row). Such a Job fails at once with reason PodFailurePolicy, and the
# operator spends no retry on it. Exit 1 (a crash, an unreachable store) stays retryable.
NON_RETRYABLE_EXIT_CODES = (2, 3)

# The non-root identity of phase pods; the trainer image creates this user.
RUN_AS = 1000


@dataclass(frozen=True)
class OperatorSettings:
    """Operator-wide settings that shape phase Jobs (from the operator's flags/env)."""

    trainer_image: str = "ghcr.io/sparring-dev/sparring-trainer:0.1.0"
    phase_service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    scratch_size_limit: str = "50Gi"
    # A file:// store is a folder of whichever machine opens it: on a cluster each phase pod
    # would write into its own scratch, never seen by the next pod or by the operator. Only a
    # one-machine cluster whose pods share the host's filesystem can use one (development).
    allow_file_store: bool = False


def job_name(game: str, round: int, phase: str, attempt: int) -> str:
    """``{game}-r{round:04d}-{phase}-a{attempt}``: deterministic, so a create after a crash gets a
    409 and the operator adopts the existing Job instead of starting a duplicate."""
    if phase not in ALL_PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(ALL_PHASES)}")
    if round < 0 or attempt < 1:
        raise ValueError(
            f"round must be >= 0 and attempt >= 1 (got round {round}, attempt {attempt})"
        )
    name = f"{game}-r{round:04d}-{phase}-a{attempt}"
    if len(name) > MAX_NAME:
        # The Job controller copies the name into the pods' job-name label, and label values are
        # limited to 63 characters: a longer name would be accepted here and fail at pod creation.
        raise ValueError(
            f"job name {name!r} is {len(name)} characters; Kubernetes allows at most {MAX_NAME} "
            "(game names are limited to 36 characters and attempts to 99 so that names fit)"
        )
    return name


def configmap_name(game: str) -> str:
    return f"{game}-game"


def game_json(game: AdversarialGame) -> str:
    """The document the trainer reads from ``/etc/sparring/game.json``.

    Only apiVersion, kind, name, namespace and spec: never the status (it changes on every
    reconcile and would churn the ConfigMap) nor labels/annotations (kubectl's last-applied
    annotation alone can be large). Credentials cannot appear: the models reject them inline and
    ``storage.secretRef`` holds only the Secret's name and key names.
    """
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": game.metadata.name, "namespace": game.metadata.namespace},
        "spec": game.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return json.dumps(doc, separators=(",", ":"))


def _base_labels(game: AdversarialGame, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "sparring",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "sparring-operator",
        LABEL_GAME: game.metadata.name,
    }


def phase_labels(game: AdversarialGame, round: int, phase: str, attempt: int) -> dict[str, str]:
    """Labels of a phase Job and its pods; the operator lists a game's Jobs by these."""
    return _base_labels(game, "phase") | {
        LABEL_ROUND: str(round),
        LABEL_PHASE: phase,
        LABEL_ATTEMPT: str(attempt),
    }


def build_configmap(game: AdversarialGame) -> dict[str, Any]:
    """The ConfigMap mounted into every phase pod. Not immutable: ``spec.rounds`` may grow and
    the operator then updates it in place (pods read the file once, at phase start)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(game.metadata.name),
            "namespace": game.metadata.namespace,
            "labels": _base_labels(game, "game"),
        },
        "data": {GAME_KEY: game_json(game)},
    }


def phase_args(phase: str, round: int, game_file: str = GAME_FILE, nproc: int = 1) -> list[str]:
    """The trainer's arguments; ``sparring_operator.local.phase_command`` runs the same ones."""
    args = ["-m", "sparring_trainer", phase, "--game", game_file, "--round", str(round)]
    return [*args, "--nproc-per-node", str(nproc)] if nproc > 1 else args


RENDEZVOUS_PORT = 29500


def container_command(
    phase: str, round: int, gpu: int, nodes: int = 1, rendezvous: str | None = None
) -> list[str]:
    """``python -m sparring_trainer ...``; with several GPUs the trainer starts one rank per
    GPU under torchrun itself (a local rendezvous inside the pod: one node, nothing to deploy),
    and exits with the first failed rank's status, so bad input still exits 3. On several
    nodes each pod's torchrun takes its node rank from JOB_COMPLETION_INDEX and meets the
    others at `rendezvous`, pod 0's stable name."""
    command = ["python", *phase_args(phase, round, nproc=max(gpu, 1) if nodes > 1 else gpu)]
    if nodes > 1:
        command += ["--nnodes", str(nodes), "--rdzv-endpoint", f"{rendezvous}:{RENDEZVOUS_PORT}"]
    return command


def rendezvous_host(game: AdversarialGame, job: str) -> str:
    """Pod 0's stable name: an Indexed Job's pod gets the hostname JOB-INDEX, and the headless
    Service named as the Job (the pods' subdomain) publishes it in cluster DNS."""
    return f"{job}-0.{job}.{game.metadata.namespace}.svc"


def _env(game: AdversarialGame, attempt: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # The trainer writes its <= 4 KiB summary here; the kubelet turns it into the container's
        # termination message, which the operator reads from the pod status without logs access.
        {"name": "SPARRING_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "SPARRING_SCRATCH", "value": SCRATCH_DIR},
        {"name": "SPARRING_CACHE", "value": f"{SCRATCH_DIR}/cache"},
        # The root filesystem is read-only: every library that writes under $HOME (caches,
        # torch compile artifacts, Hugging Face) must land on the scratch volume instead.
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "HF_HOME", "value": f"{SCRATCH_DIR}/hf"},
        # Progress lines reach `kubectl logs` as they happen, not when a buffer fills.
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "SPARRING_ATTEMPT", "value": str(attempt)},
    ]
    if game.spec.model_cache is not None:  # models and base checkpoints outlive the pod
        cache = {
            "SPARRING_CACHE": MODEL_CACHE_DIR,
            "HF_HOME": f"{MODEL_CACHE_DIR}/hf",
            "SPARRING_CHECKPOINT_CACHE": f"{MODEL_CACHE_DIR}/checkpoints",
        }
        env = [e for e in env if e["name"] not in cache]
        env += [{"name": k, "value": v} for k, v in cache.items()]
    storage = game.spec.storage
    if storage.region:
        env.append({"name": "AWS_REGION", "value": storage.region})
    if storage.secret_ref is not None:
        # Credentials only ever as references: the kubelet resolves them at pod start, so their
        # values never appear in the Job, logs or events. (The operator itself reads the same
        # Secret, in the game's namespace only, to check the store's markers.) Without a
        # secretRef boto3 falls back to the pod's own identity (IRSA / workload identity via
        # the phase service account).
        ref = storage.secret_ref
        for var, key in (
            ("AWS_ACCESS_KEY_ID", ref.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", ref.secret_access_key_key),
        ):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}})
    return env


def _dump(model: BaseModel) -> dict[str, Any]:
    """A settings model as the core/v1 object it mirrors (camelCase, unset fields left out)."""
    return dict(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def _resources(cpu: str | None, memory: str | None, gpu: int) -> dict[str, Any]:
    """Requests equal limits: with cpu and memory both set the pod is in the Guaranteed QoS class,
    the last to be evicted under node pressure (hours of training lost otherwise), and a memory
    leak ends in an OOM kill of this pod rather than of its neighbours."""
    amounts: dict[str, str] = {}
    if cpu:
        amounts["cpu"] = cpu
    if memory:
        amounts["memory"] = memory
    if gpu > 0:
        amounts[GPU_RESOURCE] = str(gpu)  # extended resources: requests must equal limits
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def build_job(
    game: AdversarialGame, round: int, phase: str, attempt: int, settings: OperatorSettings
) -> dict[str, Any]:
    """The Job that runs one attempt of one phase. Owner references are added by the caller."""
    spec = game.spec
    phase_spec = spec.phases.for_phase(phase)
    res = phase_spec.resources
    sched = overlay(spec.scheduling, phase_spec.scheduling)
    name = job_name(game.metadata.name, round, phase, attempt)
    labels = phase_labels(game, round, phase, attempt)
    job_labels = dict(labels)
    if sched.queue_name:
        # Kueue admits the Job: its webhook suspends it on creation and unsuspends it when quota
        # is free, so spec.suspend is deliberately never set here (we would fight over it).
        job_labels[KUEUE_QUEUE_LABEL] = sched.queue_name

    scratch = res.scratch or settings.scratch_size_limit
    mounts: list[dict[str, Any]] = [
        {"name": "game", "mountPath": GAME_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
        # /tmp on the scratch volume: the root filesystem is read-only, and sharing the scratch
        # volume keeps one size limit for everything the phase writes locally.
        {"name": "scratch", "mountPath": "/tmp", "subPath": "tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "game",
            "configMap": {
                "name": configmap_name(game.metadata.name),
                "items": [{"key": GAME_KEY, "path": GAME_KEY}],
                "defaultMode": 0o444,
            },
        },
        # Bounded so a runaway phase is evicted instead of filling the node's disk.
        {"name": "scratch", "emptyDir": {"sizeLimit": scratch}},
    ]
    pod = spec.pod
    if res.gpu > 0 or pod.shm_size:
        # The runtime's default /dev/shm is 64 MiB: PyTorch dataloader workers and NCCL need far
        # more. Memory-backed, so it is charged to the container's memory limit.
        shm: dict[str, Any] = {"medium": "Memory"}
        if pod.shm_size:
            shm["sizeLimit"] = pod.shm_size
        volumes.append({"name": "shm", "emptyDir": shm})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if spec.model_cache is not None:
        volumes.append(spec.model_cache.volume())
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_DIR})
    volumes += [_dump(v) for v in pod.volumes]
    extra = pod.container_fields()
    mounts += extra.pop("volumeMounts", [])

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": phase_spec.image or settings.trainer_image,
        "imagePullPolicy": pod.image_pull_policy or settings.image_pull_policy,
        "command": container_command(phase, round, res.gpu, res.nodes, rendezvous_host(game, name)),
        # Relative paths (e.g. a file:// store) resolve on the writable scratch volume.
        "workingDir": SCRATCH_DIR,
        # The game's own variables come after the operator's, which they may not name.
        "env": _env(game, attempt) + extra.pop("env", []),
        **extra,  # envFrom
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # A crash before the trainer wrote its summary still leaves the operator a reason: the
        # tail of the log becomes the termination message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # The Pod Security "restricted" profile: a compromised model loader or data file cannot
        # gain privileges, load kernel capabilities, or persist anything in the image.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    resources = _resources(res.cpu, res.memory, res.gpu)
    # The scheduler places the pod only where its scratch fits, and the kubelet evicts other
    # pods' disk hogs before this one: without a request a disk-hungry phase lands on a full
    # node and is evicted (and replaced) there. No limit: the volume's sizeLimit bounds it.
    resources.setdefault("requests", {})["ephemeral-storage"] = scratch
    container["resources"] = resources

    pod_spec: dict[str, Any] = {
        # Never restart in place: a failed attempt is a new Job, created by the operator with
        # backoff, so each attempt's pod, logs and termination message stay inspectable.
        "restartPolicy": "Never",
        # Phases never call the Kubernetes API: a mounted token would only be something to steal.
        "automountServiceAccountToken": False,
        # No service-discovery env vars: nothing to read, and thousands of Services in a
        # namespace would otherwise bloat the environment (and slow pod start).
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            # Volumes (scratch, shm) become group-writable by the phase's user.
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if settings.phase_service_account:
        pod_spec["serviceAccountName"] = settings.phase_service_account
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if sched.node_selector:
        pod_spec["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod_spec["tolerations"] = [_dump(t) for t in sched.tolerations]
    if sched.affinity is not None:
        pod_spec["affinity"] = _dump(sched.affinity)
    if sched.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = [
            _dump(t) for t in sched.topology_spread_constraints
        ]
    if sched.runtime_class_name:
        pod_spec["runtimeClassName"] = sched.runtime_class_name
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in pod.image_pull_secrets]
    template_meta: dict[str, Any] = {"labels": {**pod.labels, **labels}}
    if pod.annotations:
        template_meta["annotations"] = dict(pod.annotations)

    job_spec: dict[str, Any] = {
        # The operator counts attempts itself (one Job per attempt, exponential backoff between
        # them, visible in status), so any exit of the phase ends the Job (the FailJob rules).
        # What the Job controller retries in place is disruptions: preemption, eviction, node
        # drain are not the phase's fault and do not use a retry, but only up to the phase's
        # disruptionLimit: a phase evicted for its disk use would otherwise be replaced forever.
        "backoffLimit": phase_spec.retry.disruption_limit,
        "podFailurePolicy": {
            "rules": [
                # First, so that it wins when an evicted container also exits non-zero.
                {
                    "action": "Count",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                # A user or configuration error: the operator reads the exit code and fails the
                # game instead of retrying in vain.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(NON_RETRYABLE_EXIT_CODES),
                    },
                },
                # Any other failure (a crash, an OOM kill): one failed attempt, retried by the
                # operator with backoff, not by the Job controller at once.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]},
                },
            ]
        },
        # A replacement pod starts only once the old one has fully terminated: never two pods
        # of one phase writing to the same store prefix or holding GPUs at once.
        "podReplacementPolicy": "Failed",
        # No ttlSecondsAfterFinished: the operator reads finished Jobs (outcome, termination
        # message); the owner reference garbage-collects them with the game.
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if phase_spec.deadline_seconds is not None:
        # Time suspended (queued in Kueue) does not count: the timer restarts on resume.
        job_spec["activeDeadlineSeconds"] = phase_spec.deadline_seconds
    if res.nodes > 1:
        # One pod per node, all of one attempt: the first pod to fail fails the Job (and the
        # Job controller removes the others), and the operator's next attempt starts the
        # whole group again. Kueue sees one workload of `nodes` pods: admitted all or none.
        job_spec |= {
            "completionMode": "Indexed",
            "completions": res.nodes,
            "parallelism": res.nodes,
            "backoffLimit": 0,
        }
        pod_spec["subdomain"] = name  # the headless Service: each pod is JOB-INDEX.JOB

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": game.metadata.namespace, "labels": job_labels},
        "spec": job_spec,
    }
