"""`sparring report`: one self-contained HTML page for one or several games.

For each family of round metrics a figure (matplotlib), every game overlaid on it with its 95%
bootstrap intervals where the metric has them (APO beside its baseline and GAIL arms, say);
the reward models' reliability diagrams on the held-out pairs; and per round a few of the
round's prompts with the best and worst sampled answers and their scores (APL: the attacks
with the highest harm score, and what the defender answered). Figures are PNGs inlined as data
URIs, so the page is one file that opens anywhere, offline.

Reads only: what the store holds for each game (its phases' metrics and outputs).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sparring_trainer.stats import BASE_MARGINS, RM_MARGINS
from sparring_trainer.store import ArtifactStore, game_prefix, phase_prefix

from sparring_operator.local import LEGEND
from sparring_operator.observed import observe_store
from sparring_operator.views import stored_rounds

# Families of round metrics, one figure each, in the order the page shows them.
FAMILIES: dict[str, tuple[str, ...]] = {
    "Reward model (held-out pairs)": (
        "rm_accuracy", "rm_ece", "rm_accuracy_vs_base", "eval_rm_accuracy",
    ),
    "APO mechanism": ("rm_gold_over_policy", "update_adversary_apo_term_share"),
    "Policy under the judge": ("reward_mean", "reward_vs_base", "win_rate", "answers_changed"),
    "What exposes reward hacking": (
        "answer_distinct_2", "answer_repeated_trigram_rate", "answer_words_mean",
        "log_ratio_mean",
    ),
    "Attack success (APL)": ("asr_direct", "asr_attack", "asr_direct_judge", "asr_attack_judge"),
    "Defender's utility (APL)": ("over_refusal",),
    "Attacker (APL)": (
        "harm_score_mean", "attacker_diversity", "rewrite_keeps_request", "attacker_refusal_rate",
    ),
}  # fmt: skip
EXAMPLES_PER_ROUND = 3
RELIABILITY_BINS = 10


@dataclass(frozen=True)
class Shown:
    """One text of an example, with its label and score."""

    label: str
    text: str
    score: float | None = None


@dataclass(frozen=True)
class Example:
    title: str
    texts: list[Shown]


@dataclass
class GameRecord:
    """What the report shows of one game."""

    name: str
    kind: str
    rounds: dict[int, dict[str, float]] = field(default_factory=dict)
    margins: dict[int, list[float]] = field(default_factory=dict)  # held-out RM margins
    examples: dict[int, list[Example]] = field(default_factory=dict)
    note: str = ""  # what could not be read


def _rows(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    if not store.exists(key):
        return []
    text = store.get_bytes(key).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def prompt_text(prompt: Any) -> str:
    """A prompt as stored (a string, or a list of {role, content} turns) as plain text."""
    if isinstance(prompt, list):
        return "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
            for m in prompt
        )
    return str(prompt)


def apo_examples(scored: list[dict[str, Any]], count: int) -> list[Example]:
    """The `count` prompts whose sampled answers the RM told apart the most: best and worst."""

    def spread(row: dict[str, Any]) -> float:
        return max(row["rewards"]) - min(row["rewards"]) if row["rewards"] else 0.0

    out = []
    for row in sorted((r for r in scored if r["rewards"]), key=spread, reverse=True)[:count]:
        ranked = sorted(zip(row["rewards"], row["responses"], strict=True), reverse=True)
        (best, best_text), (worst, worst_text) = ranked[0], ranked[-1]
        out.append(
            Example(
                prompt_text(row.get("prompt", row["id"])),
                [Shown("best sample", best_text, best), Shown("worst sample", worst_text, worst)],
            )
        )
    return out


def apl_examples(answers: list[dict[str, Any]], count: int) -> list[Example]:
    """The `count` held-out attacks with the highest harm score, and the defender's answers."""
    attacks = sorted(
        (r for r in answers if r.get("kind") == "attack"),
        key=lambda r: float(r.get("harm", 0.0)),
        reverse=True,
    )
    return [
        Example(
            str(r.get("seed", r["id"])),
            [
                Shown("attacker's rewrite", str(r["request"]), float(r.get("harm", math.nan))),
                Shown(
                    "defender's answer (" + ("complied" if r.get("success") else "refused") + ")",
                    str(r["answer"]),
                ),
            ],
        )
        for r in attacks[:count]
    ]


