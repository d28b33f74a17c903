"""The phase contract: where a phase reads and writes, how it commits, and what it reports.

A phase's outputs live under ``{store}/{namespace}/{game}/round-{NNNN}/{phase}/``. It writes
``metrics.json`` and then ``_SUCCESS`` last; readers trust nothing without ``_SUCCESS``. The
same small summary goes to the termination-message file (``SPARRING_TERMINATION_LOG``; the
operator sets it to ``/dev/termination-log`` in pods) so the operator can read it from the pod.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparring_trainer.adapters import BASE_LINK, BASE_REF, is_adapter, read_base_ref
from sparring_trainer.config import PREPARE_PHASE
from sparring_trainer.distributed import Ranks, ranks
from sparring_trainer.document import GameDocument
from sparring_trainer.identity import game_record
from sparring_trainer.modelcache import cached_tree, checkpoint_cache, content_key
from sparring_trainer.stages import stage
from sparring_trainer.store import (
    SUCCESS,
    ArtifactStore,
    UncommittedError,
    _sha256_file,
    commit,
    is_committed,
    open_store,
    phase_prefix,
    require_committed,
)

TERMINATION_LOG_ENV = "SPARRING_TERMINATION_LOG"
SCRATCH_ENV = "SPARRING_SCRATCH"
CACHE_ENV = "SPARRING_CACHE"
RANK_LOGS_ENV = "SPARRING_RANK_LOGS"  # set by `distributed.launch`: a folder, one file per rank
TERMINATION_LOG_LIMIT = 4096  # bytes; Kubernetes truncates termination messages at 4 KiB
PROGRESS_INTERVAL_S = 5.0


class GameFileError(ValueError):
    """The game file cannot be read; the message names the file."""


def load_game_document(path: Path) -> GameDocument:
    """Read the mounted game.json (or a game YAML) into the trainer's view of the resource."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GameFileError(f"{path}: cannot read game file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise GameFileError(f"{path}: not valid YAML/JSON: {' '.join(str(exc).split())}") from exc
    except (ValueError, RecursionError) as exc:
        # Not UTF-8 (UnicodeDecodeError), an integer of more than 4300 digits, nesting deeper
        # than the recursion limit: bad input (exit 3) with one line, never a traceback.
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise GameFileError(f"{path}: cannot read game file: {what}") from None
    if not isinstance(raw, dict):
        raise GameFileError(f"{path}: expected an AdversarialGame mapping")
    from pydantic import ValidationError

    try:
        return GameDocument.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{path}: {'.'.join(_loc_part(p) for p in err['loc'])}: {' '.join(err['msg'].split())}"
            for err in exc.errors()
        ]
        raise GameFileError("\n".join(lines)) from exc


def _loc_part(part: object) -> str:
    """A field path segment; odd keys (empty, spaces, newlines) are quoted so the error stays
    one readable line."""
    text = str(part)
    return text if text.replace("_", "").replace("-", "").isalnum() else json.dumps(text)


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparring")


