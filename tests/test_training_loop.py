"""The training loops of `training.py` (`_optimise`, the encoders, the RM, SFT and RRHF losses)
pinned by what they compute, so that the mutation gate (scripts/mutation.py) catches any change
to them.

`_optimise` runs here on a hand-made two-parameter module whose loss the test chooses: with a
constant gradient g, Adam's step is exactly lr * g / (|g| + eps), so the parameters show the
learning rate of each step; the gradients left on the parameters show the clipping. The
encoders and losses run on the tiny random models (one process: `ranks()` is the 1-rank world).
"""

from __future__ import annotations

import copy
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sparring_trainer.config import ModelSpec, TrainSpec
from sparring_trainer.losses import rrhf_loss, weighted_rank_loss
from sparring_trainer.models import load_causal_lm, load_reward_model, tiny_tokenizer
from sparring_trainer.training import (
    IGNORE,
    RankedGroup,
    WeightedPair,
    _optimise,
    encode_for_lm,
    encode_for_reward,
    rewards_of,
    sequence_logprobs,
    train_reward_model,
    train_rrhf,
    train_sft,
)


# ---- _optimise on a hand-made module ------------------------------------------------------
class Toy(torch.nn.Module):
    """Two parameters and nothing else; `device` as a transformers model has it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        self.b = torch.nn.Parameter(torch.tensor([2.0]))

    @property
    def device(self) -> torch.device:
        return self.a.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a @ x


class Recorder:
    """A BatchLoss whose loss is `grad(call, rows) . a` (+ `b` on the calls `b_on` names), and
    which records what the loop hands it: the rows, the parameters and the gradients left from
    the step before (the loop resets them only after asking for the loss)."""

    def __init__(
        self,
        grad: Callable[[int, list[Any]], list[float]] = lambda i, rows: [0.5, 0.5],
        units: Callable[[list[Any]], float] = lambda rows: 1.0,
        b_on: tuple[int, ...] = (),
    ) -> None:
        self.grad, self.units, self.b_on = grad, units, b_on
        self.rows: list[list[Any]] = []
        self.a: list[list[float]] = []
        self.b: list[float] = []
        self.grads: list[list[float] | None] = []
        self.losses: list[float] = []
        self.dtypes: list[torch.dtype] = []
        self.rand: list[float] = []
        self.third: list[float] = []  # a . [1/3, 0] through forward: 1/3 unless in bf16

    def __call__(self, net: Any, rows: list[Any]) -> tuple[torch.Tensor, float, dict[str, float]]:
        i = len(self.rows)
        self.rows.append(list(rows))
        self.a.append(net.a.tolist())
        self.b.append(net.b.item())
        self.grads.append(None if net.a.grad is None else net.a.grad.tolist())
        self.dtypes.append((net.a[None] @ net.a[:, None]).dtype)  # a matmul shows autocast
        self.rand.append(torch.rand(()).item())
        self.third.append(net(torch.tensor([1 / 3, 0.0])).item())
        loss = (torch.tensor(self.grad(i, rows)) * net.a).sum()
        if i in self.b_on:
            loss = loss + net.b.sum()
        self.losses.append(loss.item())
        return loss, self.units(rows), {"first": float(rows[0])}


def spec(**kw: Any) -> TrainSpec:
    return TrainSpec(**({"learning_rate": 0.1, "batch_size": 1, "max_length": 64} | kw))


def shuffled_batches(n: int, batch: int, seed: int, steps: int) -> list[list[int]]:
    """Each epoch a fresh shuffle of the items by the one seeded RNG, cut into batches."""
    rng, out = random.Random(seed), []
    while len(out) < steps:
        order = list(range(n))
        rng.shuffle(order)
        out += [order[s : s + batch] for s in range(0, n, batch)]
    return out[:steps]


def test_no_items_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^no training examples for this round$"):
        _optimise(Toy(), [], spec(), 0, Recorder(), None, "toy")


@pytest.mark.parametrize(
    ("epochs", "max_steps", "steps"),
    [(1, 0, 3), (2, 0, 6), (2, 4, 4), (2, 10, 6)],  # ceil(5 / 2) = 3 steps an epoch
)
def test_steps_batches_and_progress(epochs: int, max_steps: int, steps: int) -> None:
    rec, seen = Recorder(), []
    out = _optimise(
        Toy(), list(range(5)), spec(batch_size=2, epochs=epochs, max_steps=max_steps), 7,
        rec, lambda step, total: seen.append((step, total)), "toy",
    )  # fmt: skip
    assert rec.rows == shuffled_batches(5, 2, 7, steps)
    assert seen == [(s, steps) for s in range(1, steps + 1)]
    assert out["train_steps"] == float(steps)


@pytest.mark.parametrize(("max_steps", "total"), [(0, 6), (4, 4)])
def test_learning_rate_decays_linearly_to_zero_over_the_steps_taken(
    max_steps: int, total: int
) -> None:
    # A constant gradient 0.5: each step moves `a` by exactly that step's learning rate, which
    # falls linearly from 0.1 to 0 over the total steps (capped by max_steps); no weight decay
    # (that would also pull a = [1, -1] towards 0).
    model, rec = Toy(), Recorder()
    _optimise(model, [0, 1, 2], spec(epochs=2, max_steps=max_steps), 0, rec, None, "toy")
    path = [*rec.a, model.a.tolist()]
    moves = [(path[s][0] - path[s + 1][0], path[s + 1][1] - path[s][1]) for s in range(total)]
    for s, (down, up) in enumerate(moves):
        lr = 0.1 * (1 - s / total)
        assert down == pytest.approx(lr, abs=1e-6) and up == pytest.approx(-lr, abs=1e-6), s


def test_gradients_are_clipped_to_norm_one_and_not_rescaled_in_one_process() -> None:
    # The gradient of step 1 has norm 5 (clipped to 1), that of step 2 norm 0.5 (kept). The
    # loss counts 3 units: in one process its mean needs no rescaling.
    grads = [[3.0, 4.0], [0.3, 0.4]]
    model, rec = Toy(), Recorder(grad=lambda i, rows: grads[i], units=lambda rows: 3.0)
    # (FSDP asked for in one process: nothing to shard, the plain loop runs.)
    _optimise(model, [0, 1], spec(parallelism="fsdp"), 0, rec, None, "toy")
    left = [*rec.grads[1:], model.a.grad.tolist()]
    assert left == [pytest.approx([0.6, 0.8]), pytest.approx([0.3, 0.4])]


def test_a_parameter_without_gradient_in_a_step_is_not_moved_by_it() -> None:
    # `b` is in the loss of the first step only: the gradients are reset to None, not zero, so
    # AdamW skips `b` afterwards instead of moving it on its momentum.
    model, rec = Toy(), Recorder(b_on=(0,))
    _optimise(model, [0, 1, 2], spec(), 0, rec, None, "toy")
    assert rec.b[0] == 2.0 and rec.b[1] == pytest.approx(1.9)
    assert rec.b[2] == rec.b[1] and model.b.item() == rec.b[1]


def test_reported_metrics_are_the_mean_over_steps_of_each_steps_mean() -> None:
    # Batches of 2 and 1 rows with 2 units a row: each step reports its own loss and stats
    # (in one process the unit-weighted mean over ranks is that step's), averaged over steps.
    rec = Recorder(grad=lambda i, rows: [sum(rows), -1.0], units=lambda rows: 2.0 * len(rows))
    out = _optimise(Toy(), [3, 5, 11], spec(batch_size=2), 1, rec, None, "toy")
    assert len(rec.losses) == 2 and rec.losses[0] != rec.losses[1]
    assert out == {
        "train_loss": pytest.approx(sum(rec.losses) / 2),
        "train_first": pytest.approx((rec.rows[0][0] + rec.rows[1][0]) / 2),
        "train_steps": 2.0,
    }


def traced(train: Callable[[], dict[str, float]]) -> tuple[dict[str, float], list[str]]:
    """`train()` run inside a phase's curve folder: its metrics and the runs it wrote."""
    from sparring_trainer import tracking

    with tempfile.TemporaryDirectory() as folder, tracking.phase_log(Path(folder)):
        out = train()
        return out, sorted(p.name for p in Path(folder).iterdir())