def read_game(store: ArtifactStore, namespace: str, name: str, kind: str) -> GameRecord:
    """Every committed round's metrics, held-out margins and examples of one game."""
    keys = store.list(game_prefix(namespace, name))
    if not keys:
        raise ValueError(
            f"no game {namespace}/{name} in {store.uri_for(game_prefix(namespace, name))}"
        )
    view = observe_store(
        store, namespace, name, kind, stored_rounds(keys, game_prefix(namespace, name))
    )
    record = GameRecord(f"{namespace}/{name}", kind, view.round_metrics())

    def committed(r: int, phase: str, file: str) -> list[dict[str, Any]]:
        """A committed phase's output (a killed attempt's leftovers are never read)."""
        if (r, phase) not in view.committed:
            return []
        return _rows(store, phase_prefix(namespace, name, r, phase) + file)

    base = committed(0, "prepare", BASE_MARGINS)
    if base:
        record.margins[0] = [float(r["margin"]) for r in base]
    for r in sorted(record.rounds):
        margins = committed(r, "evaluate", RM_MARGINS)
        if margins and r > 0:
            record.margins[r] = [float(m["margin"]) for m in margins]
        if kind == "apo":
            examples = apo_examples(committed(r, "score", "scores.jsonl"), EXAMPLES_PER_ROUND)
        else:
            answers = committed(r, "evaluate", "answers.jsonl")
            examples = apl_examples(answers, EXAMPLES_PER_ROUND)
        if examples:
            record.examples[r] = examples
    return record


