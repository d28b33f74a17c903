"""The rows each algorithm trains on, built by pure functions (hand-built cases: who is chosen,
who is rejected, which weight)."""

from __future__ import annotations

from sparring_trainer.apo import human_reward_pairs
from sparring_trainer.data import PreferencePair
from sparring_trainer.models import render_conversation, tiny_tokenizer


def test_human_reward_pairs_prefer_the_chosen_reply_with_the_human_weight() -> None:
    tokenizer = tiny_tokenizer()
    prompt = ({"role": "user", "content": "How do I bake bread?"},)
    pair = PreferencePair(prompt, "Knead, rise, bake.", "No idea.", "hh.jsonl:1")
    (row,) = human_reward_pairs(tokenizer, [pair], weight=0.7)
    assert row.good == render_conversation(tokenizer, prompt, "Knead, rise, bake.")
    assert row.bad == render_conversation(tokenizer, prompt, "No idea.")
    assert (row.weight, row.source) == (0.7, "human")
