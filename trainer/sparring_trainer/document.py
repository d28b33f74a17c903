"""Where a game is stored and tracked, and the trainer's view of the whole resource
(`GameDocument`: the file mounted at /etc/sparring/game.json, or a game YAML given to
`python -m sparring_trainer`); the game itself is `config.GameConfig`."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from sparring_trainer.config import GameConfig, _Model

_S3_URI = re.compile(
    r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?P<prefix>(/[\w.\-/]*)?)$"
)
_FILE_URI = re.compile(r"^file://(?P<path>[^\s]+)$")


class SecretRef(_Model):
    """Where the S3 credentials are: a Secret in the game's own namespace."""

    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ]
    """Secret name (same namespace as the game)."""
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    """Key in the Secret holding the access key id."""
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"
    """Key in the Secret holding the secret access key."""


class StorageSpec(_Model):
    """Where checkpoints, samples and metrics go."""

    uri: str = "file://./.sparring"
    """s3://bucket[/prefix] or file://path. Artifacts go under {uri}/{namespace}/{game}/."""
    endpoint: str | None = None
    """S3 endpoint URL (MinIO, Ceph, moto ...); unset for AWS."""
    region: str | None = None
    """S3 region."""
    path_style: bool = False
    """Use path-style S3 addressing (most self-hosted S3 servers need it)."""
    secret_ref: SecretRef | None = None
    """Secret with the S3 credentials; credentials are never written inline."""

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError(f"storage uri {value!r} must not contain '..' path segments")
        if _S3_URI.match(value) or _FILE_URI.match(value):
            return value.rstrip("/") if value.count("/") > 2 else value
        raise ValueError(f"storage uri {value!r} must be s3://bucket[/prefix] or file://path")

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+(/[^\s]*)?$", value):
            raise ValueError(f"endpoint {value!r} must be an http:// or https:// URL")
        return value


class _Lenient(BaseModel):
    """Reads only what the trainer needs from a resource; the operator validates the rest."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class GameMeta(_Lenient):
    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ]
    namespace: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ] = "default"


class MlflowTracking(_Model):
    """An MLflow tracking server (or a local `sqlite:///` store): one run per game."""

    tracking_uri: Annotated[str, Field(pattern=r"^(https?|sqlite|file|databricks)(://|:).+")]
    """e.g. http://mlflow.ml.svc:5000; credentials (MLFLOW_TRACKING_TOKEN, or _USERNAME and
    _PASSWORD) from a Secret through spec.pod.envFrom."""
    experiment: Annotated[str, Field(min_length=1)] = "sparring"
    """The experiment the game's run belongs to."""


class WandbTracking(_Model):
    """Weights & Biases: one W&B run per phase, grouped by game."""

    project: Annotated[str, Field(min_length=1)]
    """The W&B project. WANDB_API_KEY (and WANDB_BASE_URL for a server of your own) from a
    Secret through spec.pod.envFrom; W&B's own variables apply too (WANDB_MODE=offline)."""
    entity: str | None = None
    """The team or user owning the project (default: the API key's)."""


class TrackingSpec(_Model):
    """Where training curves go besides the TensorBoard events each phase commits."""

    mlflow: MlflowTracking | None = None
    """Each training run's per-step scalars (as r{round}/{phase}/{run}/{scalar}) and each
    round's game metrics (at step = round) in one MLflow run per game, tagged
    sparring.game = namespace/name."""
    wandb: WandbTracking | None = None
    """The same scalars in W&B: a run per phase (group namespace/name, job type the phase),
    each training run's scalars against its own step; prepare's and evaluate's game metrics
    against the round."""


class GameDocumentSpec(_Lenient):
    rounds: Annotated[int, Field(ge=1)] = 1
    storage: StorageSpec = StorageSpec()
    game: GameConfig
    tracking: TrackingSpec = TrackingSpec()


class GameDocument(_Lenient):
    """The trainer's view of an `AdversarialGame` (the file mounted at /etc/sparring/game.json,
    or a game YAML given to `python -m sparring_trainer`)."""

    metadata: GameMeta
    spec: GameDocumentSpec
