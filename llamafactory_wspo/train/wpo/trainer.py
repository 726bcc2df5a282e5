"""``CustomWPOTrainer``: LLaMA-Factory's DPO trainer with WPO's pair weights."""

from typing import TYPE_CHECKING, Literal, Optional

import torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer
from llamafactory.train.trainer_utils import nested_detach
from typing_extensions import override

from ...logps.store import REF_LOGPS
from ...losses import response_mask, wpo_pair_weight, wpo_sequence_weight
from ...scoring import score_tokens
from ..callbacks import WPOWeightsCallback
from ..guards import FiniteLossMixin
from ..metrics import PreferenceMetricsMixin
from ..trainer_utils import prepare_frozen_model


if TYPE_CHECKING:
    from transformers import PreTrainedModel


_AVERAGED_LOSSES = ("ipo", "orpo", "simpo")  # as in the DPO stage: average, not summed, log-probs


class CustomWPOTrainer(FiniteLossMixin, PreferenceMetricsMixin, CustomDPOTrainer):
    r"""Every ``pref_loss`` of the DPO stage, each pair's term multiplied by its WPO weight.

    The weight comes from the policy's own logits in the forward pass that the loss needs anyway, without
    gradient. With precomputed reference log-probs (``REF_LOGPS`` in the batch) no reference model runs; a reference
    model that runs per step is prepared by :func:`~llamafactory_wspo.train.trainer_utils.prepare_frozen_model`.
    """

    def __init__(self, model: "PreTrainedModel", ref_model: Optional["PreTrainedModel"] = None, **kwargs) -> None:
        super().__init__(model=model, ref_model=None, **kwargs)
        if ref_model is not None:  # prepared as the WSPO stage prepares its per-step frozen models
            self.ref_model = prepare_frozen_model(ref_model, self.accelerator)

        self.alignment = self.finetuning_args.wpo_alignment
        self.weighting = self.finetuning_args.wpo_weighting
        if self.loss_type == "bco_pair" and not hasattr(self, "running"):  # TRL's reward baseline for bco_pair
            from trl.trainer import RunningMoments

            self.running = RunningMoments(self.accelerator)

        self.weights_callback = WPOWeightsCallback(self.accelerator) if self.finetuning_args.plot_loss else None
        if self.weights_callback is not None:
            self.add_callback(self.weights_callback)

    @override
    def concatenated_forward(
        self, model: "PreTrainedModel", batch: dict[str, torch.Tensor], is_ref_model: bool = False
    ) -> dict[str, torch.Tensor]:
        if self.finetuning_args.use_ref_model:
            batch = nested_detach(batch, clone=True)

        labels = batch.pop("labels")
        alignment = "none" if is_ref_model else self.alignment
        response_only = self.finetuning_args.response_only_logits
        token_logps, aligned, mask, mean_logits = score_tokens(
            model, {**batch, "labels": labels}, alignment, response_only
        )
        output = self._sequence_outputs(token_logps, mask)
        if not is_ref_model:
            output["weights"] = wpo_sequence_weight(aligned, mask)  # chosen rows, then rejected rows
            batch_size = labels.size(0) // 2
            with torch.no_grad():
                output["chosen_logits"], output["rejected_logits"] = mean_logits.split(batch_size, dim=0)

        return output

    def _sequence_outputs(self, token_logps: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Summed (or, for ipo/orpo/simpo, averaged) log-probs of chosen and rejected, as the DPO stage computes."""
        length = mask.sum(-1)
        logps = token_logps.sum(-1)
        if self.loss_type in _AVERAGED_LOSSES:
            logps = logps / length.clamp(min=1)

        batch_size = logps.size(0) // 2
        chosen_logps, rejected_logps = logps.split(batch_size, dim=0)
        chosen_length, _ = length.split(batch_size, dim=0)
        chosen_avg = chosen_logps if self.loss_type in _AVERAGED_LOSSES else chosen_logps / chosen_length.clamp(min=1)
        return {"chosen_logps": chosen_logps, "rejected_logps": rejected_logps, "chosen_logps_avg": chosen_avg}

    @override
    def compute_preference_loss(
        self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    ):
        if not self.finetuning_args.use_ref_model or self.bco_gemma > 1e-6:
            return super().compute_preference_loss(
                policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
            )

        # The DPO stage calls TRL's `dpo_loss` without `loss_type`, which then always computes the sigmoid loss.
        return self.dpo_loss(
            policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, loss_type=self.loss_type
        )

    def _precomputed_reference(self, ref_logps: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mask = response_mask(labels)
        output = self._sequence_outputs(ref_logps.float() * mask, mask)
        return output["chosen_logps"], output["rejected_logps"]

    @override
    def get_batch_loss_metrics(
        self,
        model: "PreTrainedModel",
        batch: dict[str, torch.Tensor],
        train_eval: Literal["train", "eval"] = "train",
    ) -> tuple[torch.Tensor, dict[str, float]]:
        ref_logps = batch.pop(REF_LOGPS, None)
        if ref_logps is not None and self.finetuning_args.use_ref_model:
            ref_chosen_logps, ref_rejected_logps = self._precomputed_reference(ref_logps, batch["labels"])
        else:
            ref_chosen_logps, ref_rejected_logps = self.compute_reference_log_probs(model, batch)

        output = self.concatenated_forward(model, batch)
        losses, chosen_rewards, rejected_rewards = self.compute_preference_loss(
            output["chosen_logps"], output["rejected_logps"], ref_chosen_logps, ref_rejected_logps
        )
        chosen_weights, rejected_weights = output["weights"].chunk(2)
        weights = wpo_pair_weight(chosen_weights, rejected_weights, self.weighting)
        losses = weights * losses
        sft_loss = -output["chosen_logps_avg"]
        if self.ftx_gamma > 1e-6:
            losses = losses + self.ftx_gamma * sft_loss

        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            f"{prefix}rewards/chosen": chosen_rewards.mean().item(),
            f"{prefix}rewards/rejected": rejected_rewards.mean().item(),
            f"{prefix}rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            f"{prefix}rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            f"{prefix}logps/chosen": output["chosen_logps"].mean().item(),
            f"{prefix}logps/rejected": output["rejected_logps"].mean().item(),
            f"{prefix}logits/chosen": output["chosen_logits"].mean().item(),
            f"{prefix}logits/rejected": output["rejected_logits"].mean().item(),
            f"{prefix}wpo/weight_mean": weights.mean().item(),
            f"{prefix}wpo/weight_min": weights.min().item(),
            f"{prefix}wpo/weight_max": weights.max().item(),
        }
        if train_eval == "train" and self.weights_callback is not None:
            rows = torch.arange(len(output["weights"]), device=output["weights"].device)
            self.weights_callback.add(output["weights"], chosen=rows < len(chosen_weights))

        return losses.mean(), metrics