@dataclass
class PhaseContext:
    """Everything one phase run needs: the game, its round, the store and local directories."""

    doc: GameDocument
    round: int
    phase: str
    store: ArtifactStore
    scratch: Path
    cache_dir: Path
    # Under torchrun every rank reads the same inputs; only rank 0 writes and commits.
    ranks: Ranks = field(default_factory=Ranks)
    metrics: dict[str, float] = field(default_factory=dict)
    _last_progress: float = 0.0
    # Manifests of the inputs read so far (prefix -> _SUCCESS content), and the checkpoint
    # directories already checked against theirs.
    _manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    _verified: set[str] = field(default_factory=set)
    _unread: set[str] = field(default_factory=set)  # checkpoints found in the model cache
    # What this phase moved through the store (reported as store_read_bytes and
    # store_written_bytes): every input file checked against its manifest, every output.
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def game(self) -> Any:
        return self.doc.spec.game

    @property
    def seed(self) -> int:
        # Distinct, reproducible seeds per round so that rounds do not replay the same samples.
        return int(self.game.seed) * 10_000 + self.round

    def prefix(self, round: int | None = None, phase: str | None = None) -> str:
        return phase_prefix(
            self.doc.metadata.namespace,
            self.doc.metadata.name,
            self.round if round is None else round,
            phase or self.phase,
        )

    @property
    def out(self) -> str:
        return self.prefix()

    def uri(self, round: int, phase: str, name: str = "") -> str:
        return self.store.uri_for(self.prefix(round, phase) + name)

    # ---- reading committed inputs -------------------------------------------------------
    # Every input is checked against its phase's _SUCCESS manifest (size and sha256) as it is
    # read: a corrupted, truncated or swapped object is refused (UncommittedError, a StoreError,
    # so the phase exits "retryable") instead of being trained on. Only what is read is checked,
    # and only once per phase run.
    def require(self, round: int, phase: str) -> str:
        """Prefix of another phase's outputs; refuses them unless committed."""
        prefix = self.prefix(round, phase)
        if prefix not in self._manifests:
            self._manifests[prefix] = require_committed(self.store, prefix)
        return prefix

    def _check(self, prefix: str, name: str, size: int, sha256: str, counted: bool = True) -> None:
        expected = self._manifests[prefix]["files"].get(name)
        where = self.store.uri_for(prefix + name)
        if expected is None:
            raise UncommittedError(f"{where} is not listed in its phase's {SUCCESS}")
        if size != expected.get("size") or sha256 != expected.get("sha256"):
            raise UncommittedError(
                f"{where} does not match its phase's {SUCCESS} (size {size}, expected "
                f"{expected.get('size')}; sha256 {sha256[:12]}..., expected "
                f"{str(expected.get('sha256'))[:12]}...): corrupted or truncated, not used"
            )
        if counted:  # read from the store now (not a checkpoint already in the model cache)
            self.bytes_read += size

    def _read_checked(self, round: int, phase: str, name: str) -> bytes:
        prefix = self.require(round, phase)
        data = self.store.get_bytes(prefix + name)
        self._check(prefix, name, len(data), hashlib.sha256(data).hexdigest())
        return data

    def fetch_dir(self, round: int, phase: str, name: str) -> Path:
        """A committed checkpoint directory as a local path (no copy on a file:// store),
        checked file by file against the phase's manifest."""
        stage(f"fetching {name} (round {round} {phase})")
        base = self.require(round, phase)
        rel = name.rstrip("/") + "/"
        prefix = base + rel
        local = self.store.local_dir(prefix)
        cache = checkpoint_cache()
        if local is None and cache is not None and round == 0:
            # A base checkpoint, read by every later phase: kept in the game's model cache by
            # content, so only the first phase to need it reads it from the store.
            files = self._manifests[base]["files"]
            ours = {
                n[len(rel) :]: e.get("sha256", "") for n, e in files.items() if n.startswith(rel)
            }
            download = functools.partial(self.store.download_tree, prefix)
            local, fetched = cached_tree(cache, content_key(ours), download)
            if not fetched:
                self._unread.add(prefix)
        if local is None:
            local = self.scratch / "inputs" / f"round-{round:04d}" / phase / name
            if not local.exists():
                # Download beside it and rename: a pod killed mid-download must not leave
                # a half directory that the next attempt takes for a finished copy.
                partial = local.with_name(local.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                self.store.download_tree(prefix, partial)
                partial.rename(local)
        if prefix not in self._verified:
            files = [n for n in self._manifests[base]["files"] if n.startswith(rel)]
            if not files:
                raise UncommittedError(f"{self.store.uri_for(prefix)}: no files in {SUCCESS}")
            for file in files:
                path = local / file[len(rel) :]
                if not path.is_file():
                    raise UncommittedError(f"{self.store.uri_for(base + file)} is missing")
                counted = prefix not in self._unread
                self._check(base, file, path.stat().st_size, _sha256_file(path), counted)
            self._verified.add(prefix)
        if (local / BASE_REF).is_file():
            return self._adapter_view(local, round, phase, name)
        return local

    def _adapter_view(self, adapter: Path, round: int, phase: str, name: str) -> Path:
        """An adapter checkpoint as `load_checkpoint` reads it: links to its files beside
        `base/`, the full checkpoint its reference names, fetched (and checked) the same way.
        Built in scratch: the adapter's own folder may be the store's (file://)."""
        ref = read_base_ref(adapter)
        base = self.fetch_dir(*ref)
        if is_adapter(base):
            raise UncommittedError(
                f"{self.uri(round, phase, name)}: its base {self.uri(*ref)} is an adapter too; "
                "an adapter must name a full checkpoint"
            )
        view = self.scratch / "adapters" / f"round-{round:04d}" / phase / name
        if not view.exists():
            partial = view.with_name(view.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            for item in adapter.iterdir():
                (partial / item.name).symlink_to(item.resolve())
            (partial / BASE_LINK).symlink_to(base.resolve(), target_is_directory=True)
            partial.rename(view)
        return view

    def read_jsonl(self, round: int, phase: str, name: str) -> list[dict[str, Any]]:
        data = self._read_checked(round, phase, name)
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]

    def read_metrics(self, round: int, phase: str) -> dict[str, float]:
        return dict(json.loads(self._read_checked(round, phase, "metrics.json")))

    def policy_dir(self, round: int) -> Path:
        """The policy that plays `round`: the last round's update, or the base model."""
        if round <= 1:
            return self.fetch_dir(0, PREPARE_PHASE, "base-policy")
        return self.fetch_dir(round - 1, "update-policy", "policy")

    # ---- writing this phase's outputs --------------------------------------------------
    # Rank 0 writes; the other ranks hold the same rows (inference results are gathered on
    # every rank) and skip the write.
    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        if not self.ranks.main:
            return
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        self._put(name, body.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> None:
        if self.ranks.main:
            self._put(name, json.dumps(obj, indent=2).encode("utf-8"))

    def _put(self, name: str, data: bytes) -> None:
        self.store.put_bytes(self.out + name, data)
        self.bytes_written += len(data)

    def upload_dir(self, local: Path, name: str) -> str:
        if self.ranks.main:
            self.store.upload_tree(local, self.out + name.rstrip("/") + "/")
            self.bytes_written += sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
        return self.store.uri_for(self.out + name.rstrip("/") + "/")

    def save_model(
        self, model: Any, tokenizer: Any, name: str, base: tuple[int, str, str] | None = None
    ) -> str:
        """Saves a trained model (an adapter with a reference to `base`) and uploads it as
        `name`, from rank 0: DDP keeps every rank's copy whole and identical; an FSDP-sharded
        model is first gathered, which every rank takes part in."""
        stage(f"saving {name}")
        from sparring_trainer.distributed import full_state_dict
        from sparring_trainer.models import save_checkpoint

        state = full_state_dict(model)
        if self.ranks.main:
            out = self.new_dir(name)
            save_checkpoint(model, tokenizer, out, base=base, state_dict=state)
            self.upload_dir(out, name)
        return self.store.uri_for(self.out + name + "/")

    def new_dir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch))
        return path

    def progress(self, step: int, total: int, what: str = "steps") -> None:
        """Reports progress to stderr and to the store, at most every few seconds."""
        now = time.monotonic()
        if not self.ranks.main:
            return
        if step < total and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        record = {"step": step, "total": total, "unit": what, "time": time.time()}
        print(f"[{self.phase}] {what} {step}/{total}", file=sys.stderr, flush=True)
        try:
            self.store.put_bytes(self.out + "_progress.json", json.dumps(record).encode())
        except Exception as exc:  # progress is best-effort: a store blip must not fail training
            print(f"[{self.phase}] progress not saved: {exc}", file=sys.stderr)


