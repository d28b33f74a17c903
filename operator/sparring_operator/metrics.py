"""Prometheus metrics of the operator (prefix `sparring_`).

Process-wide series (reconcile timing, phase durations, retries) are ordinary prometheus-client
metrics. Per-game series come from `GameCollector` at scrape time, from the latest snapshot each
reconcile leaves behind, so a deleted game's series disappear with its snapshot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

GAME_PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")
REGISTRY = CollectorRegistry()

RECONCILE_DURATION = Histogram(
    "sparring_reconcile_duration_seconds", "Time of one reconcile pass of one game.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)  # fmt: skip
RECONCILE_ERRORS = Counter(
    "sparring_reconcile_errors_total", "Reconcile passes that raised.", registry=REGISTRY
)
PHASE_DURATION = Histogram(
    "sparring_phase_duration_seconds", "Wall time of phase Jobs, by phase and outcome.",
    ["phase", "outcome"], buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
    registry=REGISTRY,
)  # fmt: skip
PHASE_RETRIES = Counter(
    "sparring_phase_retries_total", "Phase Jobs started again after a failure, by reason.",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
ROUNDS_COMPLETED = Counter(
    "sparring_rounds_completed_total", "Rounds whose every phase committed, as observed.",
    ["namespace"], registry=REGISTRY,
)  # fmt: skip
BUILD_INFO = Gauge("sparring_build_info", "Operator version.", ["version"], registry=REGISTRY)
# Set to a function by the operator at startup; a deleted game's state goes with it, so on a
# quiet operator this is the number of games that exist (a growing gap is a leak).
TRACKED_GAMES = Gauge(
    "sparring_operator_tracked_games",
    "Games the operator keeps per-game state for (caches, locks, resync schedule).",
    registry=REGISTRY,
)


@dataclass
class GameSnapshot:
    """What the collector exports of one game; replaced by every reconcile pass."""

    name: str
    namespace: str
    phase: str
    current_round: int
    completed_rounds: int
    metrics: dict[str, float] = field(default_factory=dict)  # the latest round's
    progress: float | None = None  # 0..1 of the running phase
    active_phase: str | None = None
    last_progress: float | None = None  # epoch seconds of the running phase's last report


class GameCollector(Collector):
    """Per-game gauges built at scrape time from the snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._games: dict[tuple[str, str], GameSnapshot] = {}

    def update(self, snap: GameSnapshot) -> None:
        with self._lock:
            before = self._games.get((snap.namespace, snap.name))
            self._games[(snap.namespace, snap.name)] = snap
        if before is not None and snap.completed_rounds > before.completed_rounds:
            ROUNDS_COMPLETED.labels(snap.namespace).inc(
                snap.completed_rounds - before.completed_rounds
            )

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._games.pop((namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            games = list(self._games.values())
        counts = GaugeMetricFamily(
            "sparring_games", "Games by status phase.", labels=["namespace", "phase"]
        )
        by_ns: dict[tuple[str, str], int] = {}
        for g in games:
            by_ns[(g.namespace, g.phase)] = by_ns.get((g.namespace, g.phase), 0) + 1
        for ns in sorted({g.namespace for g in games}):
            for phase in GAME_PHASES:
                counts.add_metric([ns, phase], by_ns.get((ns, phase), 0))
        yield counts
        status = GaugeMetricFamily("sparring_game_status", "1 for the game's current status phase.",
                                   labels=["name", "namespace", "phase"])  # fmt: skip
        current = GaugeMetricFamily("sparring_game_current_round", "Round being played.",
                                    labels=["name", "namespace"])  # fmt: skip
        completed = GaugeMetricFamily("sparring_game_completed_rounds", "Rounds completed.",
                                      labels=["name", "namespace"])  # fmt: skip
        metric = GaugeMetricFamily("sparring_game_metric", "The latest round's game metrics.",
                                   labels=["name", "namespace", "metric"])  # fmt: skip
        progress = GaugeMetricFamily("sparring_game_phase_progress_ratio",
                                     "Progress of the running phase (0..1).",
                                     labels=["name", "namespace", "phase"])  # fmt: skip
        last = GaugeMetricFamily("sparring_game_last_progress_timestamp_seconds",
                                 "When the running phase last reported progress.",
                                 labels=["name", "namespace", "phase"])  # fmt: skip
        for g in games:
            for phase in GAME_PHASES:
                status.add_metric([g.name, g.namespace, phase], 1.0 if g.phase == phase else 0.0)
            current.add_metric([g.name, g.namespace], g.current_round)
            completed.add_metric([g.name, g.namespace], g.completed_rounds)
            for key, value in sorted(g.metrics.items()):
                metric.add_metric([g.name, g.namespace, key], value)
            if g.active_phase is not None and g.progress is not None:
                progress.add_metric([g.name, g.namespace, g.active_phase], g.progress)
            if g.active_phase is not None and g.last_progress is not None:
                last.add_metric([g.name, g.namespace, g.active_phase], g.last_progress)
        yield from (status, current, completed, metric, progress, last)


GAMES = GameCollector()
REGISTRY.register(GAMES)

# Every metric name the operator exports (the dashboard and alert tests check against this).
METRIC_NAMES = frozenset({
    "sparring_games", "sparring_game_status", "sparring_game_current_round",
    "sparring_game_completed_rounds", "sparring_game_metric", "sparring_game_phase_progress_ratio",
    "sparring_game_last_progress_timestamp_seconds", "sparring_reconcile_duration_seconds",
    "sparring_reconcile_errors_total", "sparring_phase_duration_seconds",
    "sparring_phase_retries_total", "sparring_rounds_completed_total", "sparring_build_info",
})  # fmt: skip


def operator_version() -> str:
    try:
        return version("sparring")
    except PackageNotFoundError:
        return "unknown"


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Starts the /metrics endpoint in a daemon thread."""
    BUILD_INFO.labels(operator_version()).set(1)
    start_http_server(port, addr=addr, registry=REGISTRY)


def now() -> float:
    return time.time()
