"""APO reward-model reproduction at small scale: does the APO loss make a better reward model?

The APO paper (Cheng et al. 2023, LLaMA-7B on HH) reports RM preference accuracy 63.0 (base,
human pairs only) -> 66.7 (APO round 1) -> 67.6 (round 3), and 56.6 for the GAIL-like
ablation without human pairs. This script trains the same four kinds of reward model with
Sparring's own code (`train_reward_model`, `WeightedPair`, `score_texts`, `split_apo`, the
metrics of `losses.py`), at a size that runs on 2 CPU cores:

* data: the builtin HH harmless pairs split by `split_apo`: D_P (human pairs), gold queries
  (gold answer = the chosen reply), held-out test pairs;
* reward model: all-MiniLM-L6-v2 with a fresh scalar head (seeded per RM seed);
* policy: SmolLM2-135M-Instruct answers each gold query S times (temperature 1.2, top-p 0.95).
  The samples are generated once per configuration and cached under benchmarks/.cache/
  (git-ignored), so they are shared by all seeds and by later runs;
* RMs, built exactly as `apo.update_adversary` builds its pairs (human weight 1.0, each
  gold-vs-sample pair apo_coeff / S = 0.1 / 4):
    RM_init       the untrained head (a floor: what "no training" scores);
    RM_base       D_P only (the paper's baseline, `mode: baseline`);
    RM_APO r1     D_P + D_APO(sample set 1), from the same initial weights;
    RM_GAIL       D_APO(sample set 1) only (`mode: gail`);
    RM_base r2    RM_base trained one more round on D_P (control for the extra training);
    RM_APO r2     RM_APO r1 trained one more round on D_P + D_APO(sample set 2), `init:
                  continue`. The paper's round 2 samples a policy that was itself updated in
                  round 1; here the policy stays the SFT model (the policy side is
                  apo_policy.py), so "round 2" = one more RM update on fresh negatives.
* metrics on the held-out pairs: preference accuracy and ECE (10 bins), as `evaluate`
  computes them; 95% CIs by a percentile bootstrap over test pairs (the same resampled pairs
  for every seed and every RM, statistic = mean over seeds), so each CI covers the test-set
  sampling error of the seed-averaged number; deltas vs RM_base are paired the same way.
  "gold>sample" is the share of gold-vs-sample pairs on fresh samples (set 2) that the RM
  orders correctly: whether the APO term taught the RM anything at all.

Commands:

    python benchmarks/apo_rm_repro.py                 # default: 3 seeds, 22 min on 2 idle cores
    python benchmarks/apo_rm_repro.py --quick         # smoke run with the real models (~2 min)
    python benchmarks/apo_rm_repro.py --quick --tiny  # tiny-random models (seconds; the test)
    python benchmarks/apo_rm_repro.py --human-pairs 1024 --test-pairs 800 --epochs 3 \
        --seeds 0 1 2 3 4                             # a bigger run (about an hour)
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

from _common import (
    MINILM,
    SMOLLM2,
    base_parser,
    bootstrap_ci,
    cached_json,
    log,
    model_cache,
    report,
    table,
)

PAPER = {  # Cheng et al. 2023, LLaMA-7B RM on HH (DESIGN.md)
    "RM_base": "63.0",
    "RM_APO r1": "66.7",
    "RM_APO r2": "(r3: 67.6)",
    "RM_GAIL": "56.6",
}


def parse_args() -> Any:
    p = base_parser(__doc__)
    p.add_argument("--tiny", action="store_true", help="tiny-random policy and RM (smoke test)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="RM seeds [0 1 2]")
    p.add_argument("--human-pairs", type=int, default=None, help="|D_P| [384]")
    p.add_argument("--gold-queries", type=int, default=None, help="gold queries [32]")
    p.add_argument("--test-pairs", type=int, default=None, help="held-out pairs [500]")
    p.add_argument("--samples", type=int, default=4, help="S: samples per gold query")
    p.add_argument("--temperature", type=float, default=1.2)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=None, help="[48]")
    p.add_argument("--epochs", type=int, default=None, help="RM epochs, round 1 [2]")
    p.add_argument("--round2-epochs", type=int, default=1, help="RM epochs, round 2")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128, help="RM tokens (left-truncated)")
    p.add_argument("--max-prompt-chars", type=int, default=400)
    p.add_argument("--apo-coeff", type=float, default=0.1)
    p.add_argument("--human-weight", type=float, default=1.0)
    p.add_argument("--sample-seed", type=int, default=0, help="seed of sample set 1 (+1: set 2)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples [1000]")
    args = p.parse_args()
    quick = {
        "seeds": [0],
        "human_pairs": 48,
        "gold_queries": 6,
        "test_pairs": 64,
        "max_new_tokens": 16,
        "epochs": 1,
        "bootstrap": 200,
    }
    full = {
        "seeds": [0, 1, 2],
        "human_pairs": 384,
        "gold_queries": 32,
        "test_pairs": 500,
        "max_new_tokens": 48,
        "epochs": 2,
        "bootstrap": 1000,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> int:
    started = time.time()
    args = parse_args()
    import torch
    from sparring_trainer.apo_rows import gold_reward_pairs, human_reward_pairs
    from sparring_trainer.config import APODataSpec, ModelSpec, PreferenceSource, TrainSpec
    from sparring_trainer.data import read_preferences, split_apo
    from sparring_trainer.generation import Decoding, generate_transformers
    from sparring_trainer.losses import expected_calibration_error, preference_accuracy
    from sparring_trainer.models import (
        load_causal_lm,
        load_reward_model,
        render_conversation,
        render_prompt,
    )
    from sparring_trainer.training import WeightedPair, score_texts, train_reward_model

    torch.set_num_threads(int(__import__("os").environ["OMP_NUM_THREADS"]))
    cache = model_cache()
    policy_ref = "tiny-random:1" if args.tiny else SMOLLM2
    rm_ref = "tiny-random:2" if args.tiny else MINILM
    S = args.samples

    # ---- data -------------------------------------------------------------------------------
    data_spec = APODataSpec(
        preferences=PreferenceSource(path="builtin:hh-rlhf-harmless"),
        human_pairs=args.human_pairs,
        gold_queries=args.gold_queries,
        train_queries=1,
        test_pairs=args.test_pairs,
        test_queries=1,
        max_prompt_chars=args.max_prompt_chars,
    )
    splits = split_apo(read_preferences(data_spec.preferences), data_spec)
    gold = splits.gold_queries
    log(
        f"D_P {len(splits.human_pairs)} pairs, {len(gold)} gold queries, "
        f"{len(splits.test_pairs)} test pairs"
    )

    # ---- the policy's samples, generated once per configuration (cached) ---------------------
    policy: dict[str, Any] = {}

    def sample_set(seed: int) -> list[list[str]]:
        def compute() -> list[list[str]]:
            if not policy:
                log(f"loading policy {policy_ref}")
                policy["model"], policy["tok"] = load_causal_lm(ModelSpec(model=policy_ref), cache)
            tok = policy["tok"]
            prompts = [render_prompt(tok, q.prompt) for q in gold]
            decoding = Decoding(
                n=S,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
            )
            t0 = time.time()
            out = generate_transformers(policy["model"], tok, prompts, decoding, 8, seed)
            log(f"sampled {len(prompts)}x{S} answers in {time.time() - t0:.0f} s")
            return out

        key = {
            "policy": policy_ref,
            "queries": [q.id for q in gold],
            "n": S,
            "seed": seed,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "version": 1,
        }
        return list(cached_json(args.cache_dir, "apo-samples", key, compute))

    samples = {1: sample_set(args.sample_seed), 2: sample_set(args.sample_seed + 1)}
    policy.clear()
    words = [len(s.split()) for group in samples[1] for s in group]
    log(f"sample set 1: mean {sum(words) / len(words):.1f} words; e.g. {samples[1][0][0][:120]!r}")

    # ---- pairs, by the builders apo.update_adversary uses -----------------------------------
    def pairs_for(tok: Any, human: bool, sample_round: int | None) -> list[WeightedPair]:
        pairs: list[WeightedPair] = []
        if human:
            pairs += human_reward_pairs(tok, splits.human_pairs, args.human_weight)
        if sample_round is not None:
            by_id = {q.id: group for q, group in zip(gold, samples[sample_round], strict=True)}
            pairs += gold_reward_pairs(tok, gold, by_id, args.apo_coeff, S)
        return pairs

    def spec(epochs: int) -> TrainSpec:
        return TrainSpec(
            learning_rate=args.lr,
            batch_size=args.batch_size,
            epochs=epochs,
            max_length=args.max_length,
        )

    def scores(model: Any, tok: Any, texts: list[str]) -> torch.Tensor:
        return torch.tensor(score_texts(model, tok, texts, args.max_length, batch_size=32))

    names = ["RM_init", "RM_base", "RM_APO r1", "RM_GAIL", "RM_base r2", "RM_APO r2"]
    trained_on = {
        "RM_init": "nothing (fresh head)",
        "RM_base": "D_P",
        "RM_APO r1": "D_P + D_APO(set 1)",
        "RM_GAIL": "D_APO(set 1) only",
        "RM_base r2": "RM_base + 1 round on D_P",
        "RM_APO r2": "RM_APO r1 + 1 round on D_P + D_APO(set 2)",
    }
    # diffs[name][seed] = r(chosen) - r(rejected) on test pairs; golds likewise on fresh samples
    diffs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    margins: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    steps: dict[str, list[float]] = {n: [] for n in names}
    train_seconds = 0.0
    for seed in args.seeds:
        # The fresh scalar head is drawn from the RM seed.
        init, tok = load_reward_model(ModelSpec(model=rm_ref), cache, seed=seed)
        test_good = [render_conversation(tok, p.prompt, p.chosen) for p in splits.test_pairs]
        test_bad = [render_conversation(tok, p.prompt, p.rejected) for p in splits.test_pairs]
        fresh = pairs_for(tok, human=False, sample_round=2)

        def evaluate(
            name: str,
            model: Any,
            tok: Any = tok,
            fresh: Any = fresh,
            good: Any = test_good,
            bad: Any = test_bad,
            seed: int = seed,
        ) -> None:
            diffs[name].append(scores(model, tok, good) - scores(model, tok, bad))
            g = scores(model, tok, [p.good for p in fresh])
            margins[name].append(g - scores(model, tok, [p.bad for p in fresh]))
            acc = preference_accuracy(diffs[name][-1], torch.zeros(len(good)))
            log(f"seed {seed} {name}: test accuracy {100 * acc:.1f}")

        def train(
            name: str,
            model: Any,
            pairs: list[WeightedPair],
            epochs: int,
            rseed: int,
            tok: Any = tok,
        ) -> Any:
            nonlocal train_seconds
            t0 = time.time()
            metrics = train_reward_model(model, tok, pairs, spec(epochs), rseed)
            train_seconds += time.time() - t0
            steps[name].append(metrics["train_steps"])
            return model

        evaluate("RM_init", init)
        base = train("RM_base", copy.deepcopy(init), pairs_for(tok, True, None), args.epochs, seed)
        evaluate("RM_base", base)
        apo = train("RM_APO r1", copy.deepcopy(init), pairs_for(tok, True, 1), args.epochs, seed)
        evaluate("RM_APO r1", apo)
        gail = train("RM_GAIL", copy.deepcopy(init), pairs_for(tok, False, 1), args.epochs, seed)
        evaluate("RM_GAIL", gail)
        del gail
        r2 = args.round2_epochs
        evaluate("RM_base r2", train("RM_base r2", base, pairs_for(tok, True, None), r2, seed + 1))
        evaluate("RM_APO r2", train("RM_APO r2", apo, pairs_for(tok, True, 2), r2, seed + 1))
        del init, base, apo

    # ---- statistics ---------------------------------------------------------------------------
    import numpy as np

    n_test = len(splits.test_pairs)
    zeros = torch.zeros(n_test)

    def acc_of(name: str, idx: Any = None) -> float:
        vals = [preference_accuracy(d if idx is None else d[idx], zeros) for d in diffs[name]]
        return 100 * float(np.mean(vals))

    def ece_of(name: str, idx: Any = None) -> float:
        vals = [
            expected_calibration_error(d if idx is None else d[idx], zeros) for d in diffs[name]
        ]
        return float(np.mean(vals))

    def ci(stat: Any, digits: int = 1) -> str:
        lo, hi = bootstrap_ci(lambda idx: stat(torch.as_tensor(idx)), n_test, args.bootstrap, 7)
        return f"[{lo:.{digits}f}, {hi:.{digits}f}]"

    # Raw per-seed score differences, for re-analysis without retraining.
    raw = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "test_diffs": {n: [d.tolist() for d in diffs[n]] for n in names},
        "gold_margins": {n: [m.tolist() for m in margins[n]] for n in names},
    }
    raw_path = args.cache_dir / f"apo-rm-scores-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(__import__("json").dumps(raw))
    log(f"raw scores: {raw_path}")

    rows = []
    for name in names:
        acc = acc_of(name)
        per_seed = " / ".join(f"{100 * preference_accuracy(d, zeros):.1f}" for d in diffs[name])
        if name == "RM_base":
            delta = "-"
        else:
            d = acc_of(name) - acc_of("RM_base")
            delta = f"{d:+.1f} " + ci(lambda idx, n=name: acc_of(n, idx) - acc_of("RM_base", idx))
        gold_ok = 100 * float(np.mean([(m > 0).float().mean() for m in margins[name]]))
        seen = " (seen)" if name == "RM_APO r2" else ""
        rows.append(
            [
                name,
                trained_on[name],
                f"{acc:.1f} {ci(lambda idx, n=name: acc_of(n, idx))}",
                delta,
                f"{ece_of(name):.3f} {ci(lambda idx, n=name: ece_of(n, idx), 3)}",
                per_seed,
                f"{gold_ok:.1f}{seen}",
                f"{np.mean(steps[name]):.0f}" if steps[name] else "0",
                PAPER.get(name, "-"),
            ]
        )
    headers = [
        "RM",
        "trained on",
        "accuracy % [95% CI]",
        "Δ acc vs RM_base [95% CI]",
        "ECE [95% CI]",
        "accuracy per seed",
        "gold>sample % (set 2)",
        "steps",
        "paper acc (LLaMA-7B, HH)",
    ]
    n_apo = len(gold) * S
    contrasts = [
        ("RM_APO r1", "RM_base", "APO term, round 1", "+3.7"),
        ("RM_APO r2", "RM_base r2", "APO term at equal training (round 2)", "-"),
        ("RM_base r2", "RM_base", "one more round of D_P only", "-"),
        ("RM_APO r2", "RM_APO r1", "APO round 2 vs round 1", "(r3 - r1: +0.9)"),
        ("RM_GAIL", "RM_base", "D_APO only (no human pairs)", "-6.4"),
    ]
    paired = []
    deltas: dict[tuple[str, str], tuple[float, str]] = {}
    for a, b, meaning, paper in contrasts:
        d_acc = acc_of(a) - acc_of(b)
        acc_ci = ci(lambda idx, a=a, b=b: acc_of(a, idx) - acc_of(b, idx))
        d_ece = ece_of(a) - ece_of(b)
        ece_ci = ci(lambda idx, a=a, b=b: ece_of(a, idx) - ece_of(b, idx), 3)
        wins = sum(
            preference_accuracy(x, zeros) > preference_accuracy(y, zeros)
            for x, y in zip(diffs[a], diffs[b], strict=True)
        )
        deltas[(a, b)] = (d_acc, acc_ci)
        paired.append(
            [
                f"{a} - {b}",
                meaning,
                f"{d_acc:+.1f} {acc_ci}",
                f"{d_ece:+.3f} {ece_ci}",
                f"{wins}/{len(args.seeds)}",
                paper,
            ]
        )
    paired_headers = [
        "contrast",
        "what it isolates",
        "Δ accuracy, points [95% CI]",
        "Δ ECE [95% CI]",
        "seeds where Δ acc > 0",
        "paper Δ",
    ]

    def said(a: str, b: str) -> str:
        d, c = deltas[(a, b)]
        return f"{d:+.1f} {c}"

    verdict = (
        f"Direction vs the paper: APO r1 - base {said('RM_APO r1', 'RM_base')} points (paper "
        f"+3.7); at equal training, APO r2 - base r2 {said('RM_APO r2', 'RM_base r2')}; GAIL - "
        f"base {said('RM_GAIL', 'RM_base')} (paper -6.4). Paired CIs that cover 0 are not "
        "resolved at this size. ECE: the bootstrap distribution of ECE sits above its point "
        "estimate (ECE is biased upwards on small samples), so read ECE CIs as spread."
    )
    body = "\n".join(
        [
            table(headers, rows),
            "",
            "Paired differences (the same test pairs and seeds on both sides):",
            "",
            table(paired_headers, paired),
            "",
            f"Setup: RM {rm_ref} (fresh scalar head), policy {policy_ref}; D_P {args.human_pairs} "
            f"human pairs (weight {args.human_weight}), {len(gold)} gold queries x S={S} samples "
            f"= {n_apo} D_APO pairs per set (weight apo_coeff/S = {args.apo_coeff}/{S}); "
            f"{n_test} held-out test pairs; prompts <= {args.max_prompt_chars} chars; RM "
            f"max_length {args.max_length}, batch {args.batch_size}, lr {args.lr}, AdamW with "
            f"linear decay, {args.epochs} epoch(s) in round 1 and {args.round2_epochs} in round 2; "
            f"samples: temperature {args.temperature}, top-p {args.top_p}, <= "
            f"{args.max_new_tokens} new tokens, sample seeds {args.sample_seed} (set 1) and "
            f"{args.sample_seed + 1} (set 2). CIs: percentile bootstrap ({args.bootstrap} "
            "resamples) over test pairs, pooled across seeds (each resample averages the seeds). "
            f"RM training time in this run: {train_seconds:.0f} s.",
            "",
            verdict,
        ]
    )
    report(
        args,
        "APO reward-model reproduction (benchmarks/apo_rm_repro.py)",
        body,
        args.seeds,
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
