"""``CustomGRPOTrainer``: TRL's ``GRPOTrainer`` with LLaMA-Factory's optimizer and scheduler choices.

With TRL 0.24 and transformers 5, import this module only after
:func:`llamafactory_wspo.host.compat.fix_trl_availability_flags` (the plugin's stage dispatch calls it).
"""

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from llamafactory.train.trainer_utils import create_custom_optimizer, create_custom_scheduler
from transformers import TrainingArguments
from trl import GRPOConfig, GRPOTrainer


if TYPE_CHECKING:
    import torch
    from transformers import Seq2SeqTrainingArguments

    from ...hparams import GRPOArguments


def build_grpo_config(training_args: "Seq2SeqTrainingArguments", finetuning_args: "GRPOArguments") -> GRPOConfig:
    r"""TRL's ``GRPOConfig`` carrying every training argument LLaMA-Factory parsed, plus the ``grpo_*`` fields.

    Building it runs TRL's own consistency checks (for example that the number of generations divides the
    generation batch), so they fail before any model loads.
    """
    kwargs: dict[str, Any] = {
        field.name: getattr(training_args, field.name)
        for field in fields(TrainingArguments)
        if field.init and hasattr(training_args, field.name)
    }
    kwargs.update(
        remove_unused_columns=False,
        num_generations=finetuning_args.grpo_num_generations,
        max_prompt_length=None,  # LLaMA-Factory's `cutoff_len` already truncated the prompts, template-aware
        max_completion_length=finetuning_args.grpo_max_completion_length,
        temperature=finetuning_args.grpo_temperature,
        top_p=finetuning_args.grpo_top_p,
        beta=finetuning_args.grpo_beta,
    )
    try:
        return GRPOConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(
            f"`stage: grpo`: {exc} Adjust `grpo_num_generations`, `per_device_train_batch_size` or "
            "`gradient_accumulation_steps` (and `per_device_eval_batch_size` when evaluating)."
        ) from None


class CustomGRPOTrainer(GRPOTrainer):
    r"""GRPO with the optimizers and schedulers LLaMA-Factory offers (GaLore, LoRA+, APOLLO, ...)."""

    def __init__(self, finetuning_args: "GRPOArguments", **kwargs) -> None:
        self.finetuning_args = finetuning_args
        super().__init__(**kwargs)

    def create_optimizer(self, *args, **kwargs) -> "torch.optim.Optimizer":
        if self.optimizer is None:
            self.optimizer = create_custom_optimizer(self.model, self.args, self.finetuning_args)

        return super().create_optimizer(*args, **kwargs)

    def create_scheduler(
        self, num_training_steps: int, optimizer: "torch.optim.Optimizer | None" = None
    ) -> "torch.optim.lr_scheduler.LRScheduler":
        create_custom_scheduler(self.args, num_training_steps, optimizer)
        return super().create_scheduler(num_training_steps, optimizer)