def _curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of one TensorBoard run, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_every_step_writes_its_loss_rate_norm_and_stats_to_tensorboard(tmp_path: Path) -> None:
    from sparring_trainer import tracking

    grads = [[3.0, 4.0], [0.3, 0.4]]  # norms 5 and 0.5
    rec = Recorder(grad=lambda i, rows: grads[i], units=lambda rows: 2.0)
    with tracking.phase_log(tmp_path):
        _optimise(Toy(), [7, 9], spec(), 0, rec, None, "toy")
        _optimise(Toy(), [7], spec(), 0, Recorder(), None, "toy")  # a second run, its own folder
    curves = _curves(tmp_path / "toy")
    assert curves["train/loss"] == [(1, pytest.approx(rec.losses[0])),
                                    (2, pytest.approx(rec.losses[1]))]  # fmt: skip
    assert curves["train/learning_rate"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.05))]
    assert curves["train/grad_norm"] == [(1, pytest.approx(5.0)), (2, pytest.approx(0.5))]
    assert curves["train/first"] == [(1, rec.rows[0][0]), (2, rec.rows[1][0])]
    assert [s for s, v in curves["train/rows_per_second"] if v > 0] == [1, 2]
    assert [s for s, _ in _curves(tmp_path / "toy-2")["train/loss"]] == [1]
    # Outside a phase, nothing is written anywhere.
    assert tracking.run_dir("toy") is None


