"""Live progress: a phase reports step/total to the store; the operator shows it in
`.status.activeJob.progress` (percent, ETA) and as a gauge."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from sparring_operator import metrics
from sparring_operator.api import ActiveJob, AdversarialGameStatus
from sparring_operator.reconcile import Reconciler, _progress_report
from sparring_operator.status import with_progress
from sparring_trainer.contract import make_context
from sparring_trainer.document import GameDocument, StorageSpec
from sparring_trainer.store import open_store, phase_prefix

T = 1_800_000_000.0


def game_doc(store: Path) -> GameDocument:
    return GameDocument.model_validate(
        {
            "metadata": {"name": "g", "namespace": "ns"},
            "spec": {
                "storage": {"uri": f"file://{store}"},
                "game": {"policy": {"model": "tiny-random"}, "adversary": {"model": "tiny-random"}},
            },
        }
    )


def test_phase_reports_progress_to_the_store_throttled_but_always_the_last_step(
    tmp_path: Path,
) -> None:
    ctx = make_context(game_doc(tmp_path / "store"), 1, "sample", tmp_path / "scratch")
    key = ctx.out + "_progress.json"
    ctx.progress(1, 10, "prompts")
    assert json.loads(ctx.store.get_bytes(key))["step"] == 1
    ctx.progress(2, 10, "prompts")  # within the reporting interval: not written
    assert json.loads(ctx.store.get_bytes(key))["step"] == 1
    ctx.progress(10, 10, "prompts")  # the last step always is
    report = json.loads(ctx.store.get_bytes(key))
    assert (report["step"], report["total"], report["unit"]) == (10, 10, "prompts")


def test_operator_shows_progress_with_eta_in_status_and_as_gauges(tmp_path: Path) -> None:
    store = open_store(StorageSpec(uri=f"file://{tmp_path}"))
    prefix = phase_prefix("ns", "g", 1, "update-policy")
    store.put_bytes(
        prefix + "_progress.json",
        json.dumps({"step": 3, "total": 12, "unit": "policy steps", "time": T}).encode(),
    )
    started = datetime.fromtimestamp(T - 30, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = AdversarialGameStatus(
        phase="Running",
        current_round=1,
        current_phase="update-policy",
        active_job=ActiveJob(
            name="g-r0001-update-policy-a1",
            round=1,
            phase="update-policy",
            attempt=1,
            started_at=started,
        ),
    )
    shown = with_progress(status, _progress_report(store, prefix))
    assert shown.active_job is not None and shown.active_job.progress is not None
    progress = shown.active_job.progress
    assert (progress.step, progress.total, progress.percent) == (3, 12, 25.0)
    assert progress.eta_seconds == 90  # 30 s for 3 steps -> 9 steps left take 90 s
    assert progress.unit == "policy steps"

    Reconciler(api=None).export("ns", "g", shown)  # type: ignore[arg-type]  # no API call
    families = {f.name: f for f in metrics.GAMES.collect()}
    ratio = [
        s for s in families["sparring_game_phase_progress_ratio"].samples if s.labels["name"] == "g"
    ]
    assert [(s.labels["phase"], s.value) for s in ratio] == [("update-policy", 0.25)]
    last = [
        s
        for s in families["sparring_game_last_progress_timestamp_seconds"].samples
        if s.labels["name"] == "g"
    ]
    assert last and abs(last[0].value - T) < 1
    metrics.GAMES.forget("ns", "g")
    families = {f.name: f for f in metrics.GAMES.collect()}
    assert not [s for s in families["sparring_game_status"].samples if s.labels["name"] == "g"]


def test_no_progress_report_leaves_status_alone(tmp_path: Path) -> None:
    store = open_store(StorageSpec(uri=f"file://{tmp_path}"))
    status = AdversarialGameStatus(
        phase="Running",
        active_job=ActiveJob(name="g-r0001-sample-a1", round=1, phase="sample", attempt=1),
    )
    report = _progress_report(store, phase_prefix("ns", "g", 1, "sample"))
    assert report is None and with_progress(status, report) == status
