"""``CustomWSPOTrainer``: LLaMA-Factory's ``CustomTrainer`` with the WSPO loss."""

from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal, Optional

import torch
from llamafactory.train.pt.trainer import CustomTrainer
from trl.trainer.utils import disable_dropout_in_model
from typing_extensions import override

from ...logps.shift_stats import token_mean
from ...logps.store import REF_LOGPS, WEAK_SHIFT
from ...losses import response_mask, sft_loss, wspo_loss, wspo_token_losses
from ...packing import example_index, per_example_mean, per_example_sum, segment_ids
from ...scoring import TokenScores, score_tokens
from ..guards import FiniteLossMixin
from ..metrics import PreferenceMetricsMixin
from ..packed_step import PackedStepMixin
from ..trainer_utils import prepare_frozen_model
from .targets import WSPO_COLUMNS, pop_weak_batch, project_per_step, projection_metrics, wspo_targets


if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ...hparams import WSPOArguments


class CustomWSPOTrainer(PackedStepMixin, FiniteLossMixin, PreferenceMetricsMixin, CustomTrainer):
    r"""Trains the strong policy to reproduce ``weak_shift / gamma`` as its per-token log-ratio.

    With precomputed columns in the batch, only the policy runs. Otherwise the weak models (and the
    reference model, or the policy with its adapters disabled) run at every step.
    """

    def __init__(
        self,
        finetuning_args: "WSPOArguments",
        weak_base_model: Optional["PreTrainedModel"] = None,
        weak_aligned_model: Optional["PreTrainedModel"] = None,
        ref_model: Optional["PreTrainedModel"] = None,
        storage_dtype: torch.dtype = torch.float32,
        packed: bool = False,
        **kwargs,
    ) -> None:
        disable_dropout_in_model(kwargs["model"])
        super().__init__(finetuning_args=finetuning_args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.gamma = finetuning_args.pref_beta
        self.ftx = finetuning_args.pref_ftx
        self.storage_dtype = storage_dtype
        self.packed = packed
        self.frozen_models = {
            name: prepare_frozen_model(model, self.accelerator)
            for name, model in (
                ("weak_base", weak_base_model),
                ("weak_aligned", weak_aligned_model),
                ("ref", ref_model),
            )
            if model is not None
        }

    def _logps(self, model: "torch.nn.Module", batch: dict[str, torch.Tensor]) -> TokenScores:
        return score_tokens(model, batch, response_only=self.finetuning_args.response_only_logits)

    @torch.no_grad()
    def compute_targets(self, model: "PreTrainedModel", batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        r"""Per-step mode: the same values that the precompute pass stores (cross-tokenizer WSPO: the weak models
        score the weak rendering, and their shift is moved onto the strong tokens)."""
        weak = pop_weak_batch(batch)
        scores, logps = {}, {}
        for name in ("weak_base", "weak_aligned"):
            scores[name] = self._logps(self.frozen_models[name], weak[0] if weak else batch)
            logps[name] = scores[name].logps

        if "ref" in self.frozen_models:
            ref_model, ref_context = self.frozen_models["ref"], nullcontext()
        else:  # LoRA: the reference is the policy with its adapters disabled
            ref_model, ref_context = model, self.accelerator.unwrap_model(model).disable_adapter()

        with ref_context:
            logps["ref"] = self._logps(ref_model, batch).logps

        if weak is None:
            return wspo_targets(logps, self.storage_dtype)

        strong_mask = response_mask(batch["labels"])
        projected = project_per_step(
            logps["weak_base"], logps["weak_aligned"], scores["weak_base"].mask, weak[1], strong_mask
        )
        targets = {REF_LOGPS: logps["ref"], **projected}
        return {name: value.to(self.storage_dtype) for name, value in targets.items()}

    def get_batch_loss_metrics(
        self, model: "PreTrainedModel", batch: dict[str, torch.Tensor], train_eval: Literal["train", "eval"]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        targets = {name: batch.pop(name) for name in WSPO_COLUMNS if name in batch}
        if not targets:
            targets = self.compute_targets(model, batch)

        policy_logps, _, mask, _ = self._logps(model, batch)
        ref_logps = targets[REF_LOGPS].float()
        weak_shift = targets[WEAK_SHIFT].float()
        if self.packed:
            return self._packed_loss_metrics(batch, policy_logps, ref_logps, weak_shift, mask, targets, train_eval)

        fit = wspo_loss(policy_logps, ref_logps, weak_shift, mask, self.gamma)
        losses = fit
        if self.ftx > 1e-6:
            losses = losses + self.ftx * sft_loss(policy_logps, mask)

        num_tokens = mask.sum(-1).clamp(min=1)
        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            f"{prefix}wspo/fit_mse": fit.mean().item(),
            f"{prefix}wspo/weak_shift_mean": token_mean(weak_shift, mask),
            f"{prefix}wspo/weak_logratio": ((weak_shift * mask).sum(-1) / num_tokens).mean().item(),
            f"{prefix}wspo/strong_logratio": (((policy_logps - ref_logps) * mask).sum(-1) / num_tokens).mean().item(),
            f"{prefix}logps/chosen": policy_logps.sum(-1).mean().item(),
            **projection_metrics(targets, prefix),
        }
        return losses.mean(), metrics

    def _packed_loss_metrics(
        self,
        batch: dict[str, torch.Tensor],
        policy_logps: torch.Tensor,
        ref_logps: torch.Tensor,
        weak_shift: torch.Tensor,
        mask: torch.Tensor,
        targets: dict[str, torch.Tensor],
        train_eval: Literal["train", "eval"],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        r"""The same objective on packed rows: each example's token mean, then the mean over examples.

        In training, the mean over the examples of the whole optimiser step
        (:mod:`llamafactory_wspo.train.packed_step`).
        """
        index, count = example_index(mask, segment_ids(batch["position_ids"]) if "position_ids" in batch else None)
        fit = per_example_mean(wspo_token_losses(policy_logps, ref_logps, weak_shift, self.gamma), index, count)
        losses = fit
        if self.ftx > 1e-6:
            losses = losses - self.ftx * per_example_mean(policy_logps, index, count)

        loss = self.step_mean(losses, train_eval == "train")
        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            f"{prefix}wspo/fit_mse": fit.mean().item(),
            f"{prefix}wspo/weak_shift_mean": token_mean(weak_shift, mask),
            f"{prefix}wspo/weak_logratio": per_example_mean(weak_shift, index, count).mean().item(),
            f"{prefix}wspo/strong_logratio": per_example_mean(policy_logps - ref_logps, index, count).mean().item(),
            f"{prefix}logps/chosen": per_example_sum(policy_logps.detach(), index, count).mean().item(),
            f"{prefix}wspo/examples_per_row": count / max(mask.size(0), 1),
            **projection_metrics(targets, prefix),
        }
        return loss, metrics

    def count_examples(self, batch: dict[str, torch.Tensor]) -> int:
        segments = segment_ids(batch["position_ids"]) if "position_ids" in batch else None
        return example_index(response_mask(batch["labels"]), segments)[1]

    @override
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        train_eval = "train" if model.training else "eval"
        loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval)
        self.store_metrics(metrics, train_eval)

        return (loss, None) if return_outputs else loss

    @override
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)

        return loss.detach(), None, None
