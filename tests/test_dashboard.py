"""The chart's Grafana dashboard (charts/sparring/files/dashboard.json) and the metric names of
its queries and of the Prometheus rules (charts/sparring/files/prometheus-rules.yaml).

Every query is parsed with promql_parser after the dashboard variables are substituted; the
metric names found by walking the AST must be ones the operator exports
(`sparring_operator.metrics.METRIC_NAMES`, plus the `_bucket`/`_sum`/`_count` series of its
histograms and `_created` of its counters) or Prometheus' own `up`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

promql_parser = pytest.importorskip("promql_parser")
pytest.importorskip("prometheus_client")

from sparring_operator import metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "charts" / "sparring" / "files" / "dashboard.json"
RULES = ROOT / "charts" / "sparring" / "files" / "prometheus-rules.yaml"

# Plausible values for the variables: what Grafana sends for a multi-value selection.
NAMESPACE_VALUE = "team-a|team-b"
GAME_VALUE = "apo-demo|apl-demo"
VALUES = {
    "namespace": NAMESPACE_VALUE,
    "game": GAME_VALUE,
    "datasource": "prometheus",
    # Grafana's built-ins.
    "__rate_interval": "2m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
}
VARIABLE_REF = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")

# Series that Prometheus makes itself, not the operator.
PROMETHEUS_SERIES = {"up"}
# The operator's metrics that carry the game's labels: these must follow $namespace / $game.
NAMESPACED = {"sparring_games", "sparring_rounds_completed_total"}
PER_GAME = {n for n in metrics.METRIC_NAMES if n.startswith("sparring_game_")}


def exported_names() -> set[str]:
    """Every series name the operator's registry can expose."""
    names = set(metrics.METRIC_NAMES)
    for family in metrics.REGISTRY.collect():
        if family.type == "histogram":
            # A histogram's own name is no series: only its _bucket/_sum/_count are.
            names.discard(family.name)
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        elif family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        else:
            names.add(family.name)
    return names


EXPORTED = exported_names()


def base_name(series: str) -> str:
    """The METRIC_NAMES entry a series belongs to (histogram suffixes stripped)."""
    if series in metrics.METRIC_NAMES:
        return series
    for suffix in ("_bucket", "_sum", "_count", "_created"):
        stem = series.removesuffix(suffix)
        if stem in metrics.METRIC_NAMES:
            return stem
        if stem + "_total" in metrics.METRIC_NAMES:
            return stem + "_total"
    return series


def substitute(expr: str, values: dict[str, str] = VALUES) -> str:
    def repl(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise AssertionError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return VARIABLE_REF.sub(repl, expr)


def variables_in(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE_REF.finditer(text)}


def selectors(expr: str) -> list[Any]:
    """The vector selectors of a PromQL expression (after substitution), from the AST."""
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return found


def selector_name(sel: Any) -> str | None:
    if sel.name:
        return sel.name
    for m in sel.matchers.matchers:
        if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal:
            return m.value
    return None


def unknown_metrics(expr: str, also: frozenset[str] = frozenset()) -> list[str]:
    bad = []
    for sel in selectors(expr):
        name = selector_name(sel)
        if name is None or not (name in EXPORTED or name in PROMETHEUS_SERIES or name in also):
            bad.append(str(name))
    return bad


def missing_filters(expr: str) -> list[str]:
    """Per-game selectors that do not follow the $namespace / $game variables."""
    problems = []
    for sel in selectors(expr):
        name = base_name(selector_name(sel) or "")
        regex = {m.name: m.value for m in sel.matchers.matchers if m.op == promql_parser.MatchOp.Re}
        if (name in PER_GAME or name in NAMESPACED) and regex.get("namespace") != NAMESPACE_VALUE:
            problems.append(f"{name} without namespace=~$namespace")
        if name in PER_GAME and regex.get("name") != GAME_VALUE:
            problems.append(f"{name} without name=~$game")
    return problems


# ------------------------------------------------------------------------------------------
# the dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows hold their panels


def targets(dash: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.get('title')!r}/{t.get('refId')}", t)
        for p in all_panels(dash["panels"])
        for t in p.get("targets", [])
    ]


def variable_query(var: dict[str, Any]) -> str:
    query = var.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else str(query)


def label_values_selector(query: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query)
    assert match, f"not label_values(selector, label): {query!r}"
    return match.group(1), match.group(2)


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "sparring-games"
    assert dashboard["title"] == "Sparring — adversarial games"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "sparring" in dashboard["tags"]
    assert dashboard.get("id") is None  # provisioned dashboards carry no database id


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "game"]
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("namespace", "game"):
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"], name
        assert var["datasource"]["uid"] == "${datasource}", name
    assert variable_query(variables["namespace"]) == "label_values(sparring_game_status, namespace)"
    assert (
        variable_query(variables["game"])
        == 'label_values(sparring_game_status{namespace=~"$namespace"}, name)'
    )
    for var in variables.values():
        if var["type"] != "query":
            continue
        selector, _label = label_values_selector(variable_query(var))
        assert not unknown_metrics(substitute(selector)), var["name"]


