"""Reads what a W&B run wrote offline (`WANDB_MODE=offline`): its `.wandb` transaction log,
LevelDB's log format (32 KiB blocks of CRC-framed chunks, after W&B's 7-byte header), each
record one of W&B's own protobuf `Record`s, decoded with the wandb package's classes."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    group: str = ""
    job_type: str = ""
    name: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


def _chunks(data: bytes) -> list[bytes]:
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's trailer: too short for a header
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            records.append(pending + chunk)
    return records


def read_run(path: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    run = OfflineRun()
    for chunk in _chunks(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.job_type = record.run.run_group, record.run.job_type
            run.name = record.run.display_name
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in record.history.item}  # fmt: skip
            run.history.append({k: v for k, v in row.items() if not k.startswith("_")})
    return run


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every run under `wandb_dir` (WANDB_DIR), in the order they were started."""
    return [read_run(p) for p in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))]