@pytest.fixture
def fp16_by_default() -> Any:
    """CPU autocast defaulting to float16 (as CUDA's does): the loop must ask for bfloat16."""
    before = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)
    yield
    torch.set_autocast_dtype("cpu", before)


@pytest.mark.parametrize("bf16", [False, True])
def test_seeded_torch_rng_and_bf16_autocast(bf16: bool, fp16_by_default: Any) -> None:
    rec = Recorder()
    _optimise(Toy(), [0], spec(bf16=bf16), 5, rec, None, "toy")
    assert rec.rand[0] == torch.rand((), generator=torch.Generator().manual_seed(5)).item()
    assert rec.dtypes == [torch.bfloat16 if bf16 else torch.float32]


def test_accelerates_own_mixed_precision_setting_is_ignored(monkeypatch: Any) -> None:
    # `accelerate config` (or its environment variable) asking for bf16 must not change the
    # loop, whose precision is spec.bf16 alone. accelerate keeps its state per process: the
    # test starts and leaves it fresh.
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        rec = Recorder()
        _optimise(Toy(), [0], spec(), 0, rec, None, "toy")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert rec.third == [pytest.approx(1 / 3, abs=1e-7)]  # bf16 would give 0.33398


def test_a_non_finite_loss_stops_training_naming_the_step() -> None:
    rec = Recorder(grad=lambda i, rows: [0.5, float("nan") if i == 1 else 0.5])
    with pytest.raises(AssertionError, match="non-finite loss at step 1: nan"):
        _optimise(Toy(), [0, 1, 2], spec(), 0, rec, None, "toy")


# ---- encoders and log-probs on the tiny random models -------------------------------------
@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    return load_causal_lm(ModelSpec(model="tiny-random:1"), Path(tempfile.mkdtemp()))


@pytest.fixture(scope="module")
def rm() -> tuple[Any, Any]:
    return load_reward_model(ModelSpec(model="tiny-random:2"), Path(tempfile.mkdtemp()))


