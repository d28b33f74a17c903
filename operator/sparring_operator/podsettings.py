"""What a game may add to its phase pods (`spec.pod`, and `spec.scheduling`'s placement fields):
environment (e.g. `HF_TOKEN` from a Secret for a gated model), image pull secrets, extra
volumes and mounts, pod labels and annotations, affinity, topology spread, a runtime class, the
size of `/dev/shm` and the image pull policy.

Each field is the core/v1 shape cut down to what a phase needs, so that the CRD's schema holds
every rule and the API server refuses a bad value when it is applied: volumes are Secrets,
ConfigMaps, PersistentVolumeClaims or emptyDirs (never hostPath), and nothing may replace what
the operator sets itself (its environment, volumes, mount paths and labels), which the phases
and the operator rely on.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from sparring_operator.apitypes import DISK_QUANTITY, MODEL_CONFIG

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A qualified name (label or annotation key): an optional DNS-subdomain prefix and a name.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"

# What the operator sets on every phase pod, or what would send the phases' store and Hub
# requests (signed with the runtime's keys) somewhere its runtime does not allow: a game may
# not set it. (The trainer's S3 client ignores endpoint variables anyway; see _s3.py.)
RESERVED_ENV = re.compile(r"^(SPARRING_.*|HOME|HF_HOME|PYTHONUNBUFFERED|AWS_ACCESS_KEY_ID|"
                          r"AWS_SECRET_ACCESS_KEY|AWS_REGION|AWS_ENDPOINT_URL(_.*)?|AWS_CA_BUNDLE|"
                          r"AWS_CONFIG_FILE|AWS_SHARED_CREDENTIALS_FILE|AWS_PROFILE|"
                          r"HF_ENDPOINT)$")  # fmt: skip
# A name with one of these words in it (HF_TOKEN, WANDB_API_KEY, DB_PASSWORD), not one that
# merely starts like one (TOKENIZERS_PARALLELISM).
CREDENTIAL_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|API_?KEY|ACCESS_?KEY)(_|$)", re.I
)
RESERVED_VOLUMES = ("game", "scratch", "shm", "model-cache")
MODEL_CACHE_DIR = "/model-cache"
RESERVED_PATHS = ("/etc/sparring", "/scratch", "/tmp", "/dev/shm", "/dev/termination-log",
                  MODEL_CACHE_DIR)  # fmt: skip
RESERVED_LABEL_PREFIXES = ("sparring.dev/", "app.kubernetes.io/", "batch.kubernetes.io/",
                           "kueue.x-k8s.io/")  # fmt: skip
RESERVED_LABELS = ("job-name", "controller-uid")

Name = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]


class _Model(BaseModel):
    model_config = MODEL_CONFIG


class KeySelector(_Model):
    """One key of a Secret or ConfigMap in the game's namespace."""

    name: Name
    """The Secret's or ConfigMap's name."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """The key whose value the variable takes."""
    optional: bool | None = None
    """Start the pod even if it is missing."""


class EnvSource(_Model):
    """Where a variable's value comes from: exactly one of the two."""

    secret_key_ref: KeySelector | None = None
    """A key of a Secret (e.g. HF_TOKEN)."""
    config_map_key_ref: KeySelector | None = None
    """A key of a ConfigMap."""

    @model_validator(mode="after")
    def _one(self) -> EnvSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("give exactly one of secretKeyRef and configMapKeyRef")
        return self


class EnvVar(_Model):
    """An environment variable of the phase container."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=ENV_NAME)]
    """Its name; SPARRING_*, HOME, HF_HOME, PYTHONUNBUFFERED and the AWS credentials and
    region are the operator's."""
    value: str | None = None
    """A literal value (never a credential: use valueFrom)."""
    value_from: EnvSource | None = None
    """A value read from a Secret or ConfigMap when the pod starts."""

    @model_validator(mode="after")
    def _check(self) -> EnvVar:
        if RESERVED_ENV.match(self.name):
            raise ValueError(f"name: {self.name} is set by the operator on every phase pod")
        if self.value is not None and self.value_from is not None:
            raise ValueError("give value or valueFrom, not both")
        if self.value and CREDENTIAL_NAME.search(self.name):
            # A literal would sit in the game's spec and its ConfigMap, readable by anyone who
            # can read the game: a credential belongs in a Secret.
            raise ValueError(
                f"value: {self.name} looks like a credential; give it as valueFrom.secretKeyRef"
            )
        return self


