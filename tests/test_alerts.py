"""The chart's Prometheus rules (charts/sparring/files/prometheus-rules.yaml).

`promtool check rules` validates the file; `promtool test rules` runs tests/alerts/rules_test.yaml,
which feeds synthetic series and asserts which alerts fire, with their exact labels and
annotations. Mutation tests break the rules on purpose and check that the unit tests notice.
The metric names of the rules' expressions are checked in tests/test_dashboard.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "charts" / "sparring" / "files" / "prometheus-rules.yaml"
UNIT_TESTS = ROOT / "tests" / "alerts" / "rules_test.yaml"

# The alerts the operator ships: name -> (severity, `for`).
EXPECTED_ALERTS = {
    "SparringGameFailed": ("warning", "1m"),
    "SparringPhaseStalled": ("warning", "5m"),
    "SparringRetriesClimbing": ("warning", "5m"),
    "SparringReconcileErrors": ("warning", "15m"),
    "SparringOperatorDown": ("critical", "5m"),
}


def _install_promtool() -> str | None:
    """apt-get install prometheus (it brings promtool), where we are root on Debian/Ubuntu."""
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(
            [apt, "install", "-y", "--no-install-recommends", "prometheus"],
            env=env,
            capture_output=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("promtool")


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from $PROMTOOL, PATH or /usr/bin; installed with apt-get if missing."""
    for candidate in (os.environ.get("PROMTOOL"), shutil.which("promtool"), "/usr/bin/promtool"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    installed = _install_promtool()
    if installed is None:
        pytest.skip(
            "promtool not found (set $PROMTOOL or put it on PATH) and it could not be installed "
            "(`apt-get install prometheus` needs root on Debian/Ubuntu and a package mirror)"
        )
    return installed


def _run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def _alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in _rules()["groups"] for r in g["rules"] if "alert" in r}


def test_check_rules(promtool: str, tmp_path: Path) -> None:
    copy = tmp_path / "prometheus-rules.yaml"
    copy.write_text(RULES.read_text())
    result = _run(promtool, "check", "rules", copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_unit_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def _mutated_run(promtool: str, tmp_path: Path, old: str, new: str):
    """Runs the unit tests against a copy of the rules with `old` replaced by `new` (once)."""
    text = RULES.read_text()
    assert text.count(old) == 1, f"mutation target {old!r} must occur exactly once"
    rules = tmp_path / "prometheus-rules.yaml"
    rules.write_text(text.replace(old, new))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(rules)]
    unit = tmp_path / "rules_test.yaml"
    unit.write_text(yaml.safe_dump(tests, sort_keys=False))
    return _run(promtool, "test", "rules", unit)


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        # The brief's example: the Failed alert never matches.
        (
            "SparringGameFailed",
            'sparring_game_status{phase="Failed"} == 1',
            'sparring_game_status{phase="Failed"} == 2',
        ),
        # A stall threshold of 60 instead of 30 minutes: the stuck game no longer alerts.
        ("SparringPhaseStalled", "> 30 * 60", "> 60 * 60"),
        # `up == 0` instead of absent(...): silent once the operator's target is gone.
        (
            "SparringOperatorDown",
            'expr: absent(up{job="sparring-operator"} == 1)',
            'expr: up{job="sparring-operator"} == 0',
        ),
        ("SparringRetriesClimbing", "[1h]) > 3", "[1h]) > 30"),
        ("SparringReconcileErrors", "for: 15m", "for: 30m"),
        # An annotation that differs from the expected text.
        ("SparringGameFailed", '{{ $labels.name }} failed"', '{{ $labels.name }} has failed"'),
    ],
)
def test_unit_tests_catch_a_broken_rule(
    promtool: str, tmp_path: Path, alert: str, old: str, new: str
) -> None:
    result = _mutated_run(promtool, tmp_path, old, new)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the unit tests missed a broken {alert}:\n{output}"
    assert "FAILED" in output
    assert alert in output


def test_mutated_rules_still_load(promtool: str, tmp_path: Path) -> None:
    """The failures above come from the assertions, not from a rules file promtool rejects."""
    rules = tmp_path / "prometheus-rules.yaml"
    rules.write_text(RULES.read_text().replace('{phase="Failed"} == 1', '{phase="Failed"} == 2'))
    result = _run(promtool, "check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_file_is_a_prometheusrule_spec() -> None:
    doc = _rules()
    assert set(doc) == {"groups"}, "the file is included verbatim as a PrometheusRule spec"
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    for group in doc["groups"]:
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            if "record" in rule:
                # level:metric:operations, in the sparring: namespace.
                assert re.fullmatch(r"sparring:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule


def test_alerts_have_severity_for_and_annotations() -> None:
    alerts = _alerts()
    assert set(alerts) == set(EXPECTED_ALERTS)
    for name, rule in alerts.items():
        severity, hold = EXPECTED_ALERTS[name]
        assert rule["labels"]["severity"] == severity, name
        assert rule["for"] == hold, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # Templates use $labels.x (Prometheus) and never Helm's {{ .Values }}: the file is
        # included verbatim, without tpl.
        for text in annotations.values():
            assert ".Values" not in text and ".Release" not in text, name
            for ref in re.findall(r"\$labels\.(\w+)", text):
                assert ref in {"name", "namespace", "phase", "reason", "instance", "job"}, ref


def test_game_alerts_name_the_game() -> None:
    alerts = _alerts()
    for name in ("SparringGameFailed", "SparringPhaseStalled"):
        for key in ("summary", "description"):
            text = alerts[name]["annotations"][key]
            assert "{{ $labels.name }}" in text and "{{ $labels.namespace }}" in text, name


def test_expressions() -> None:
    exprs = {name: rule["expr"].strip() for name, rule in _alerts().items()}
    assert exprs["SparringGameFailed"] == 'sparring_game_status{phase="Failed"} == 1'
    stalled = exprs["SparringPhaseStalled"]
    assert "time() - sparring_game_last_progress_timestamp_seconds" in stalled
    assert "30 * 60" in stalled  # N = 30 minutes
    assert exprs["SparringRetriesClimbing"] == "increase(sparring_phase_retries_total[1h]) > 3"
    assert exprs["SparringReconcileErrors"] == "rate(sparring_reconcile_errors_total[10m]) > 0"
    assert exprs["SparringOperatorDown"] == 'absent(up{job="sparring-operator"} == 1)'


def test_every_alert_has_unit_tests() -> None:
    """Each alert is asserted both firing and silent somewhere in tests/alerts/rules_test.yaml."""
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    assert tests["rule_files"] == ["../../charts/sparring/files/prometheus-rules.yaml"]
    assert (UNIT_TESTS.parent / tests["rule_files"][0]).resolve() == RULES.resolve()
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                assert set(alert["exp_annotations"]) >= {"summary", "description"}
                assert alert["exp_labels"]["severity"] == EXPECTED_ALERTS[check["alertname"]][0]
    assert firing == set(EXPECTED_ALERTS), set(EXPECTED_ALERTS) - firing
    assert silent == set(EXPECTED_ALERTS), set(EXPECTED_ALERTS) - silent
