"""A game against its ablations, played as real games over several seeds, compared item by item.

For each seed the full game is played with `sparring run`; each ablation starts from its
prepare and the phases before the ablated one (`--reuse-from`), so every arm shares the
held-out data, the base models and the judge. `sparring compare`'s paired rows then give each
arm's per-item metrics and its difference from the full game, paired over the same items.

- APO (`--kind apo`, examples/apo-smollm2.yaml): `mode: apo` vs `baseline` (the RM never sees
  the policy's samples; the policy is trained against RM_Base) vs `gail` (gold-vs-sample pairs
  only). RM side: held-out accuracy; policy side: the judge's reward of the greedy test
  answers, beside the indicators of reward hacking.
- APL (`--kind apl`, examples/apl-smollm2.yaml): the attacker trained (`mode: apo`) vs frozen
  (`baseline`). Per held-out seed: attack success on the direct request and on the arm's own
  attacker's rewrite; per benign request: over-refusal.

The pooled rows average each item's difference over the seeds (the held-out split depends on
the data, not the seed, so the items are the same) and bootstrap over items: an interval for
this data and these seeds, not for new data.

Commands:

    python benchmarks/game_arms.py                    # APO, seeds 0 1 2
    python benchmarks/game_arms.py --kind apl         # APL, seeds 0 1 2
    python benchmarks/game_arms.py --seeds 0 1 2 3 4  # more seeds
    python benchmarks/game_arms.py --quick            # tiny-random models, one seed (the test)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, base_parser, log, report, table

ARMS = {"apo": ("apo", "baseline", "gail"), "apl": ("apo", "baseline")}
GAMES = {"apo": "apo-smollm2.yaml", "apl": "apl-smollm2.yaml"}
TINY = {"apo": "apo-tiny.yaml", "apl": "apl-tiny.yaml"}
SIDE = {  # unpaired metrics shown beside the paired ones
    "apo": ("answer_distinct_2", "answer_repeated_trigram_rate", "log_ratio_mean"),
    "apl": ("harm_score_mean", "attacker_diversity", "rewrite_keeps_request"),
}
PAPERS = {
    "apo": "APO paper (LLaMA-7B RMs on HH), RM test accuracy: RM_Base 63.0%, APO round 1 "
    "66.7%, without the human pairs (GAIL-like) 56.6%; policy reward and GPT-4 win rate "
    "improve with the APO RM for RJS, RRHF and DPO.",
    "apl": "APL paper (Mistral-7B defender): harmful outputs 5.88% -> 0.43%, attack success "
    "rate down by up to 65%, utility kept (MT-Bench 6.59 vs 6.78); it reports no frozen-"
    "attacker arm, so the second row has no paper figure beside it.",
}


def _game_file(base: dict[str, Any], seed: int, mode: str, store: Path, work: Path) -> Path:
    doc = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    doc["metadata"]["name"] = f"{base['metadata']['name']}-s{seed}-{mode}"
    doc["spec"]["storage"] = {"uri": f"file://{store}"}
    doc["spec"]["game"]["seed"] = seed
    doc["spec"]["game"]["adversary"].setdefault("update", {})["mode"] = mode
    path = work / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _play(path: Path, *extra: str) -> float:
    started = time.time()
    cmd = [sys.executable, "-m", "sparring_operator", "run", str(path), *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return time.time() - started


def _interval(estimate: tuple[float, float, float] | None) -> str:
    return "-" if estimate is None else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*estimate)


def _pooled(outputs: dict[tuple[int, str], Any], seeds: list[int], arm: str, metric: str,
            first: str) -> str:  # fmt: skip
    """first - arm on `metric`: each item's difference averaged over the seeds, bootstrapped
    over items ("-" when a judged metric's judges differ)."""
    from sparring_operator.compare import paired_rows
    from sparring_trainer.stats import interval

    values = []
    for s in seeds:
        a, b = outputs[s, first], outputs[s, arm]
        row = {r.metric: r for r in paired_rows(a, b, s)}.get(metric)
        if row is None or row.difference is None:
            return "-"
        values.append((a.paired[metric].values, b.paired[metric].values))
    items = sorted(set.intersection(*(set(x) & set(y) for x, y in values)))
    diffs = [sum(x[i] - y[i] for x, y in values) / len(values) for i in items]
    return f"{_interval(interval(diffs, 0))} (n={len(items)})"


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--kind", choices=sorted(ARMS), default="apo")
    parser.add_argument("--game", type=Path, default=None, help="default: the kind's example")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    examples = ROOT / "examples"
    if args.quick:
        args.game, args.seeds = examples / TINY[args.kind], args.seeds[:1]
    args.game = args.game or examples / GAMES[args.kind]
    from sparring_operator.compare import paired_rows, read_round
    from sparring_operator.local import metric_cell
    from sparring_trainer.store import FileStore

    started = time.time()
    base = yaml.safe_load(args.game.read_text())
    base["spec"]["rounds"] = 1
    name, arms = base["metadata"]["name"], ARMS[args.kind]
    work = Path(args.cache_dir) / "game-arms"
    store = work / "store"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    walls: dict[tuple[int, str], float] = {}
    for seed in args.seeds:
        files = {m: _game_file(base, seed, m, store, work) for m in arms}
        log(f"seed {seed}: {arms[0]}")
        walls[seed, arms[0]] = _play(files[arms[0]])
        for arm in arms[1:]:
            log(f"seed {seed}: {arm}, from the {arms[0]} game's shared phases")
            walls[seed, arm] = _play(files[arm], "--reuse-from", f"{name}-s{seed}-{arms[0]}")

    fs = FileStore(store)
    outputs = {
        (s, m): read_round(fs, "default", f"{name}-s{s}-{m}", 1) for s in args.seeds for m in arms
    }
    metrics = list(outputs[args.seeds[0], arms[0]].paired)
    rows = []
    for seed in args.seeds:
        for arm in arms:
            this = outputs[seed, arm]
            paired = {r.metric: r for r in paired_rows(outputs[seed, arms[0]], this, seed)}
            cells: list[Any] = [seed, arm]
            for metric in metrics:
                own = paired[metric]
                cells.append(f"{own.b:.3f}" if own.b is not None else "-")
                if arm != arms[0]:
                    cells[-1] += f"; {arms[0]} - this {_interval(own.difference)}"
            cells += [metric_cell(this.metrics, m) for m in SIDE[args.kind]]
            rows.append([*cells, f"{walls[seed, arm]:.0f}"])
    head = ["seed", "arm", *metrics, *SIDE[args.kind], "wall s"]
    pooled_head = ["pooled over seeds", *(f"{arms[0]} - arm: {m}" for m in metrics)]
    pooled = [
        [f"{arms[0]} - {arm}", *(_pooled(outputs, args.seeds, arm, m, arms[0]) for m in metrics)]
        for arm in arms[1:]
    ]
    first = paired_rows(outputs[args.seeds[0], arms[0]], outputs[args.seeds[0], arms[0]], 0)
    items = "; ".join(f"{r.metric}: {r.note.removeprefix('paired over ')}" for r in first
                      if r.note)  # fmt: skip
    body = "\n\n".join([
        table(head, rows),
        table(pooled_head, pooled),
        f"Setup: {args.game.relative_to(ROOT)} with rounds 1, its seed replaced; each ablation "
        f"reuses the {arms[0]} game's phases before the ablated one (`sparring run "
        f"--reuse-from`), so every arm is measured on the same items ({items}) by the same "
        "judge. A cell's value is the arm's mean; the difference beside it is paired over "
        "the items, with its 95% bootstrap interval. An interval that covers 0 is not a "
        f"result either way. {PAPERS[args.kind]}",
    ])  # fmt: skip
    title = f"{args.kind.upper()} game vs its ablations over seeds (benchmarks/game_arms.py)"
    report(args, title, body, args.seeds, started)


if __name__ == "__main__":
    main()