class ObjectName(_Model):
    """A Secret, ConfigMap or Secret of image credentials, by name, in the game's namespace."""

    name: Name
    """Its name."""
    optional: bool | None = None
    """Start the pod even if it is missing (envFrom only)."""


class EnvFrom(_Model):
    """Every key of a Secret or ConfigMap as variables: exactly one of the two."""

    prefix: Annotated[str, Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]*$")] | None = None
    """Prepended to each key."""
    secret_ref: ObjectName | None = None
    """A Secret."""
    config_map_ref: ObjectName | None = None
    """A ConfigMap."""

    @model_validator(mode="after")
    def _one(self) -> EnvFrom:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("give exactly one of secretRef and configMapRef")
        return self


class SecretVolume(_Model):
    """A Secret as files."""

    secret_name: Name
    """The Secret."""
    default_mode: Annotated[int, Field(ge=0, le=0o777)] | None = None
    """Mode bits of the files (decimal in JSON, e.g. 292 for 0444)."""
    optional: bool | None = None
    """Start the pod even if it is missing."""


class ConfigMapVolume(_Model):
    """A ConfigMap as files."""

    name: Name
    """The ConfigMap."""
    default_mode: Annotated[int, Field(ge=0, le=0o777)] | None = None
    """Mode bits of the files."""
    optional: bool | None = None
    """Start the pod even if it is missing."""


class ClaimVolume(_Model):
    """A PersistentVolumeClaim in the game's namespace (e.g. a dataset)."""

    claim_name: Name
    """The claim."""
    read_only: bool | None = None
    """Mount it read-only."""


class EmptyDirVolume(_Model):
    """A fresh folder for the pod's lifetime."""

    medium: Literal["", "Memory"] | None = None
    """'' (the node's disk) or Memory."""
    size_limit: Annotated[str, Field(pattern=DISK_QUANTITY)] | None = None
    """Its size limit, e.g. 10Gi."""


class Volume(_Model):
    """An extra volume of the phase pod: exactly one source."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    """Its name, which volumeMounts refer to; game, scratch and shm are the operator's."""
    secret: SecretVolume | None = None
    """A Secret."""
    config_map: ConfigMapVolume | None = None
    """A ConfigMap."""
    persistent_volume_claim: ClaimVolume | None = None
    """A PersistentVolumeClaim."""
    empty_dir: EmptyDirVolume | None = None
    """An emptyDir."""

    @model_validator(mode="after")
    def _check(self) -> Volume:
        if self.name in RESERVED_VOLUMES:
            raise ValueError(f"name: {self.name} is a volume of the operator's")
        sources = (self.secret, self.config_map, self.persistent_volume_claim, self.empty_dir)
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "give exactly one of secret, configMap, persistentVolumeClaim and emptyDir"
            )
        return self


class VolumeMount(_Model):
    """Where the phase container sees one of `spec.pod.volumes`."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    """The volume."""
    mount_path: Annotated[str, Field(min_length=2, max_length=4096, pattern=r"^/[^:]*$")]
    """An absolute path; /etc/sparring, /scratch, /tmp, /dev/shm and the termination log are
    the operator's."""
    read_only: bool | None = None
    """Mount it read-only."""
    sub_path: Annotated[str, Field(max_length=4096, pattern=r"^[^/].*$")] | None = None
    """A path inside the volume to mount instead of its root."""

    @model_validator(mode="after")
    def _check(self) -> VolumeMount:
        path = self.mount_path.rstrip("/")
        for reserved in RESERVED_PATHS:
            if (
                path == reserved
                or path.startswith(reserved + "/")
                or reserved.startswith(path + "/")
            ):
                raise ValueError(
                    f"mountPath: {self.mount_path} overlaps {reserved}, the operator's"
                )
        if self.sub_path is not None and ".." in self.sub_path.split("/"):
            raise ValueError("subPath: may not contain '..'")
        return self


def _check_keys(what: str, mapping: dict[str, str], values: bool) -> None:
    for key, value in mapping.items():
        if len(key) > 316 or not re.match(QUALIFIED_NAME, key):
            raise ValueError(f"{what}: {key!r} is not a valid key (an optional DNS prefix/ and a "
                             "name of at most 63 characters)")  # fmt: skip
        if key.startswith(RESERVED_LABEL_PREFIXES) or key in RESERVED_LABELS:
            raise ValueError(f"{what}: {key} is the operator's or the Job controller's")
        if values and (len(value) > 63 or not re.match(LABEL_VALUE, value)):
            raise ValueError(f"{what}: the value of {key} is not a valid label value")


