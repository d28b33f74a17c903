"""Trainer efficiency: Sparring's training, sampling and checkpoint I/O vs plain library code.

Four side-by-side comparisons, each on the same model, data and settings, alternating the two
contenders (ours, plain, ours, plain, ...) after one discarded warm-up run of each, and
reporting medians over the repeats and the median of the per-repeat ratios:

* update-adversary: `training.train_reward_model` vs a plain torch loop with the standard
  Bradley-Terry loss (-log sigmoid(r_good - r_bad)), AdamW, same batches and max_length;
  pairs/s (one epoch over the pairs; model re-copied from the same initial weights each run);
* update-policy: `dpo.train_dpo` vs a plain TRL `DPOTrainer` with default settings (only the
  batch size, learning rate, one epoch, `output_dir`, `report_to="none"` and, on a CPU,
  `bf16=False` set, since TRL defaults to bf16 and refuses to start on a CPU without it), and
  the same with TRL's default gradient checkpointing turned off; pairs/s of the whole call
  (dataset tokenisation + training);
* sampling: `generation.generate_transformers` (prompts batched, S samples per call) vs a
  naive loop with one prompt per `model.generate` call (S samples by num_return_sequences)
  and one with one sample per call; tokens/s counts the returned answers re-tokenised;
* checkpoint I/O: the store (`S3Store.upload_tree` + `commit`, `require_committed` +
  `download_tree`) vs raw boto3 `upload_file`/`download_file` per file, against a
  `moto_server` this script starts on 127.0.0.1; MB/s.

Default: tiny-random models (and a synthetic 128 MiB weights file beside the tiny checkpoint
for I/O). `--real`: SmolLM2-135M-Instruct (policy, sampling, I/O of its 540 MB fp32
checkpoint) and all-MiniLM-L6-v2 (RM).

Commands:

    python benchmarks/trainer_efficiency.py                  # tiny-random, ~1 min
    python benchmarks/trainer_efficiency.py --real           # real small models, ~20 min
    python benchmarks/trainer_efficiency.py --quick          # smoke run (the test)
    python benchmarks/trainer_efficiency.py --parts rm dpo --repeats 5
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    MINILM,
    SMOLLM2,
    base_parser,
    log,
    median,
    model_cache,
    report,
    start_moto,
    stop_process,
    table,
)

PARTS = ("rm", "dpo", "gen", "store")
SHORT = {SMOLLM2: "SmolLM2-135M-Instruct", MINILM: "all-MiniLM-L6-v2"}


def short(ref: str) -> str:
    return SHORT.get(ref, ref)


def parse_args() -> Any:
    p = base_parser(__doc__)
    p.add_argument("--real", action="store_true", help="SmolLM2 / MiniLM instead of tiny-random")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--repeats", type=int, default=None, help="timed runs of each contender [3]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rm-pairs", type=int, default=None, help="[64; --real 48]")
    p.add_argument("--dpo-pairs", type=int, default=None, help="[32; --real 8]")
    p.add_argument("--prompts", type=int, default=None, help="sampling prompts [16; --real 8]")
    p.add_argument("--samples", type=int, default=4, help="S per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--big-file-mib", type=int, default=None, help="synthetic file [128]")
    args = p.parse_args()
    if args.quick:
        defaults = {"repeats": 1, "rm_pairs": 16, "dpo_pairs": 4, "prompts": 4, "big_file_mib": 8}
        args.max_new_tokens = min(args.max_new_tokens, 8)
    elif args.real:
        defaults = {"repeats": 3, "rm_pairs": 48, "dpo_pairs": 8, "prompts": 8, "big_file_mib": 0}
    else:
        defaults = {
            "repeats": 3,
            "rm_pairs": 64,
            "dpo_pairs": 32,
            "prompts": 16,
            "big_file_mib": 128,
        }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def alternate(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each contender once to warm up (discarded), then `repeats` rounds in turn.
    Each callable returns its own measured seconds (so set-up outside the timed part is free)."""
    for name, fn in contenders.items():
        log(f"warm-up {name}")
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(repeats):
        for name, fn in contenders.items():
            seconds = fn()
            times[name].append(seconds)
            log(f"repeat {r + 1}/{repeats} {name}: {seconds:.2f} s")
    return times


def rows_for(
    what: str, times: dict[str, list[float]], work: float, unit: str, ours: str
) -> list[list[str]]:
    """Table rows: throughput = work / seconds; ratio = ours / contender per repeat (median)."""
    rows = []
    for name, secs in times.items():
        rates = [work / s for s in secs]
        if name == ours:
            ratio = "1.00 (ours)"
        else:
            per_repeat = [o / s for o, s in zip(secs, times[ours], strict=True)]
            ratio = f"{median(per_repeat):.2f}"  # seconds of contender / seconds of ours
        rows.append(
            [
                what,
                name,
                f"{median(rates):.2f} {unit}",
                " / ".join(f"{r:.2f}" for r in rates),
                f"{median(secs):.2f}",
                ratio,
            ]
        )
    return rows


