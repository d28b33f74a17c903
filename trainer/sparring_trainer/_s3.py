"""The S3 backend of the artifact store (imported only when an ``s3://`` store is opened, so a
file-only setup never pays for importing boto3).

Every botocore/boto3 failure is translated into `StoreError` (or `ArtifactNotFound`) carrying the
URI and the S3 error code, so callers handle one exception family and logs stay readable.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .document import StorageSpec
from .store import (
    DEFAULT_MULTIPART_THRESHOLD,
    ArtifactNotFound,
    ArtifactStore,
    StoreError,
    _sha256_file,
    check_key,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # boto3-stubs[s3]; Any when not installed

_MIB = 1024 * 1024
_MIN_PART = 5 * _MIB  # S3's smallest allowed part (all but the last)
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class S3Store(ArtifactStore):
    """Objects in an existing S3 bucket, optionally under a key prefix (``s3://bucket/prefix``).

    Writes of single objects are atomic in S3 itself (a PUT or a completed multipart upload
    appears whole), so no temp-key dance is needed. The sha256 of each upload is recorded in
    the object's user metadata so that `commit` can build its manifest without downloading the
    data back; `require_committed(verify=True)` always re-reads the bytes.
    """

    def __init__(
        self,
        storage: StorageSpec,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        bucket, _, root = storage.uri[len("s3://") :].partition("/")
        root = "/".join(s for s in root.split("/") if s)
        if root:
            check_key(root)
        self.bucket = bucket
        self._root = f"{root}/" if root else ""
        self.uri = f"s3://{bucket}/{root}" if root else f"s3://{bucket}"
        self.endpoint = storage.endpoint
        # Parts of at most 16 MiB keep s3transfer's in-memory buffers (10 parts) modest in small
        # pods; a lower threshold also means smaller parts. s3transfer itself grows the part
        # size when a file would need more than S3's 10,000 parts.
        if multipart_chunksize is None:
            multipart_chunksize = min(multipart_threshold, 16 * _MIB)
        self._transfer = TransferConfig(
            multipart_threshold=max(1, multipart_threshold),
            multipart_chunksize=max(_MIN_PART, multipart_chunksize),
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            s3={"addressing_style": "path"} if storage.path_style else None,
            connect_timeout=10,
            read_timeout=60,
            # The store's endpoint is storage.endpoint and nothing else: AWS_ENDPOINT_URL(_S3)
            # in a phase pod's environment (a game's envFrom) or a config file would send
            # requests signed with the store's keys to a host the runtime never allowed.
            ignore_configured_endpoint_urls=True,  # type: ignore[call-arg]  # botocore>=1.31.7; stubs lag
        )
        # A private session: boto3's default session is shared global state (not thread-safe to
        # create clients from); credentials still come from the standard chain (env, files, IRSA).
        # Explicit credentials are for the operator, which reads each game's Secret itself;
        # phase pods get theirs as env vars from the same Secret.
        session = (
            boto3.session.Session(
                aws_access_key_id=credentials[0], aws_secret_access_key=credentials[1]
            )
            if credentials
            else boto3.session.Session()
        )
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=storage.endpoint,
            region_name=storage.region or "us-east-1",
            config=config,
        )
        self._check_bucket()

    # -- errors ---------------------------------------------------------------------------

    def _missing_bucket(self) -> StoreError:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return StoreError(
            f"S3 bucket {self.bucket!r}{where} does not exist; create it before using {self.uri}"
        )

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise self._missing_bucket() from None
            if code in ("403", "AccessDenied"):
                raise StoreError(
                    f"access to S3 bucket {self.bucket!r} denied for {self.uri} (check the "
                    "credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
                ) from None
            raise StoreError(f"cannot open {self.uri}: {code}: {exc}") from None
        except NoCredentialsError:
            raise StoreError(
                f"no S3 credentials for {self.uri}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (in a pod: from the game's storage.secretRef)"
            ) from None
        except BotoCoreError as exc:
            raise StoreError(f"cannot reach S3 for {self.uri}: {exc}") from None

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        """Translate boto errors raised by the block into the store's exceptions.

        ``from None``: the botocore chain adds nothing the message does not already say.
        """
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            if code == "NoSuchBucket":
                raise self._missing_bucket() from None
            if code in _NOT_FOUND:
                raise ArtifactNotFound(f"{self.uri_for(key)} does not exist") from None
            message = error.get("Message") or str(exc)
            raise StoreError(f"{op} {self.uri_for(key)} failed: {code}: {message}") from None
        except (BotoCoreError, Boto3Error) as exc:
            # Boto3Error: S3UploadFailedError from the transfer manager, which has already
            # flattened the ClientError into its message.
            if "NoSuchBucket" in str(exc):
                raise self._missing_bucket() from None
            raise StoreError(f"{op} {self.uri_for(key)} failed: {exc}") from None

    def _full(self, key: str, *, prefix: bool = False) -> str:
        return self._root + check_key(key, prefix=prefix)

    # -- the interface --------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        meta = {"sha256": hashlib.sha256(data).hexdigest()}
        with self._errors("put", key):
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, Metadata=meta)

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._errors("get", key):
            return self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read()

    def copy(self, src: str, dst: str) -> None:
        source: Any = {"Bucket": self.bucket, "Key": self._full(src)}
        with self._errors("copy", src):
            # The managed copy: server-side, in parts above 5 GB (one CopyObject cannot).
            self._client.copy(source, self.bucket, self._full(dst))

    def swap(self, key: str, data: bytes, expected: bytes | None) -> bool:
        # S3's conditional writes: If-None-Match "*" creates only; If-Match writes only over
        # the version (ETag) whose content was compared. 412 means another writer came first.
        full = self._full(key)
        condition: dict[str, Any] = {"IfNoneMatch": "*"}
        if expected is not None:
            try:
                with self._errors("get", key):
                    current = self._client.get_object(Bucket=self.bucket, Key=full)
                    body = current["Body"].read()
            except ArtifactNotFound:
                return False
            if body != expected:
                return False
            condition = {"IfMatch": current["ETag"]}
        try:
            with self._errors("put", key):
                self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **condition)
        except StoreError as exc:
            if "PreconditionFailed" in str(exc) or "ConditionalRequestConflict" in str(exc):
                return False
            raise
        return True

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            with self._errors("head", key):
                self._client.head_object(Bucket=self.bucket, Key=full)
        except ArtifactNotFound:
            return False
        return True

    def list(self, prefix: str) -> builtins.list[str]:
        full = self._full(prefix, prefix=True)
        keys = []
        with self._errors("list", prefix):
            pages = self._client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    # Keys ending in "/" are "folder" markers some consoles create: not objects.
                    if key.startswith(self._root) and not key.endswith("/"):
                        keys.append(key[len(self._root) :])
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        if not check_key(prefix, prefix=True):
            raise StoreError(f"refusing to delete the whole store {self.uri}")
        keys = self.list(prefix)
        with self._errors("delete", prefix):
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = keys[start : start + 1000]
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._root + k} for k in batch], "Quiet": True},
                )
                if errors := response.get("Errors"):
                    first = errors[0]
                    raise StoreError(
                        f"delete {self.uri_for(prefix)} failed for {len(errors)} object(s), "
                        f"e.g. {first.get('Key')}: {first.get('Code')}: {first.get('Message')}"
                    )

    def upload_file(self, local: Path, key: str) -> None:
        full, local = self._full(key), Path(local)
        if not local.is_file():
            raise StoreError(f"cannot upload {local} to {self.uri_for(key)}: not a file")
        extra = {"Metadata": {"sha256": _sha256_file(local)}}
        with self._errors("upload", key):
            self._client.upload_file(
                str(local), self.bucket, full, ExtraArgs=extra, Config=self._transfer
            )

    def download_file(self, key: str, local: Path) -> None:
        full, local = self._full(key), Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        # s3transfer writes to a temp name beside `local` and renames it when complete.
        with self._errors("download", key):
            self._client.download_file(self.bucket, full, str(local), Config=self._transfer)

    def _chunks(self, key: str) -> Iterator[bytes]:
        full = self._full(key)
        with self._errors("get", key):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
            yield from body.iter_chunks(_MIB)

    def _digest(self, key: str, *, trust_metadata: bool = False) -> tuple[int, str]:
        if trust_metadata:
            with self._errors("head", key):
                head: Any = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
            sha = head.get("Metadata", {}).get("sha256", "")
            if _SHA256.match(sha):
                return int(head["ContentLength"]), sha
        return super()._digest(key)