def test_every_variable_is_used(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for _where, target in targets(dashboard):
        used |= variables_in(target.get("expr", ""))
        used |= variables_in(json.dumps(target.get("datasource", {})))
    for panel in all_panels(dashboard["panels"]):
        used |= variables_in(json.dumps(panel.get("datasource", {})))
    variables = dashboard["templating"]["list"]
    for var in variables:
        others = variables_in(variable_query(var)) | variables_in(json.dumps(var.get("datasource")))
        used |= others - {var["name"]}
    defined = {v["name"] for v in variables}
    assert defined <= used, f"unused variables: {defined - used}"


def test_panel_ids_unique_and_layout(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_panels_query_prometheus_through_the_variable(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]
            assert t["expr"].strip(), panel["title"]


def test_queries_parse(dashboard: dict[str, Any]) -> None:
    found = targets(dashboard)
    assert len(found) >= 20
    for where, target in found:
        try:
            promql_parser.parse(substitute(target["expr"]))
        except Exception as exc:  # the parser raises ValueError / its own error types
            pytest.fail(f"{where}: {target['expr']!r} does not parse: {exc}")


def test_queries_use_exported_metrics(dashboard: dict[str, Any]) -> None:
    for where, target in targets(dashboard):
        assert not unknown_metrics(substitute(target["expr"])), (where, target["expr"])


def test_every_exported_metric_is_shown(dashboard: dict[str, Any]) -> None:
    shown = {
        base_name(selector_name(s) or "")
        for _where, t in targets(dashboard)
        for s in selectors(substitute(t["expr"]))
    }
    assert shown >= metrics.METRIC_NAMES, metrics.METRIC_NAMES - shown
    assert "up" in shown


def test_game_queries_follow_namespace_and_game(dashboard: dict[str, Any]) -> None:
    for where, target in targets(dashboard):
        assert not missing_filters(substitute(target["expr"])), (where, target["expr"])


def test_game_metric_panels(dashboard: dict[str, Any]) -> None:
    """Each of the round metrics the games report is drawn by some panel."""
    wanted = {
        "rm_accuracy", "rm_ece", "reward_mean", "win_rate", "eval_rm_accuracy",
        "rm_accuracy_vs_base", "rm_gold_over_policy", "reward_vs_base", "answer_distinct_2",
        "answer_repeated_trigram_rate",
        "asr_direct", "asr_attack", "over_refusal", "harm_score_mean", "attacker_diversity",
        "rewrite_keeps_request",
    }  # fmt: skip
    drawn: set[str] = set()
    for _where, target in targets(dashboard):
        for sel in selectors(substitute(target["expr"])):
            if sel.name == "sparring_game_metric":
                for m in sel.matchers.matchers:
                    if m.name == "metric":
                        drawn |= set(m.value.split("|"))
    assert wanted <= drawn, wanted - drawn


# The checkers themselves must be able to fail.


@pytest.mark.parametrize(
    "expr",
    [
        'sparring_game_rounds{namespace=~"$namespace", name=~"$game"}',
        "rate(sparring_reconcile_errors[5m])",  # the counter without _total
        "histogram_quantile(0.9, rate(sparring_phase_retries_total_bucket[5m]))",
        "rate(sparring_phase_duration_seconds[5m])",  # a histogram's bare name
        '{__name__="sparring_nope"}',
    ],
)
def test_unknown_metric_is_caught(expr: str) -> None:
    assert unknown_metrics(substitute(expr))


@pytest.mark.parametrize(
    "expr",
    [
        "sparring_game_current_round",
        'sparring_game_status{namespace=~"$namespace"}',
        'sum(sparring_games{namespace="default"})',
    ],
)
def test_missing_filter_is_caught(expr: str) -> None:
    assert missing_filters(substitute(expr))


def test_bad_query_and_unknown_variable_are_caught() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse(substitute("sum by (phase (sparring_games)"))
    with pytest.raises(AssertionError):
        substitute("rate(sparring_reconcile_errors_total[$interval])")


# ------------------------------------------------------------------------------------------
# the Prometheus rules


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_rule_expressions_use_exported_metrics() -> None:
    recorded = frozenset(r["record"] for r in rules() if "record" in r)
    assert all(name.startswith("sparring:") for name in recorded)
    for rule in rules():
        expr = rule["expr"]
        assert not variables_in(expr), f"Grafana variable in a rule: {expr!r}"
        promql_parser.parse(expr)
        name = rule.get("alert", rule.get("record"))
        assert not unknown_metrics(expr, also=recorded), (name, expr)
