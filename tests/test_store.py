"""The artifact store, on both backends: a temporary directory and a real moto S3 server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
from sparring_trainer.document import StorageSpec
from sparring_trainer.store import (
    SUCCESS,
    ArtifactNotFound,
    ArtifactStore,
    StoreError,
    UncommittedError,
    commit,
    game_prefix,
    is_committed,
    open_store,
    phase_prefix,
    require_committed,
)

MIB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest) -> StorageSpec:
    spec: StorageSpec = request.getfixturevalue(f"{request.param}_storage")
    return spec


@pytest.fixture
def store(storage: StorageSpec) -> ArtifactStore:
    return open_store(storage, multipart_threshold=5 * MIB)


def _raw_s3(storage: StorageSpec) -> tuple[object, str, str]:
    """A plain boto3 client, the bucket and the key prefix: to inspect S3 behind the store."""
    bucket, _, root = storage.uri[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=storage.endpoint, region_name="us-east-1")
    return client, bucket, f"{root}/"


def test_bytes_round_trip(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 17
    store.put_bytes("a/b/blob.bin", data)
    assert store.get_bytes("a/b/blob.bin") == data
    store.put_bytes("a/b/blob.bin", b"replaced")
    assert store.get_bytes("a/b/blob.bin") == b"replaced"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    with pytest.raises(ArtifactNotFound, match="a/missing"):
        store.get_bytes("a/missing")


def test_uri_for(store: ArtifactStore, storage: StorageSpec) -> None:
    if storage.uri.startswith("s3://"):
        assert store.uri == storage.uri
    else:
        assert store.uri.startswith("file:///")
    assert store.uri_for("ns/game/x.json") == store.uri + "/ns/game/x.json"
    assert store.uri_for("ns/game/") == store.uri + "/ns/game/"


def test_list_exists_delete(store: ArtifactStore) -> None:
    for key in ("g1/r/a", "g1/r/sub/b", "g1/s", "g10/c", "other/d"):
        store.put_bytes(key, key.encode())
    assert store.exists("g1/r/a")
    assert not store.exists("g1/r")  # a "directory" is not an object
    assert not store.exists("g1/nope")
    assert store.list("g1/") == ["g1/r/a", "g1/r/sub/b", "g1/s"]
    assert store.list("g1") == ["g1/r/a", "g1/r/sub/b", "g1/s", "g10/c"]  # string prefix
    assert store.list("") == ["g1/r/a", "g1/r/sub/b", "g1/s", "g10/c", "other/d"]
    assert store.list("nothing/") == []

    store.delete_prefix("g1/r/")
    assert store.list("g1") == ["g1/s", "g10/c"]
    store.delete_prefix("g1/")
    assert store.list("") == ["g10/c", "other/d"]
    store.delete_prefix("missing/")  # nothing there: not an error
    with pytest.raises(StoreError, match="whole store"):
        store.delete_prefix("")


def test_trees(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = {"config.json": b"{}", "weights/model.bin": os.urandom(3000), "a/b/c/d.txt": b"deep"}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"must not be uploaded")
    (src / "link").symlink_to(outside, target_is_directory=True)

    keys = store.upload_tree(src, "ns/game/ckpt")  # a missing trailing "/" is added
    assert keys == sorted(f"ns/game/ckpt/{rel}" for rel in files)
    assert store.list("ns/game/ckpt/") == keys

    dst = store.download_tree("ns/game/ckpt/", tmp_path / "dst")
    got = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got == files

    single = tmp_path / "one" / "model.bin"
    store.download_file("ns/game/ckpt/weights/model.bin", single)
    assert single.read_bytes() == files["weights/model.bin"]
    with pytest.raises(ArtifactNotFound):
        store.download_file("ns/game/ckpt/nope.bin", tmp_path / "nope.bin")
    assert not (tmp_path / "nope.bin").exists()


def test_local_dir(store: ArtifactStore, storage: StorageSpec) -> None:
    store.put_bytes("ns/g/x/file.txt", b"hi")
    local = store.local_dir("ns/g/x/")
    if storage.uri.startswith("s3://"):
        assert local is None
    else:
        assert local is not None
        assert (local / "file.txt").read_bytes() == b"hi"


def test_multipart_upload(store: ArtifactStore, storage: StorageSpec, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = os.urandom(12 * MIB)
    big.write_bytes(data)
    store.upload_file(big, "ckpt/big.bin")
    if storage.uri.startswith("s3://"):
        client, bucket, root = _raw_s3(storage)
        head = client.head_object(Bucket=bucket, Key=root + "ckpt/big.bin")  # type: ignore[attr-defined]
        assert head["ContentLength"] == len(data)
        # A multipart ETag is "<md5 of the part md5s>-<number of parts>": 5 MiB parts here.
        assert head["ETag"].strip('"').endswith("-3")
    back = tmp_path / "back.bin"
    store.download_file("ckpt/big.bin", back)
    assert back.read_bytes() == data
    commit(store, "ckpt/")
    assert require_committed(store, "ckpt/", verify=True)["files"]["big.bin"]["size"] == len(data)


def test_commit_and_require(store: ArtifactStore) -> None:
    prefix = phase_prefix("ns", "game", 3, "sample")
    assert prefix == "ns/game/round-0003/sample/"
    store.put_bytes(prefix + "samples.jsonl", b'{"a": 1}\n')
    store.put_bytes(prefix + "metrics.json", b"{}")

    assert not is_committed(store, prefix)
    with pytest.raises(UncommittedError, match=r"round-0003/sample/.*_SUCCESS is missing") as err:
        require_committed(store, prefix)
    assert store.uri_for(prefix) in str(err.value)

    commit(store, prefix)
    assert is_committed(store, prefix)
    manifest = require_committed(store, prefix, verify=True)
    assert set(manifest["files"]) == {"samples.jsonl", "metrics.json"}
    assert manifest["files"]["metrics.json"] == {
        "size": 2,
        "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    }
    assert "committed_at" in manifest
    assert json.loads(store.get_bytes(prefix + SUCCESS)) == manifest


def test_commit_writes_only_the_marker_last(store: ArtifactStore) -> None:
    """commit reads (hashes) the outputs first and its one and only write is _SUCCESS."""
    writes: list[str] = []

    class Recording(type(store)):  # type: ignore[misc]
        def put_bytes(self, key: str, data: bytes) -> None:
            writes.append(key)
            super().put_bytes(key, data)

    recording = object.__new__(Recording)
    recording.__dict__.update(store.__dict__)
    prefix = phase_prefix("ns", "game", 2, "score")
    recording.put_bytes(prefix + "scores.jsonl", b"1\n")
    recording.put_bytes(prefix + "sub/metrics.json", b"{}")
    commit(recording, prefix)
    assert writes == [prefix + "scores.jsonl", prefix + "sub/metrics.json", prefix + SUCCESS]
    # Re-committing covers the same objects, never the marker itself.
    commit(recording, prefix)
    assert set(require_committed(store, prefix)["files"]) == {"scores.jsonl", "sub/metrics.json"}


def test_commit_given_files(store: ArtifactStore, tmp_path: Path) -> None:
    prefix = phase_prefix("ns", "game", 0, "prepare")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"w" * 100)
    keys = store.upload_tree(tmp_path / "m", prefix + "policy")
    store.put_bytes(prefix + "scratch.tmp", b"not part of the output")
    commit(store, prefix, keys)
    assert set(require_committed(store, prefix)["files"]) == {"policy/w.bin"}
    with pytest.raises(ArtifactNotFound, match=r"absent\.bin"):
        commit(store, prefix, ["absent.bin"])
    with pytest.raises(StoreError, match="nothing to commit"):
        commit(store, game_prefix("ns", "empty"))


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete"])
def test_verify_detects_damage(store: ArtifactStore, damage: str) -> None:
    prefix = phase_prefix("ns", "game", 1, "update-policy")
    payload = os.urandom(4096)
    store.put_bytes(prefix + "model.safetensors", payload)
    store.put_bytes(prefix + "metrics.json", b"{}")
    commit(store, prefix)
    require_committed(store, prefix, verify=True)

    if damage == "truncate":
        store.put_bytes(prefix + "model.safetensors", payload[:1000])
    elif damage == "corrupt":
        store.put_bytes(prefix + "model.safetensors", bytes([payload[0] ^ 1]) + payload[1:])
    else:
        store.delete_prefix(prefix + "model")
    require_committed(store, prefix)  # without verify only the marker is checked
    with pytest.raises(UncommittedError, match=r"update-policy/model\.safetensors"):
        require_committed(store, prefix, verify=True)


def test_corrupt_manifest(store: ArtifactStore) -> None:
    store.put_bytes("p/x", b"x")
    store.put_bytes("p/_SUCCESS", b"not json")
    with pytest.raises(UncommittedError, match="not a valid manifest"):
        require_committed(store, "p/")
    tampered = {"files": {"../q/x": {"size": 1, "sha256": "0" * 64}}, "committed_at": "now"}
    store.put_bytes("p/_SUCCESS", json.dumps(tampered).encode())
    with pytest.raises(UncommittedError, match="not a valid manifest"):
        require_committed(store, "p/", verify=True)


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/abs", "a\\b", "", "a//b", "./a", "a/\x00b", "a/b\n", "a/"]
)
def test_key_validation(store: ArtifactStore, key: str) -> None:
    with pytest.raises(StoreError, match="invalid key"):
        store.put_bytes(key, b"x")
    with pytest.raises(StoreError, match="invalid key"):
        store.get_bytes(key)
    if key not in ("", "a/"):  # valid prefixes
        with pytest.raises(StoreError, match="invalid key"):
            store.list(key)


def test_prefix_helpers_validate() -> None:
    assert game_prefix("default", "my-game") == "default/my-game/"
    for bad in ("..", "a/b", "", "x\\y"):
        with pytest.raises(StoreError):
            game_prefix("ns", bad)
    with pytest.raises(StoreError):
        phase_prefix("ns", "g", -1, "sample")


def test_file_uri_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for uri, expected in [
        ("file://./rel", tmp_path / "rel"),
        ("file://bare", tmp_path / "bare"),
        (f"file://{tmp_path}/abs", tmp_path / "abs"),
    ]:
        store = open_store(StorageSpec(uri=uri))
        assert store.uri == f"file://{expected.resolve()}"
        store.put_bytes("k", b"v")
        assert (expected / "k").read_bytes() == b"v"


def test_file_atomic_writes_leave_no_temp_files(file_storage: StorageSpec, tmp_path: Path) -> None:
    store = open_store(file_storage)
    src = tmp_path / "src.bin"
    src.write_bytes(b"s" * 1000)
    store.put_bytes("d/a", b"1")
    store.put_bytes("d/a", b"2")
    store.upload_file(src, "d/b")
    store.download_file("d/b", tmp_path / "out" / "b")
    root = store.local_dir("")
    assert root is not None
    assert sorted(p.name for p in (root / "d").iterdir()) == ["a", "b"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]
    assert oct((root / "d" / "a").stat().st_mode & 0o777) == oct(0o644)

    # A writer that fails mid-write: the old content stays and its temp file is removed.
    with pytest.raises(TypeError):
        store.put_bytes("d/a", ["not", "bytes"])  # type: ignore[arg-type]
    assert store.get_bytes("d/a") == b"2"
    assert sorted(p.name for p in (root / "d").iterdir()) == ["a", "b"]
    # A writer killed by SIGKILL can leave its temp file; readers never see it.
    (root / "d" / ".sparring-tmp-c.x1y2").write_bytes(b"half")
    assert store.list("d/") == ["d/a", "d/b"]
    assert not store.exists("d/c")


def test_missing_bucket(s3_server: str, aws_credentials: None) -> None:
    spec = StorageSpec(uri="s3://no-such-bucket-x1/p", endpoint=s3_server, path_style=True)
    with pytest.raises(StoreError, match=r"'no-such-bucket-x1'.*does not exist"):
        open_store(spec)


def test_s3_errors_are_translated(s3_storage: StorageSpec) -> None:
    store = open_store(s3_storage)
    client, bucket, _ = _raw_s3(s3_storage)
    client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match=f"S3 bucket '{bucket}' .*does not exist") as err:
        store.put_bytes("x", b"1")
    assert "botocore" not in type(err.value).__module__
    assert err.value.__cause__ is None


def test_s3_prefix_roots_keys(s3_storage: StorageSpec) -> None:
    store = open_store(s3_storage)
    store.put_bytes("ns/g/k", b"v")
    client, bucket, root = _raw_s3(s3_storage)
    listed = client.list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    assert [o["Key"] for o in listed["Contents"]] == [root + "ns/g/k"]
    assert store.uri_for("ns/g/k") == f"s3://{bucket}/{root}ns/g/k"