def summary_for(ctx: PhaseContext, metrics: dict[str, float], noop: bool) -> str:
    """The <= 4 KiB termination message: phase identity, metrics and the output URI."""
    summary: dict[str, Any] = {
        "round": ctx.round,
        "phase": ctx.phase,
        "uri": ctx.store.uri_for(ctx.out),
        "noop": noop,
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
    }
    text = json.dumps(summary, separators=(",", ":"))
    while len(text.encode()) > TERMINATION_LOG_LIMIT and summary["metrics"]:
        summary["metrics"].popitem()  # drop metrics rather than emit invalid JSON
        summary["truncated"] = True
        text = json.dumps(summary, separators=(",", ":"))
    return text


def write_termination_log(text: str) -> None:
    rank_logs = os.environ.get(RANK_LOGS_ENV)
    if rank_logs:  # under `distributed.launch`: it passes on the right rank's message
        path: str | None = str(Path(rank_logs) / f"rank-{os.environ.get('RANK', '0')}")
    else:
        path = os.environ.get(TERMINATION_LOG_ENV)
    if path:
        Path(path).write_text(text, encoding="utf-8")


def make_context(doc: GameDocument, round: int, phase: str, scratch: Path | None) -> PhaseContext:
    store = open_store(doc.spec.storage)
    here = ranks()
    scratch_dir = scratch or Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())
    name = f"sparring-{doc.metadata.namespace}-{doc.metadata.name}-r{round:04d}-{phase}"
    if here.parallel:
        name += f"-rank{here.rank}"
    # Unique per process: two phase processes (ranks on one node, games of the same name in
    # two stores) never download into, or clean up, each other's folder.
    Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    scratch_dir = Path(tempfile.mkdtemp(prefix=name + "-", dir=scratch_dir))
    return PhaseContext(doc, round, phase, store, scratch_dir, default_cache_dir(), here)


def already_committed(ctx: PhaseContext) -> bool:
    return is_committed(ctx.store, ctx.out)


def finish(ctx: PhaseContext, metrics: dict[str, float]) -> str:
    """Writes metrics.json, then commits with _SUCCESS last, then the termination message."""
    ctx.write_json("metrics.json", metrics)
    # The spec it was played with: a changed game is compared with it before reusing this phase.
    commit(ctx.store, ctx.out, record={"game": game_record(ctx.doc.spec.game)})
    return summary_for(ctx, metrics, noop=False)
