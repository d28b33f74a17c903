"""What a round's numbers can be trusted to say: bootstrap intervals, paired differences, and
the signs of a policy that games its reward model.

Pure functions over plain lists, so that every reported interval is reproducible from the
per-item values the phases write (the resampling is seeded) and testable by hand.

- `interval`: the mean of per-item values with a 95% percentile-bootstrap interval.
- `paired_difference`: the mean of ``a_i - b_i`` over the same items (pairs, queries) with its
  interval; the items are resampled together, so what both sides share cancels (a difference
  of two independent intervals would be far wider than the effect it measures).
- `distinct_n`, `has_repeated_ngram`: reward hacking shows as collapsing diversity (one phrase
  that the RM likes, repeated) while the reward rises.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

BOOTSTRAP_SAMPLES = 1000
LEVEL = 0.95
# The per-item values APO phases write beside their metrics (rows of {"key", "margin"}, one per
# held-out pair, in split order): RM_Base's in prepare, each round's RM's in evaluate.
BASE_MARGINS = "rm-base-margins.jsonl"
RM_MARGINS = "rm-margins.jsonl"


def margin_correct(margin: float) -> float:
    """Whether an RM ranks a pair right from its margin r(chosen) - r(rejected); a tie is half."""
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def interval(
    values: Sequence[T],
    seed: int = 0,
    statistic: Callable[[Sequence[T]], float] | None = None,
) -> tuple[float, float, float]:
    """(statistic, low, high): `statistic` of `values` (their mean by default, for numbers) and
    its 95% percentile-bootstrap interval over `BOOTSTRAP_SAMPLES` resamples drawn from `seed`.
    Items resample whole: for a paired statistic, make each item a pair."""
    if not values:
        raise ValueError("an interval of no values")
    stat: Callable[[Sequence[Any]], float] = statistic or _mean
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(
        stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(BOOTSTRAP_SAMPLES)
    )
    tail = (1 - LEVEL) / 2
    low = draws[int(tail * BOOTSTRAP_SAMPLES)]
    high = draws[int((1 - tail) * BOOTSTRAP_SAMPLES) - 1]
    return stat(values), low, high


def paired_difference(
    a: Sequence[float], b: Sequence[float], seed: int = 0
) -> tuple[float, float, float]:
    """(mean of a_i - b_i, low, high): a and b measure the same items in the same order."""
    if len(a) != len(b):
        raise ValueError(f"paired values of different lengths: {len(a)} and {len(b)}")
    return interval([x - y for x, y in zip(a, b, strict=True)], seed)


def named(prefix: str, estimate: tuple[float, float, float]) -> dict[str, float]:
    """{prefix: value, prefix_lo: low, prefix_hi: high}, as round metrics."""
    value, low, high = estimate
    return {prefix: value, f"{prefix}_lo": low, f"{prefix}_hi": high}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams over all n-grams, pooled over `texts`;
    words are lower-cased whitespace tokens and n-grams never cross texts; 0 when there is no
    n-gram. Low values are repetitive, generic output."""
    grams = [g for text in texts for g in _ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def has_repeated_ngram(text: str, n: int = 3) -> bool:
    """Whether some n-gram of (lower-cased) words occurs twice in `text` (degenerate loops do)."""
    grams = _ngrams(text, n)
    return len(set(grams)) < len(grams)


def text_indicators(answers: Sequence[str]) -> dict[str, float]:
    """The round's answers, as numbers that expose reward hacking beside the reward."""
    if not answers:
        raise ValueError("indicators of no answers")
    return {
        "answer_distinct_2": distinct_n(answers, 2),
        "answer_repeated_trigram_rate": sum(map(has_repeated_ngram, answers)) / len(answers),
        "answer_words_mean": sum(len(a.split()) for a in answers) / len(answers),
    }