def ids(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_reward_encoding_pads_right_and_keeps_the_end_of_long_texts(rm: tuple[Any, Any]) -> None:
    _, tok = rm
    short, long = "Hi", "one two three four five six seven eight nine ten eleven"
    assert len(ids(tok, long)) > 16 > len(ids(tok, short))
    enc = encode_for_reward(tok, [short, long], 16, "cpu")
    n = len(ids(tok, short))
    assert enc["input_ids"].tolist() == [
        ids(tok, short) + [tok.pad_token_id] * (16 - n),
        ids(tok, long)[-16:],  # truncated from the left: the answer is at the end
    ]
    assert enc["attention_mask"].tolist() == [[1] * n + [0] * (16 - n), [1] * 16]
    assert encode_for_reward(tok, [short], 16, "meta")["input_ids"].device.type == "meta"


def test_lm_encoding_masks_the_prompt_and_truncates_it_first() -> None:
    tok = tiny_tokenizer()
    tok.add_bos_token = True  # as Llama's: the rows must still get no BOS from the tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompts = ["Hello there", "one two three four five six seven eight", "x"]
    responses = ["General", "nine ten", "a b c d e f g h i j k l m n o p q r"]
    (p1, p2, _), (r1, r2, r3) = [[ids(tok, t) for t in texts] for texts in (prompts, responses)]
    assert len(p2) + len(r2) + 1 > 16 and len(r3) > 16
    enc = encode_for_lm(tok, prompts, responses, 16, "cpu")
    keep = 16 - len(r2) - 1  # the prompt loses tokens from the left to fit
    # An over-long response keeps its first 15 tokens and the EOS, and no prompt at all.
    rows = [(p1, [*r1, eos]), (p2[-keep:], [*r2, eos]), ([], [*r3[:15], eos])]
    rows = [(p, r, 16 - len(p) - len(r)) for p, r in rows]  # right padding to the longest
    assert enc["input_ids"].tolist() == [p + r + [pad] * n for p, r, n in rows]
    assert enc["attention_mask"].tolist() == [[1] * (len(p) + len(r)) + [0] * n for p, r, n in rows]
    assert enc["labels"].tolist() == [[IGNORE] * len(p) + r + [IGNORE] * n for p, r, n in rows]
    assert {v.dtype for v in enc.values()} == {torch.long}
    short = encode_for_lm(tok, ["Hello there"], ["General"], 16, "meta")
    assert short["input_ids"].shape == (1, len(p1) + len(r1) + 1)
    assert {v.device.type for v in short.values()} == {"meta"}
    with pytest.raises(ValueError):  # a prompt without its response is a caller's bug
        encode_for_lm(tok, ["a", "b"], ["c"], 16, "cpu")


@torch.no_grad()
def test_sequence_logprobs_sum_the_labelled_tokens_log_softmax(lm: tuple[Any, Any]) -> None:
    model, _ = lm
    # Left padding (so the attention mask matters) and a labelled token 0 (the pad id).
    input_ids = torch.tensor([[0, 0, 5, 9, 0, 7], [4, 8, 15, 16, 23, 42]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 9, 0, 7], [IGNORE, 8, 15, IGNORE, 23, 42]])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    logp, count = sequence_logprobs(model, batch)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    by_hand = [
        sum(logits[i, t - 1].log_softmax(-1)[labels[i, t]].item() for t in range(1, 6)
            if labels[i, t] != IGNORE)
        for i in range(2)
    ]  # fmt: skip
    assert logp.tolist() == pytest.approx(by_hand, abs=1e-5)
    assert count.tolist() == [3, 4]


@torch.no_grad()
def test_rewards_are_one_score_per_text(rm: tuple[Any, Any]) -> None:
    model, tok = rm
    enc = encode_for_reward(tok, ["Hi", "Hello there"], 16, "cpu")
    scores = rewards_of(model, enc)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    alone = [
        model(**encode_for_reward(tok, [t], 16, "cpu")).logits.item() for t in ["Hi", "Hello there"]
    ]
    assert scores.tolist() == pytest.approx(alone, abs=1e-5)


# ---- the three methods' losses: one step over one batch, reported as train_loss -----------
def spec16(**kw: Any) -> TrainSpec:
    """One step over one batch of everything, rows of at most 16 tokens."""
    return TrainSpec(**({"learning_rate": 1e-3, "max_length": 16, "batch_size": 8} | kw))


@torch.no_grad()
def lm_logp(model: Any, tok: Any, prompt: str, response: str) -> tuple[float, int]:
    """One row alone: its summed response log-prob (response + EOS) and token count."""
    logp, count = sequence_logprobs(model, encode_for_lm(tok, [prompt], [response], 16, "cpu"))
    return logp.item(), int(count.item())


def test_reward_model_loss_and_accuracy(rm: tuple[Any, Any]) -> None:
    model, tok = copy.deepcopy(rm[0]), rm[1]
    long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    pairs = [
        WeightedPair("Hi there", "Go away", 1.0, "human"),
        WeightedPair("No", long, 0.5, "apo"),  # longer than max_length: its end is scored
        WeightedPair("The sky is made of cheese", "The sky is blue", 2.0, "human"),
        WeightedPair("Same", "Same", 1.0, "human"),  # a tie is not ranked right
    ]
    with torch.no_grad():
        r = {t: rewards_of(model, encode_for_reward(tok, [t], 16, "cpu")).item()
             for p in pairs for t in (p.good, p.bad)}  # fmt: skip
    good = torch.tensor([r[p.good] for p in pairs])
    bad = torch.tensor([r[p.bad] for p in pairs])
    loss = weighted_rank_loss(good, bad, torch.tensor([p.weight for p in pairs])).item()
    assert (good > bad).tolist() == [True, True, False, False]  # the untrained model's ranking
    seen: list[tuple[int, int]] = []
    out, runs = traced(
        lambda: train_reward_model(model, tok, pairs, spec16(), 0, lambda *a: seen.append(a))
    )
    assert runs == ["reward-model"]
    assert out == {
        "train_loss": pytest.approx(loss, abs=1e-5),
        "train_accuracy": 0.5,
        "train_steps": 1.0,
    }
    assert seen == [(1, 1)]