def reliability(margins: Sequence[float], bins: int) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per non-empty confidence bin, binned as the RM's ECE
    is (`losses.expected_calibration_error`): confidence max(p, 1 - p) of p = sigmoid(margin),
    correct when p >= 1/2 (the chosen answer is the preferred one), bins (k/b, (k+1)/b]."""
    members: dict[int, list[tuple[float, float]]] = {}
    for m in margins:
        p = 0.5 * (1.0 + math.tanh(m / 2))  # sigmoid(m), without overflow at |m| > 709
        confidence = max(p, 1.0 - p)
        index = max(0, math.ceil(confidence * bins) - 1)
        members.setdefault(index, []).append((confidence, 1.0 if p >= 0.5 else 0.0))
    return [
        (sum(c for c, _ in group) / len(group), sum(a for _, a in group) / len(group), len(group))
        for _, group in sorted(members.items())
    ]


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def family_figure(title: str, names: Sequence[str], games: Sequence[GameRecord]) -> str | None:
    """One family's figure (a PNG, base64), a panel per metric any game reported; None when
    no game reported any."""
    import matplotlib.pyplot as plt

    shown = [n for n in names if any(n in m for g in games for m in g.rounds.values())]
    if not shown:
        return None
    figure, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.2), squeeze=False)
    for ax, name in zip(axes[0], shown, strict=True):
        for game in games:
            points = [(r, m) for r, m in sorted(game.rounds.items()) if name in m]
            if not points:
                continue
            xs = [r for r, _ in points]
            ys = [m[name] for _, m in points]
            # A percentile bootstrap interval need not contain its estimate (ECE's leans
            # upward): the bar then starts at the estimate.
            low = [max(0.0, m[name] - m.get(f"{name}_lo", m[name])) for _, m in points]
            high = [max(0.0, m.get(f"{name}_hi", m[name]) - m[name]) for _, m in points]
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=game.name)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(title)
    return _png(figure)


def reliability_figure(games: Sequence[GameRecord]) -> str | None:
    """Each game's last evaluated RM against RM_Base of the first game that has one."""
    import matplotlib.pyplot as plt

    curves = [(g.name, max(g.margins), g.margins[max(g.margins)]) for g in games if g.margins]
    if not curves:
        return None
    figure, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle=":", label="perfectly calibrated")
    base = next((g.margins[0] for g in games if 0 in g.margins), None)
    if base is not None:
        points = reliability(base, RELIABILITY_BINS)
        ax.plot(*zip(*[(c, a) for c, a, _ in points], strict=True), "s--", label="RM_Base")
    for name, round_, margins in curves:
        if round_ == 0:
            continue
        points = reliability(margins, RELIABILITY_BINS)
        ax.plot(*zip(*[(c, a) for c, a, _ in points], strict=True), "o-",
                label=f"{name}, round {round_}")  # fmt: skip
    ax.set_xlabel("confidence max(p, 1 - p)")
    ax.set_ylabel("accuracy on held-out pairs")
    ax.set_title("Reliability of the reward models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)


def _figure_html(png: str, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{png}"></figure>'


def _examples_html(game: GameRecord) -> str:
    parts = [f"<h3>{html.escape(game.name)}</h3>"]
    for r, examples in sorted(game.examples.items()):
        parts.append(f"<h4>Round {r}</h4>")
        for example in examples:
            title = html.escape(example.title)
            parts.append(f'<div class="example"><pre class="prompt">{title}</pre>')
            for shown in example.texts:
                score = "" if shown.score is None else f" (score {shown.score:.3f})"
                parts.append(
                    f'<p class="label">{html.escape(shown.label)}{score}</p>'
                    f'<pre class="answer">{html.escape(shown.text)}</pre>'
                )
            parts.append("</div>")
    return "\n".join(parts)


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
figure{margin:1em 0}img{max-width:100%}pre{white-space:pre-wrap;margin:.2em 0}
.example{border-left:3px solid #ccc;padding-left:.8em;margin:1em 0}.prompt{color:#333}
.label{margin:.4em 0 0;font-weight:bold}.note{color:#a00}dt{font-family:monospace}"""


def render_html(games: Sequence[GameRecord]) -> str:
    """The page: figures per metric family, the reliability diagram, the legend, examples."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the figures only ever go to PNG
    names = ", ".join(g.name for g in games)
    body = [f"<h1>Sparring report: {html.escape(names)}</h1>"]
    body += [f'<p class="note">{html.escape(g.name)}: {html.escape(g.note)}</p>'
             for g in games if g.note]  # fmt: skip
    body.append("<h2>Round metrics</h2>")
    for title, metrics in FAMILIES.items():
        png = family_figure(title, metrics, games)
        if png is not None:
            body.append(f"<h3>{html.escape(title)}</h3>" + _figure_html(png, title))
    png = reliability_figure(games)
    if png is not None:
        body.append("<h2>Reward-model reliability</h2>" + _figure_html(png, "reliability"))
    shown = {k for g in games for m in g.rounds.values() for k in m}
    legend = [f"<dt>{n}</dt><dd>{html.escape(t)}</dd>" for n, t in LEGEND.items() if n in shown]
    if legend:
        body.append("<h2>What the metrics measure</h2><dl>" + "".join(legend) + "</dl>")
    if any(g.examples for g in games):
        body.append("<h2>Examples</h2>")
        body += [_examples_html(g) for g in games if g.examples]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Sparring report: {html.escape(names)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def file_record(path: str, store_uri: str | None) -> GameRecord:
    """A game file's game, from its own store (or `store_uri`); InvalidGameFile if bad."""
    from pathlib import Path

    from sparring_trainer.document import StorageSpec
    from sparring_trainer.store import open_store

    from sparring_operator.validate import load_game

    game = load_game(Path(path))
    storage = game.spec.storage if store_uri is None else StorageSpec(uri=store_uri)
    meta = game.metadata
    return read_game(open_store(storage), meta.namespace, meta.name, game.spec.game.kind)


def stored_record(store: ArtifactStore, namespace: str, name: str) -> GameRecord:
    """A game known by name in `store` (ValueError when it has no committed prepare)."""
    from sparring_operator.views import stored_kind

    kind = stored_kind(store, namespace, name)
    if kind is None:
        raise ValueError(f"no game {namespace}/{name} with a committed prepare in this store")
    return read_game(store, namespace, name, kind)


def cluster_record(obj: dict[str, Any]) -> GameRecord:
    """A game's resource from the cluster: read from its store with this machine's
    credentials; where that store cannot be read from here, the metrics of the resource's
    status (its recent rounds) and a note saying so."""
    from sparring_trainer.store import StoreError, open_store

    from sparring_operator.api import AdversarialGame

    game = AdversarialGame.model_validate(obj)
    meta, kind = game.metadata, game.spec.game.kind
    # The store the operator reports it plays in (its runtime's, where spec.storage is file://).
    played = game.status.storage if game.status else None
    storage = played.spec() if played is not None else game.spec.storage
    try:
        return read_game(open_store(storage), meta.namespace, meta.name, kind)
    except (StoreError, OSError, ValueError) as exc:  # ValueError: nothing there, seen from here
        rounds = {r.round: r.metrics for r in (game.status.rounds if game.status else [])}
        note = (
            f"its store ({storage.uri}) could not be read from here "
            f"({type(exc).__name__}): metrics from the resource's status only, no examples"
        )
        return GameRecord(f"{meta.namespace}/{meta.name}", kind, rounds, note=note)
