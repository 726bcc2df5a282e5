"""The loss of packed rows as a mean over the examples of the whole optimiser step.

A packed micro-batch holds a varying number of examples (WSPO's (prompt, response) examples, WPO's pairs). A mean
per micro-batch would weigh an example by how crowded its micro-batch is. Instead, every example of the optimiser
step weighs the same, whatever row, micro-batch or rank it sits in, as transformers weighs tokens with
``num_items_in_batch``: :meth:`PackedStepMixin.get_batch_samples` counts the examples of the step's micro-batches on
every rank, and :meth:`PackedStepMixin.step_mean` turns a micro-batch's per-example losses into its share of the
step's mean, scaled for the trainer's division by the accumulation steps and the ranks' gradient averaging.
"""

import torch
from typing_extensions import override


class PackedStepMixin:
    r"""For a trainer whose ``packed`` attribute says that its rows are packed; ``count_examples(batch)`` says how
    many examples a collated micro-batch holds."""

    packed: bool = False
    examples_in_step: int | None = None

    def count_examples(self, batch: dict[str, torch.Tensor]) -> int:
        raise NotImplementedError

    @override
    def get_batch_samples(self, *args, **kwargs):
        r"""The host's batches of one optimiser step; with packed rows also the number of examples they hold across
        every rank (:meth:`step_mean` divides by it)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(*args, **kwargs)
        if self.packed:
            total = torch.tensor(sum(self.count_examples(batch) for batch in batch_samples), device=self.args.device)
            if self.accelerator.num_processes > 1:
                total = self.accelerator.gather(total).sum()
            self.examples_in_step = int(total.item())

        return batch_samples, num_items_in_batch

    def step_mean(self, losses: torch.Tensor, training: bool) -> torch.Tensor:
        r"""``losses`` (one per example of the micro-batch) as the micro-batch's share of the step's mean in training;
        their mean otherwise (evaluation, or a step not counted)."""
        if training and self.examples_in_step:
            steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
            return losses.sum() * (steps * self.accelerator.num_processes / self.examples_in_step)

        return losses.sum() / max(losses.numel(), 1)