def test_sft_loss_is_the_token_mean_nll_with_or_without_checkpointing(
    lm: tuple[Any, Any],
) -> None:
    tok = lm[1]
    examples = [("Tell me a joke", "No"), ("Hi", "Hello to you too, my friend, how are you")]
    rows = [lm_logp(lm[0], tok, p, r) for p, r in examples]
    by_hand = -sum(lp for lp, _ in rows) / sum(n for _, n in rows)  # not a mean of row means
    plain, checkpointed, seen = copy.deepcopy(lm[0]), copy.deepcopy(lm[0]), []
    out, runs = traced(
        lambda: train_sft(plain, tok, examples, spec16(), 0, lambda *a: seen.append(a))
    )
    assert runs == ["sft"]
    assert out == {"train_loss": pytest.approx(by_hand, abs=1e-5), "train_steps": 1.0}
    assert seen == [(1, 1)]
    # Activation checkpointing recomputes the same forward: the same loss and step. It is the
    # non-reentrant variant (the reentrant one breaks DDP; in one process both compute alike).
    again = train_sft(checkpointed, tok, examples, spec16(gradient_checkpointing=True), 0)
    assert again == out
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    layer = checkpointed.model.layers[0]
    assert layer.gradient_checkpointing
    assert layer._gradient_checkpointing_func.keywords == {"use_reentrant": False}


def test_sft_loss_of_an_empty_answer(lm: tuple[Any, Any]) -> None:
    # An empty answer is its EOS alone: one token to predict after a prompt, none without one
    # (nothing before the EOS to predict it from): the loss is then 0, not 0 / 0.
    model, tok = lm
    (eos_logp, count), sft = lm_logp(model, tok, "Hi", ""), spec16()
    assert count == 1
    out = train_sft(copy.deepcopy(model), tok, [("Hi", "")], sft, 0)
    assert out["train_loss"] == pytest.approx(-eos_logp, abs=1e-5)
    assert train_sft(copy.deepcopy(model), tok, [("", "")], sft, 0)["train_loss"] == 0.0


def test_rrhf_loss_is_the_mean_over_groups(lm: tuple[Any, Any]) -> None:
    model, tok = copy.deepcopy(lm[0]), lm[1]
    groups = [  # of 2, 3 and 2 answers, in one batch; the best of the last is empty (its EOS)
        RankedGroup("Tell me a joke", ("No", "Why did the chicken cross the road"), (0.1, 0.7)),
        RankedGroup("Hi", ("Hello", "Go away now", "Hi, how are you"), (0.5, -1.0, 0.2)),
        RankedGroup("Say nothing", ("Something", ""), (-0.5, 0.5)),
    ]
    by_hand = []
    for g in groups:
        rows = [lm_logp(model, tok, g.prompt, r) for r in g.responses]
        mean = torch.tensor([lp / n for lp, n in rows])  # length-normalised log-probs
        rewards = torch.tensor(g.rewards)
        best = int(rewards.argmax())
        by_hand.append(rrhf_loss(mean, rewards, -mean[best], 0.5).item())
    seen: list[tuple[int, int]] = []
    out, runs = traced(
        lambda: train_rrhf(model, tok, groups, spec16(), 0.5, 0, lambda *a: seen.append(a))
    )
    assert runs == ["rrhf"]
    assert out == {"train_loss": pytest.approx(sum(by_hand) / 3, abs=1e-5), "train_steps": 1.0}
    assert seen == [(1, 1)]


def test_token_rate_counts_what_the_forward_passes_are_given() -> None:
    from sparring_trainer.tracking import TokenRate

    class Echo(torch.nn.Module):
        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
        ) -> torch.Tensor:
            return input_ids

    model = Echo()
    rate = TokenRate(model)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # 5 real tokens, 3 of padding
    model(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=mask)
    model(torch.zeros(3, 2, dtype=torch.long))  # no mask: every id counts
    tokens, per_second = rate.take()
    assert tokens == 5 + 6 and per_second > 0
    assert rate.take()[0] == 0  # counted since the last take only
    rate.close()
    model(torch.zeros(1, 9, dtype=torch.long))
    assert rate.take()[0] == 0  # the hook is gone
