"""`sparring report` (issue "Bring your own data, watch the curves, see the results", item 3):
the reliability diagram's bins, the examples it picks, and the page as Chromium renders it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from harness.browser import CHROMIUM, render
from sparring_operator.report import (
    FAMILIES,
    GameRecord,
    apl_examples,
    apo_examples,
    reliability,
    render_html,
)
from sparring_trainer.losses import expected_calibration_error


def test_reliability_bins_as_the_ece_does() -> None:
    # p = 0.95 (right, confidence .95, bin 9); p = 0.75 (right) and 0.25 (wrong): both
    # confidence .75, bin 7; p = 0.55 (right, bin 5).
    margins = [math.log(19), math.log(3), -math.log(3), math.log(0.55 / 0.45)]
    points = reliability(margins, 10)
    assert [(round(c, 6), a, n) for c, a, n in points] == [
        (0.55, 1.0, 1),
        (0.75, 0.5, 2),
        (0.95, 1.0, 1),
    ]
    # The diagram is the ECE's own picture: its weighted gaps add up to the reported ECE.
    gaps = sum(n / len(margins) * abs(a - c) for c, a, n in points)
    ece = expected_calibration_error(torch.tensor(margins), torch.zeros(len(margins)), 10)
    assert gaps == pytest.approx(ece)


def test_apo_examples_show_the_most_told_apart_prompts_best_first() -> None:
    scored = [
        {"id": "a", "prompt": [{"role": "user", "content": "close call"}],
         "responses": ["x", "y"], "rewards": [0.1, 0.2]},
        {"id": "b", "prompt": [{"role": "user", "content": "clear call"}],
         "responses": ["bad", "good", "fine"], "rewards": [-2.0, 3.0, 1.0]},
    ]  # fmt: skip
    (example,) = apo_examples(scored, 1)
    assert example.title == "user: clear call"
    best, worst = example.texts
    assert (best.label, best.text, best.score) == ("best sample", "good", 3.0)
    assert (worst.label, worst.text, worst.score) == ("worst sample", "bad", -2.0)


def test_apl_examples_are_the_most_harmful_attacks_with_the_defenders_answers() -> None:
    answers = [
        {"kind": "direct", "id": "s1", "request": "r", "answer": "no", "success": 0.0},
        {"kind": "attack", "id": "s1", "seed": "seed one", "request": "mild", "answer": "no",
         "success": 0.0, "harm": 0.2},
        {"kind": "attack", "id": "s2", "seed": "seed two", "request": "sly", "answer": "sure",
         "success": 1.0, "harm": 1.5},
    ]  # fmt: skip
    (top,) = apl_examples(answers, 1)
    assert top.title == "seed two"
    assert [(s.label, s.text, s.score) for s in top.texts] == [
        ("attacker's rewrite", "sly", 1.5),
        ("defender's answer (complied)", "sure", None),
    ]


def _game(name: str, shift: float) -> GameRecord:
    rounds = {}
    for r in (0, 1, 2):
        metrics = {}
        for family in FAMILIES.values():
            for metric in family:
                metrics[metric] = 0.5 + shift + 0.1 * r
                metrics[f"{metric}_lo"], metrics[f"{metric}_hi"] = 0.4 + shift, 0.8 + shift
        rounds[r] = metrics
    margins = {0: [0.5, -0.2, 1.5, 2.0], 2: [1.0, 0.3, -0.1, 2.5]}
    scored = [{"id": "q", "prompt": [{"role": "user", "content": f"prompt of {name}"}],
               "responses": [f"{name} best answer", f"{name} worst answer"],
               "rewards": [1.0, -1.0]}]  # fmt: skip
    return GameRecord(name, "apo", rounds, margins, {1: apo_examples(scored, 3)})


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_page_renders_a_plot_per_family_the_reliability_and_the_samples(
    tmp_path: Path,
) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html([_game("apo", 0.0), _game("baseline", 0.05)]), encoding="utf-8")
    shown = render(page, tmp_path)
    assert [alt for alt, _ in shown.images] == [*FAMILIES, "reliability"]
    assert all(width > 100 for _, width in shown.images), shown.images  # decoded, drawn
    for text in ("prompt of apo", "apo best answer", "baseline worst answer", "(score -1.000)"):
        assert text in shown.text
    assert "rm_ece\nRM calibration error on held-out pairs (lower is better)" in shown.text


def test_a_family_no_game_reported_has_no_figure() -> None:
    apl_only = GameRecord("apl", "apl", {1: {"asr_attack": 0.5}})
    page = render_html([apl_only])
    assert page.count("<img ") == 1 and 'alt="Attack success (APL)"' in page


def test_an_interval_that_misses_its_estimate_and_a_huge_margin_still_draw() -> None:
    # A percentile bootstrap of ECE can put the whole interval above the estimate.
    game = GameRecord("apo", "apo", {1: {"rm_ece": 0.05, "rm_ece_lo": 0.052, "rm_ece_hi": 0.2}},
                      {1: [-1000.0, 1000.0, 0.3]})  # fmt: skip
    page = render_html([game])
    assert 'alt="Reward model (held-out pairs)"' in page and 'alt="reliability"' in page
    assert reliability([-1000.0, 1000.0], 10) == [(1.0, 0.5, 2)]  # one wrong, one right
