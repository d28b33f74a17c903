"""The rows each algorithm trains on, built by pure functions (hand-built cases: who is chosen,
who is rejected, which weight)."""

from __future__ import annotations

import pytest
from sparring_trainer.apo_rows import (
    dpo_rows,
    gold_reward_pairs,
    human_reward_pairs,
    reward_pairs,
    rjs_examples,
    rrhf_groups,
)
from sparring_trainer.config import AdversaryUpdateSpec
from sparring_trainer.data import PreferencePair, Query
from sparring_trainer.losses import ScoredGroup
from sparring_trainer.models import render_conversation, tiny_tokenizer


def test_human_reward_pairs_prefer_the_chosen_reply_with_the_human_weight() -> None:
    tokenizer = tiny_tokenizer()
    prompt = ({"role": "user", "content": "How do I bake bread?"},)
    pair = PreferencePair(prompt, "Knead, rise, bake.", "No idea.", "hh.jsonl:1")
    (row,) = human_reward_pairs(tokenizer, [pair], weight=0.7)
    assert row.good == render_conversation(tokenizer, prompt, "Knead, rise, bake.")
    assert row.bad == render_conversation(tokenizer, prompt, "No idea.")
    assert (row.weight, row.source) == (0.7, "human")


# ---- APO: the reward model's rows by mode ---------------------------------------------------
PROMPT_A = ({"role": "user", "content": "Name a colour."},)
PROMPT_B = ({"role": "user", "content": "Name a fruit."},)
GOLD = [Query("qa", PROMPT_A, "Blue."), Query("qb", PROMPT_B, "A pear.")]
SAMPLES = {"qa": ["Red.", "Green.", "Grey."], "qb": ["Stone.", "Apple.", "Car."]}
HUMAN = [PreferencePair(PROMPT_A, "Blue.", "Rock.", "hh.jsonl:1")]


def _update(mode: str) -> AdversaryUpdateSpec:
    # Every weight distinct: humanWeight 0.7, each gold-vs-sample pair apoCoeff / S = 0.1.
    return AdversaryUpdateSpec(mode=mode, human_weight=0.7, apo_coeff=0.3)


def test_gold_reward_pairs_prefer_the_gold_answer_over_each_sample() -> None:
    tok = tiny_tokenizer()
    pairs = gold_reward_pairs(tok, GOLD, SAMPLES, apo_coeff=0.3, samples_per_query=3)
    assert [(p.good, p.bad) for p in pairs] == [
        (render_conversation(tok, q.prompt, q.gold or ""), render_conversation(tok, q.prompt, s))
        for q in GOLD
        for s in SAMPLES[q.id]
    ]
    assert [p.weight for p in pairs] == pytest.approx([0.1] * 6)
    assert {p.source for p in pairs} == {"apo"}
    with pytest.raises(ValueError, match="no gold answer"):
        gold_reward_pairs(tok, [Query("qc", PROMPT_A)], {"qc": ["x"]}, 0.3, 1)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("apo", [("human", 0.7)] + [("apo", 0.1)] * 6), ("baseline", [("human", 0.7)]),
     ("gail", [("apo", 0.1)] * 6)],
)  # fmt: skip
def test_reward_pairs_by_mode(mode: str, expected: list[tuple[str, float]]) -> None:
    tok = tiny_tokenizer()
    pairs = reward_pairs(tok, _update(mode), HUMAN, GOLD, SAMPLES, 3)
    assert [(p.source, round(p.weight, 9)) for p in pairs] == expected
    # Rendered with the RM's own chat template.
    human = human_reward_pairs(tok, HUMAN, 0.7)
    gold = gold_reward_pairs(tok, GOLD, SAMPLES, 0.3, 3)
    want = {"apo": human + gold, "baseline": human, "gail": gold}[mode]
    assert [(p.good, p.bad) for p in pairs] == [(p.good, p.bad) for p in want]


def test_human_pairs_weigh_one_by_default() -> None:
    assert [p.weight for p in human_reward_pairs(tiny_tokenizer(), HUMAN)] == [1.0]


# ---- APO: the policy's rows -------------------------------------------------------------------
GROUPS = [
    ScoredGroup("qa", ("ok", "best", "worst"), (0.2, 0.9, -0.4)),
    ScoredGroup("qb", ("tie1", "tie2"), (0.5, 0.5)),  # all tie: no DPO row
]
PROMPTS = {"qa": "<prompt a>", "qb": "<prompt b>"}


def test_dpo_rows_choose_the_best_sample_over_the_worst() -> None:
    assert dpo_rows(GROUPS, PROMPTS) == [
        {"prompt": "<prompt a>", "chosen": "best", "rejected": "worst"}
    ]


def test_rjs_examples_take_each_querys_best_sample() -> None:
    assert rjs_examples(GROUPS, PROMPTS) == [("<prompt a>", "best"), ("<prompt b>", "tie1")]


def test_rrhf_groups_keep_every_sample_with_its_reward() -> None:
    (a, b) = rrhf_groups(GROUPS, PROMPTS)
    assert (a.prompt, a.responses, a.rewards) == ("<prompt a>", ("ok", "best", "worst"),
                                                  (0.2, 0.9, -0.4))  # fmt: skip
    assert b.prompt == "<prompt b>"