def main() -> int:
    started = time.time()
    args = parse_args()
    import torch
    import torch.nn.functional as F
    from sparring_trainer.config import APODataSpec, ModelSpec, PreferenceSource, TrainSpec
    from sparring_trainer.data import read_preferences, split_apo
    from sparring_trainer.models import (
        load_causal_lm,
        load_reward_model,
        render_prompt,
        save_checkpoint,
    )

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cache = model_cache()
    policy_ref = SMOLLM2 if args.real else "tiny-random:1"
    rm_ref = MINILM if args.real else "tiny-random:2"
    pairs = read_preferences(PreferenceSource(path="builtin:hh-rlhf-harmless"))
    n_needed = max(args.rm_pairs, args.dpo_pairs, args.prompts)
    split = split_apo(
        pairs,
        APODataSpec(
            human_pairs=n_needed,
            gold_queries=1,
            train_queries=1,
            test_pairs=1,
            test_queries=1,
            max_prompt_chars=300,
        ),
    )
    data = split.human_pairs
    rows: list[list[str]] = []
    notes: list[str] = []
    policy: dict[str, Any] = {}

    def load_policy() -> tuple[Any, Any]:
        if not policy:
            log(f"loading policy {policy_ref}")
            policy["m"], policy["t"] = load_causal_lm(ModelSpec(model=policy_ref), cache)
        return policy["m"], policy["t"]

    # ---- update-adversary: train_reward_model vs a plain torch Bradley-Terry loop ----------------
    if "rm" in args.parts:
        from sparring_trainer.apo_rows import human_reward_pairs
        from sparring_trainer.training import train_reward_model

        init, tok = load_reward_model(ModelSpec(model=rm_ref), cache, seed=args.seed)
        max_length, batch = 256, 8
        wp = human_reward_pairs(tok, data[: args.rm_pairs])

        def ours_rm() -> float:
            model = copy.deepcopy(init)
            t0 = time.perf_counter()
            train_reward_model(
                model,
                tok,
                wp,
                TrainSpec(learning_rate=1e-4, batch_size=batch, max_length=max_length),
                args.seed,
            )
            return time.perf_counter() - t0

        def plain_rm() -> float:
            model = copy.deepcopy(init)
            t0 = time.perf_counter()
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            order = torch.randperm(len(wp), generator=torch.Generator().manual_seed(args.seed))
            for start in range(0, len(wp), batch):
                chunk = [wp[i] for i in order[start : start + batch].tolist()]
                enc = tok(
                    [c.good for c in chunk] + [c.bad for c in chunk],
                    truncation=True,
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                )
                r = model(**enc).logits.squeeze(-1)
                loss = -F.logsigmoid(r[: len(chunk)] - r[len(chunk) :]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            return time.perf_counter() - t0

        times = alternate(
            {"train_reward_model": ours_rm, "plain torch BT loop": plain_rm}, args.repeats
        )
        rows += rows_for(
            f"RM update ({short(rm_ref)}, {len(wp)} pairs, batch {batch})",
            times,
            len(wp),
            "pairs/s",
            "train_reward_model",
        )
        del init

    # ---- update-policy: train_dpo vs plain TRL DPOTrainer ----------------------------------------
    if "dpo" in args.parts:
        from datasets import Dataset
        from sparring_trainer.config import PolicyUpdateSpec
        from sparring_trainer.dpo import train_dpo
        from trl import DPOConfig, DPOTrainer

        base, ptok = load_policy()
        ptok.padding_side = "right"
        batch = 2
        dpo_rows = [
            {"prompt": render_prompt(ptok, p.prompt), "chosen": p.chosen, "rejected": p.rejected}
            for p in data[: args.dpo_pairs]
        ]
        longest = max(len(ptok(r["prompt"] + r["chosen"])["input_ids"]) for r in dpo_rows)
        spec = PolicyUpdateSpec(
            method="dpo", learning_rate=1e-5, batch_size=batch, max_length=max(256, longest + 8)
        )

        def ours_dpo() -> float:
            model, ref = copy.deepcopy(base), copy.deepcopy(base).eval()
            with tempfile.TemporaryDirectory(prefix="bench-dpo-") as work:
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):  # the HF Trainer prints its logs
                    train_dpo(model, ref, ptok, dpo_rows, spec, args.seed, Path(work))
                return time.perf_counter() - t0

        def plain_dpo(gradient_checkpointing: bool | None) -> Callable[[], float]:
            def run() -> float:
                model, ref = copy.deepcopy(base), copy.deepcopy(base).eval()
                extra = (
                    {}
                    if gradient_checkpointing is None
                    else {"gradient_checkpointing": gradient_checkpointing}
                )
                cpu = {} if torch.cuda.is_available() else {"bf16": False}
                with tempfile.TemporaryDirectory(prefix="bench-trl-") as work:
                    t0 = time.perf_counter()
                    config = DPOConfig(
                        output_dir=work,
                        report_to="none",
                        num_train_epochs=1,
                        per_device_train_batch_size=batch,
                        learning_rate=1e-5,
                        seed=args.seed,
                        **cpu,
                        **extra,
                    )
                    trainer = DPOTrainer(
                        model=model,
                        ref_model=ref,
                        args=config,
                        train_dataset=Dataset.from_list(dpo_rows),
                        processing_class=ptok,
                    )
                    with contextlib.redirect_stdout(sys.stderr):
                        trainer.train()
                    return time.perf_counter() - t0

            return run

        times = alternate(
            {
                "train_dpo": ours_dpo,
                "TRL DPOTrainer defaults": plain_dpo(None),
                "TRL defaults, no grad ckpt": plain_dpo(False),
            },
            args.repeats,
        )
        rows += rows_for(
            f"DPO update ({short(policy_ref)}, {len(dpo_rows)} pairs, batch {batch})",
            times,
            len(dpo_rows),
            "pairs/s",
            "train_dpo",
        )
        notes.append(
            "TRL 1.x DPOConfig defaults to gradient_checkpointing=True and bf16=True; train_dpo "
            "passes gradient_checkpointing=False and bf16=False unless the spec asks (the "
            "plain rows set bf16=False, which a CPU requires). Sequences here are shorter than "
            f"max_length ({spec.max_length} ours, 1024 TRL default), so truncation plays no part."
        )

    # ---- sampling: generate_transformers vs a naive generate loop --------------------------------
    if "gen" in args.parts:
        from sparring_trainer.generation import Decoding, generate_transformers

        model, ptok = load_policy()
        prompts = [render_prompt(ptok, p.prompt) for p in data[: args.prompts]]
        S, new = args.samples, args.max_new_tokens
        decoding = Decoding(n=S, max_new_tokens=new, temperature=1.2, top_p=0.95)
        counted: dict[str, int] = {}

        def tokens(texts: list[str]) -> int:
            return sum(len(ptok(t, add_special_tokens=False)["input_ids"]) for t in texts)

        def ours_gen() -> float:
            t0 = time.perf_counter()
            out = generate_transformers(model, ptok, prompts, decoding, 8, args.seed)
            seconds = time.perf_counter() - t0
            counted["ours"] = tokens([a for g in out for a in g])
            return seconds

        def naive(per_call: int) -> Callable[[], float]:
            def run() -> float:
                torch.manual_seed(args.seed)
                ptok.padding_side = "left"
                texts = []
                t0 = time.perf_counter()
                with torch.no_grad():
                    for prompt in prompts:
                        enc = ptok(prompt, return_tensors="pt", add_special_tokens=False)
                        for _ in range(S // per_call):
                            out = model.generate(
                                **enc,
                                do_sample=True,
                                temperature=1.2,
                                top_p=0.95,
                                top_k=0,
                                max_new_tokens=new,
                                num_return_sequences=per_call,
                                pad_token_id=ptok.pad_token_id,
                            )
                            texts += ptok.batch_decode(
                                out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
                            )
                seconds = time.perf_counter() - t0
                counted[f"naive{per_call}"] = tokens([t.strip() for t in texts])
                return seconds

            return run

        names = {
            "generate_transformers (batch 8)": "ours",
            f"naive: 1 prompt/call, {S} samples/call": f"naive{S}",
            "naive: 1 prompt, 1 sample/call": "naive1",
        }
        fns = {
            "generate_transformers (batch 8)": ours_gen,
            f"naive: 1 prompt/call, {S} samples/call": naive(S),
            "naive: 1 prompt, 1 sample/call": naive(1),
        }
        times = alternate(fns, args.repeats)
        what = f"sampling ({short(policy_ref)}, {len(prompts)} prompts x {S}, <= {new} tok)"
        for name, secs in times.items():
            tok_count = counted[names[name]]  # tokens of the last run (same seed each run)
            rates = [tok_count / s for s in secs]
            per_repeat = [
                o / s for o, s in zip(times["generate_transformers (batch 8)"], secs, strict=True)
            ]
            ratio = "1.00 (ours)" if names[name] == "ours" else f"{1 / median(per_repeat):.2f}"
            rows.append(
                [
                    what,
                    name,
                    f"{median(rates):.1f} tok/s",
                    " / ".join(f"{r:.1f}" for r in rates),
                    f"{median(secs):.2f}",
                    ratio,
                ]
            )
        notes.append(
            "Sampling tokens are the returned answers re-tokenised (the same count method for "
            f"every row; tokens of the last run: {counted}). Batched generation keeps decoding "
            "finished sequences as padding until the longest one ends; the naive loops do not."
        )

    # ---- checkpoint I/O: the store vs raw boto3, on moto_server ---------------------------------
    if "store" in args.parts:
        rows += store_rows(args, load_policy, save_checkpoint, notes)

    headers = [
        "what",
        "contender",
        "throughput (median)",
        "per repeat",
        "median s",
        "ratio: contender time / ours",
    ]
    body = "\n".join(
        [
            table(headers, rows),
            "",
            f"Repeats: {args.repeats} timed runs of each contender, alternating, after one "
            "discarded warm-up each. The ratio column is the median over repeats of (contender "
            "seconds / our seconds) for the same repeat: above 1 means ours is faster.",
            *["", *notes],
        ]
    )
    report(
        args, "Trainer efficiency (benchmarks/trainer_efficiency.py)", body, [args.seed], started
    )
    return 0


# ---- store ---------------------------------------------------------------------------------
def store_rows(
    args: Any, load_policy: Callable[[], tuple[Any, Any]], save_checkpoint: Any, notes: list[str]
) -> list[list[str]]:
    import boto3
    from sparring_trainer.document import StorageSpec
    from sparring_trainer.store import commit, open_store, require_committed

    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoints: dict[str, Path] = {}
        model, tok = load_policy()
        ckpt = tmp / "policy-checkpoint"
        save_checkpoint(model, tok, ckpt)
        checkpoints[f"{'SmolLM2' if args.real else 'tiny-random'} checkpoint"] = ckpt
        if args.big_file_mib:
            big = tmp / "synthetic"
            big.mkdir()
            with (big / "model.safetensors").open("wb") as f:
                for _ in range(args.big_file_mib):
                    f.write(os.urandom(1024 * 1024))
            checkpoints[f"synthetic {args.big_file_mib} MiB file"] = big
        proc, url = start_moto(tmp)
        try:
            client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
            client.create_bucket(Bucket="bench")
            store = open_store(StorageSpec(uri="s3://bench/ours", endpoint=url, path_style=True))
            for label, directory in checkpoints.items():
                files = sorted(p for p in directory.rglob("*") if p.is_file())
                size_mb = sum(p.stat().st_size for p in files) / 1e6
                prefix = "run/ckpt/"

                def ours_up(directory: Path = directory, prefix: str = prefix) -> float:
                    store.delete_prefix("run/")
                    t0 = time.perf_counter()
                    store.upload_tree(directory, prefix)
                    commit(store, prefix)
                    return time.perf_counter() - t0

                def raw_up(files: Any = files, directory: Path = directory) -> float:
                    t0 = time.perf_counter()
                    for p in files:
                        key = f"raw/ckpt/{p.relative_to(directory).as_posix()}"
                        client.upload_file(str(p), "bench", key)
                    return time.perf_counter() - t0

                def ours_down(prefix: str = prefix) -> float:
                    out = tmp / "down-ours"
                    shutil.rmtree(out, ignore_errors=True)
                    t0 = time.perf_counter()
                    require_committed(store, prefix)
                    store.download_tree(prefix, out)
                    return time.perf_counter() - t0

                def raw_down() -> float:
                    out = tmp / "down-raw"
                    shutil.rmtree(out, ignore_errors=True)
                    t0 = time.perf_counter()
                    listing = client.list_objects_v2(Bucket="bench", Prefix="raw/ckpt/")
                    for obj in listing.get("Contents", []):
                        target = out / obj["Key"][len("raw/ckpt/") :]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        client.download_file("bench", obj["Key"], str(target))
                    return time.perf_counter() - t0

                what = f"{label} ({len(files)} files, {size_mb:.1f} MB)"
                up = alternate(
                    {"store upload_tree + commit": ours_up, "boto3 upload_file": raw_up},
                    args.repeats,
                )
                rows += rows_for(
                    f"upload {what}", up, size_mb, "MB/s", "store upload_tree + commit"
                )
                down = alternate(
                    {
                        "store require_committed + download_tree": ours_down,
                        "boto3 download_file": raw_down,
                    },
                    args.repeats,
                )
                rows += rows_for(
                    f"download {what}",
                    down,
                    size_mb,
                    "MB/s",
                    "store require_committed + download_tree",
                )
            notes.append(
                "Store I/O: moto_server (in-memory S3) on 127.0.0.1, so this measures client-side "
                "overhead (sha256 of each file for the manifest, the _SUCCESS marker, multipart "
                "thresholds: ours 64 MiB / 16 MiB parts, boto3 default 8 MiB) rather than a "
                "network; both sides share the machine's 2 cores with moto itself."
            )
        finally:
            stop_process(proc)
    return rows


if __name__ == "__main__":
    sys.exit(main())
