"""Policy update by DPO, through TRL's DPOTrainer (best vs worst sample by RM score)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from sparring_trainer import tracking
from sparring_trainer.config import PolicyUpdateSpec
from sparring_trainer.distributed import ranks

ProgressFn = Callable[[int, int], None]


class _Progress(TrainerCallback):
    """Forwards the HF Trainer's step counter to the phase's progress reporter."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.progress(int(state.global_step), int(state.max_steps))


class _ToSinks(TrainerCallback):
    """The Trainer's per-step logs into the game's MLflow run and the phase's W&B run
    (transformers' own MLflow and W&B callbacks would open runs of their own)."""

    def __init__(self, sinks: list[tracking.Sink], run: str) -> None:
        self.sinks, self.run = sinks, run

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        if numbers and state.is_world_process_zero:
            for sink in self.sinks:
                sink.log(int(state.global_step), numbers, f"{sink.prefix}{self.run}/")


class _TokenRate(TrainerCallback):
    """Adds the step's tokens per second (`tracking.TokenRate`) to the Trainer's per-step
    logs, before the TensorBoard and MLflow callbacks write them."""

    def __init__(self, model: Any) -> None:
        self.rate = tracking.TokenRate(model)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if logs is not None and "loss" in logs:  # a training step's log, not the final summary
            logs["tokens_per_second"] = self.rate.take()[1]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.rate.take()  # the first step's rate starts here, not at the Trainer's set-up

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.rate.close()


def train_dpo(
    model: PreTrainedModel,
    ref_model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, str]],
    spec: PolicyUpdateSpec,
    seed: int,
    work_dir: Path,
    progress: ProgressFn | None = None,
) -> dict[str, float]:
    """Trains `model` in place on {prompt, chosen, rejected} text rows; returns metrics.

    `prompt` is already rendered with the chat template, so rows are in TRL's "standard"
    (non-conversational) format and TRL appends EOS to the answers. The reference model is
    the policy as it entered this round (iterative DPO); None for a LoRA-trained `model`, whose
    entering adapter TRL copies into a frozen "ref" adapter.
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("no DPO pairs: every query's samples tied under the reward model")
    here = ranks()
    steps = math.ceil(len(pairs) / spec.batch_size) * spec.epochs
    if spec.max_steps:
        steps = min(steps, spec.max_steps)
    args = DPOConfig(
        output_dir=str(work_dir),
        beta=spec.beta,
        learning_rate=spec.learning_rate,
        # spec.batch_size is the global batch; under torchrun TRL's accelerate splits each
        # global batch of the seeded order across ranks and DDP averages their gradients.
        # TRL's loss is a mean over pairs, so equal per-rank batches keep it exact; a last batch
        # that does not fill every rank is topped up by accelerate with pairs from the start.
        per_device_train_batch_size=here.per_rank(spec.batch_size),
        # Without it, on a machine with no GPU, each torchrun rank would train alone.
        use_cpu=model.device.type == "cpu",
        num_train_epochs=spec.epochs,
        max_steps=steps,
        max_length=spec.max_length,
        lr_scheduler_type="linear",
        gradient_checkpointing=spec.gradient_checkpointing,
        bf16=spec.bf16,
        seed=seed,
        data_seed=seed,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    logging.getLogger("transformers.trainer").setLevel(logging.WARNING)
    callbacks: list[Any] = [_Progress(progress)] if progress else []
    curves = tracking.run_dir("dpo")
    if curves is not None:  # transformers' own TensorBoard integration, into the phase's folder
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(_TokenRate(model))  # first: the writers below see its value
        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(curves))))
        sinks = tracking.sinks()
        if sinks:
            callbacks.append(_ToSinks(sinks, curves.name))
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(list(pairs)),
        processing_class=tokenizer,
        callbacks=callbacks or None,
    )
    result = trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics: dict[str, float] = {
        "train_loss": float(result.training_loss),
        "train_steps": float(trainer.state.global_step),
        "train_pairs": float(len(pairs)),
    }
    if history:
        last = history[-1]
        for key in ("rewards/accuracies", "rewards/margins"):
            if key in last:
                metrics["train_" + key.split("/")[1]] = float(last[key])
    if "ref" in getattr(model, "peft_config", {}):
        # TRL's frozen copy of the entering adapter: the reference of this round only. Left in,
        # it would be saved (and uploaded) beside the trained adapter.
        model.delete_adapter("ref")
    model.eval()
    return metrics