class PodSettings(_Model):
    """What every phase pod of the game gets beside the operator's own settings."""

    env: list[EnvVar] = []
    """Extra environment variables, e.g. HF_TOKEN from a Secret for gated models."""
    env_from: list[EnvFrom] = []
    """Every key of Secrets or ConfigMaps as variables."""
    image_pull_secrets: list[ObjectName] = []
    """Secrets with the credentials of a private registry."""
    volumes: list[Volume] = []
    """Extra volumes (Secrets, ConfigMaps, PersistentVolumeClaims, emptyDirs)."""
    volume_mounts: list[VolumeMount] = []
    """Where the phase container mounts them."""
    labels: dict[str, str] = {}
    """Extra pod labels (not sparring.dev/, app.kubernetes.io/, batch.kubernetes.io/ or
    kueue.x-k8s.io/ ones: use scheduling.queueName for Kueue)."""
    annotations: dict[str, str] = {}
    """Pod annotations."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Overrides the operator's pull policy for this game."""
    shm_size: Annotated[str, Field(pattern=DISK_QUANTITY)] | None = None
    """Size limit of the memory-backed /dev/shm (mounted for GPU phases, or whenever this is
    set); it counts against the container's memory limit."""

    @model_validator(mode="after")
    def _check(self) -> PodSettings:
        _check_keys("labels", self.labels, values=True)
        _check_keys("annotations", self.annotations, values=False)
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError("volumes: two volumes have the same name")
        for i, mount in enumerate(self.volume_mounts):
            if mount.name not in names:
                raise ValueError(f"volumeMounts[{i}].name: no volume named {mount.name!r}")
        paths = [m.mount_path.rstrip("/") for m in self.volume_mounts]
        if len(set(paths)) != len(paths):
            raise ValueError("volumeMounts: two mounts have the same mountPath")
        return self

    def container_fields(self) -> dict[str, Any]:
        """What the phase container adds: env (after the operator's), envFrom, mounts."""
        out: dict[str, Any] = {}
        if self.env:
            out["env"] = [_dump(e) for e in self.env]
        if self.env_from:
            out["envFrom"] = [_dump(e) for e in self.env_from]
        if self.volume_mounts:
            out["volumeMounts"] = [_dump(m) for m in self.volume_mounts]
        return out


def _dump(model: BaseModel) -> dict[str, Any]:
    return dict(model.model_dump(mode="json", by_alias=True, exclude_none=True))


class EphemeralCache(_Model):
    """A volume of each pod's own, provisioned for the pod and deleted with it (a generic
    ephemeral volume)."""

    size: Annotated[str, Field(pattern=DISK_QUANTITY)]
    """Its capacity, e.g. '500Gi' (room for every base model of the game)."""
    storage_class_name: Name | None = None
    """The StorageClass that provisions it, e.g. a node-local NVMe class (default: the
    cluster's)."""


class ModelCache(_Model):
    """A volume for base models that every phase pod of the game mounts at /model-cache: a
    shared claim (`claimName`) or a volume of each pod's own (`ephemeral`)."""

    claim_name: Name | None = None
    """A PersistentVolumeClaim in the game's namespace (ReadWriteMany when phase pods may run
    on several nodes). Base models (hf://, pip://, s3://) are fetched into it once, under a
    lock per model, and the base checkpoints prepare commits are kept there by content: each
    later phase reads them from it instead of the store."""
    ephemeral: EphemeralCache | None = None
    """A volume provisioned for each pod: its ranks fetch each base model once and keep the
    download off the scratch volume and the memory limit; the next pod fetches again (use
    `claimName` to fetch once per game)."""

    @model_validator(mode="after")
    def _one_kind(self) -> ModelCache:
        if (self.claim_name is None) == (self.ephemeral is None):
            raise ValueError("give exactly one of claimName (a shared claim) or ephemeral")
        return self

    def volume(self) -> dict[str, Any]:
        """The pod's `model-cache` volume."""
        if self.claim_name is not None:
            return {"name": "model-cache", "persistentVolumeClaim": {"claimName": self.claim_name}}
        assert self.ephemeral is not None
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": self.ephemeral.size}},
        }
        if self.ephemeral.storage_class_name:
            claim["storageClassName"] = self.ephemeral.storage_class_name
        return {"name": "model-cache", "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}
