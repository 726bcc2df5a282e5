"""``FiniteLossMixin``: a non-finite loss stops training at once, on every rank, before the optimiser step."""

import torch
from typing_extensions import override


class NonFiniteLossError(RuntimeError):
    pass


class FiniteLossMixin:
    r"""Stops the run with an error naming the step when a training loss is NaN or infinite.

    Without it a NaN loss trains on silently: the logged loss reads 0.0 and the saved model is NaN in every
    tensor. The flag is summed over the ranks (one scalar all-reduce per step), so every rank raises together
    and none is left waiting in a collective; the error comes after the backward pass and before the optimiser
    step, so no parameter is updated from it and ``save_model`` is never reached. Under fp16 mixed precision a
    non-finite loss is left to the gradient scaler, which skips that step as usual. Put the mixin before the
    trainer class in the bases.
    """

    @override
    def training_step(self, model, inputs, *args, **kwargs) -> torch.Tensor:
        loss = super().training_step(model, inputs, *args, **kwargs)
        if self.args.fp16:
            return loss

        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=self.accelerator.device)
        if self.accelerator.reduce(bad, "sum").item() > 0:
            raise NonFiniteLossError(
                f"The training loss is not finite at step {self.state.global_step + 1}: training stops and no model "
                "is saved from this state. Lower `learning_rate`, check `pref_beta` and the data, or resume from the "
                "last checkpoint."
            )

        return loss
