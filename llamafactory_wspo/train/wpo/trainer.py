"""``CustomWPOTrainer``: LLaMA-Factory's DPO trainer with WPO's pair weights."""

import json
import os
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

import torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer
from llamafactory.train.kto.trainer import CustomKTOTrainer
from llamafactory.train.trainer_utils import nested_detach
from typing_extensions import override

from ...losses import (
    policy_logps_and_alignment,
    response_mask,
    wpo_pair_weight,
    wpo_sequence_weight,
    wpo_unpaired_weights,
)


if TYPE_CHECKING:
    from transformers import PreTrainedModel


WEIGHTS_LOG = "wpo_weights.jsonl"
_AVERAGED_LOSSES = ("ipo", "orpo", "simpo")  # as in the DPO stage: average, not summed, log-probs


class CustomWPOTrainer(CustomDPOTrainer):
    r"""Every ``pref_loss`` of the DPO stage, each pair's term multiplied by its WPO weight.

    The weight comes from the policy's own logits in the forward pass that the loss needs anyway, without
    gradient. With precomputed reference log-probs (``ref_logps`` in the batch) no reference model runs.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alignment = self.finetuning_args.wpo_alignment
        self.weighting = self.finetuning_args.wpo_weighting
        if self.loss_type == "bco_pair" and not hasattr(self, "running"):  # TRL's reward baseline for bco_pair
            from trl.trainer import RunningMoments

            self.running = RunningMoments(self.accelerator)

    @override
    def concatenated_forward(
        self, model: "PreTrainedModel", batch: dict[str, torch.Tensor], is_ref_model: bool = False
    ) -> dict[str, torch.Tensor]:
        if self.finetuning_args.use_ref_model:
            batch = nested_detach(batch, clone=True)

        labels = batch.pop("labels")
        logits = model(**batch, return_dict=True, use_cache=False).logits
        alignment = "none" if is_ref_model else self.alignment
        token_logps, aligned, mask = policy_logps_and_alignment(logits, labels, alignment)
        output = self._sequence_outputs(token_logps, mask)
        if not is_ref_model:
            weights = wpo_sequence_weight(aligned, mask)
            batch_size = labels.size(0) // 2
            output["chosen_weights"], output["rejected_weights"] = weights.split(batch_size, dim=0)
            with torch.no_grad():
                output["chosen_logits"], output["rejected_logits"] = (
                    logits.detach().mean(dim=(1, 2)).float().split(batch_size, dim=0)
                )

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
        ref_logps = batch.pop("ref_logps", None)
        if ref_logps is not None and self.finetuning_args.use_ref_model:
            ref_chosen_logps, ref_rejected_logps = self._precomputed_reference(ref_logps, batch["labels"])
        else:
            ref_chosen_logps, ref_rejected_logps = self.compute_reference_log_probs(model, batch)

        output = self.concatenated_forward(model, batch)
        losses, chosen_rewards, rejected_rewards = self.compute_preference_loss(
            output["chosen_logps"], output["rejected_logps"], ref_chosen_logps, ref_rejected_logps
        )
        weights = wpo_pair_weight(output["chosen_weights"], output["rejected_weights"], self.weighting)
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
        if train_eval == "train":
            record_weights(self, output["chosen_weights"], output["rejected_weights"])

        return losses.mean(), metrics


def record_weights(trainer, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    r"""With ``plot_loss``, append the step's sequence weights (all ranks) to ``output_dir/wpo_weights.jsonl``."""
    if not trainer.finetuning_args.plot_loss:
        return

    chosen = trainer.accelerator.gather_for_metrics(chosen.detach().float())
    rejected = trainer.accelerator.gather_for_metrics(rejected.detach().float())
    if trainer.is_world_process_zero():
        os.makedirs(trainer.args.output_dir, exist_ok=True)
        record = {"step": trainer.state.global_step, "chosen": chosen.tolist(), "rejected": rejected.tolist()}
        with open(os.path.join(trainer.args.output_dir, WEIGHTS_LOG), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class CustomWPOKTOTrainer(CustomKTOTrainer):
    r"""The KTO form of WPO (``pref_loss: kto``): each output's KTO term is weighted by its own ``w(x, y)``.

    Within a batch the weights of the desirable outputs are normalised to sum to 1, and so are those of the
    undesirable outputs; each group keeps the share of the loss it has in stock KTO, so uniform weights give
    exactly the stock KTO loss.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alignment = self.finetuning_args.wpo_alignment
        self._weights: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}

    def _sequence_logps(
        self, model: "PreTrainedModel", batch: dict[str, torch.Tensor], prefix: str, alignment: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = {"input_ids": batch[f"{prefix}input_ids"], "attention_mask": batch[f"{prefix}attention_mask"]}
        logits = model(**inputs, return_dict=True, use_cache=False).logits
        token_logps, aligned, mask = policy_logps_and_alignment(logits, batch[f"{prefix}labels"], alignment)
        logps = token_logps.sum(-1)
        mean_logits = logits.detach().mean(dim=(1, 2)).float()
        return logps, logps / mask.sum(-1).clamp(min=1), mean_logits, wpo_sequence_weight(aligned, mask)

    @override
    def concatenated_forward(self, model: "PreTrainedModel", batch: dict[str, torch.Tensor]):
        logps, logps_avg, logits, weights = self._sequence_logps(model, batch, "", self.alignment)
        with torch.no_grad():
            kl_logps, _, _, _ = self._sequence_logps(model, batch, "kl_", "none")

        tags = batch["kto_tags"]
        return logps[tags], logps[~tags], logits[tags], logits[~tags], kl_logps, logps_avg[tags], weights

    @override
    def compute_reference_log_probs(self, model: "PreTrainedModel", batch: dict[str, torch.Tensor]):
        tags = batch["kto_tags"]
        if "ref_logps" in batch:  # precomputed
            target = (batch["ref_logps"].float() * response_mask(batch["labels"])).sum(-1)
            kl = (batch["kl_ref_logps"].float() * response_mask(batch["kl_labels"])).sum(-1)
            return target[tags], target[~tags], kl

        if self.ref_model is None:
            ref_model, ref_context = model, self.accelerator.unwrap_model(model).disable_adapter()
        else:
            ref_model, ref_context = self.ref_model, nullcontext()

        with torch.no_grad(), ref_context:
            target, _, _, _ = self._sequence_logps(ref_model, batch, "", "none")
            kl, _, _, _ = self._sequence_logps(ref_model, batch, "kl_", "none")

        return target[tags], target[~tags], kl

    @override
    def get_batch_loss_metrics(self, model: "PreTrainedModel", batch: dict[str, torch.Tensor]):
        train_eval = "train" if model.training else "eval"
        reference = self.compute_reference_log_probs(model, batch)
        for key in ("ref_logps", "kl_ref_logps"):
            batch.pop(key, None)

        chosen, rejected, chosen_logits, rejected_logits, kl_logps, chosen_avg, weights = self.concatenated_forward(
            model, batch
        )
        losses, chosen_rewards, rejected_rewards, kl = self.kto_loss(chosen, rejected, kl_logps, *reference)
        tags = batch["kto_tags"]
        normalised = wpo_unpaired_weights(weights, tags)
        # TRL orders the losses desirable first; each group keeps its stock share n_group / n of the loss.
        scale = torch.cat([normalised[tags] * tags.sum(), normalised[~tags] * (~tags).sum()]) / len(tags)
        loss = (scale.to(losses.device) * losses).nansum()
        if self.ftx_gamma > 1e-6 and len(chosen) > 0:
            loss = loss + self.ftx_gamma * (-chosen_avg).nanmean() / len(chosen) * len(tags)

        metrics = {"kl": kl.item()}
        for side, rewards, logps, logits in (
            ("chosen", chosen_rewards, chosen, chosen_logits),
            ("rejected", rejected_rewards, rejected, rejected_logits),
        ):
            if len(rewards) > 0:
                metrics[f"rewards/{side}_sum"] = rewards.nansum().item()
                metrics[f"logps/{side}_sum"] = logps.nansum().item()
                metrics[f"logits/{side}_sum"] = logits.nansum().item()
                metrics[f"count/{side}"] = float(len(rewards))

        self._weights[train_eval].append(self.accelerator.gather_for_metrics(weights.detach().float()))
        if train_eval == "train":
            record_weights(self, weights[tags], weights[~tags])

        return loss, metrics

    @override
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        train_eval = "train" if "loss" in logs else "eval"
        prefix = "eval_" if train_eval == "eval" else ""
        if self._weights[train_eval]:
            weights = torch.cat(self._weights[train_eval])
            logs[f"{prefix}wpo/weight_mean"] = weights.mean().item()
            logs[f"{prefix}wpo/weight_min"] = weights.min().item()
            logs[f"{prefix}wpo/weight_max"] = weights.max().item()
            self._weights[train_eval] = []

        return super().log(logs, *args, **kwargs)


def plot_weights(output_dir: str) -> str | None:
    r"""Histograms of the chosen and rejected sequence weights early and late in training (cf. the WPO paper's Fig. 2)."""
    import matplotlib.pyplot as plt

    path = os.path.join(output_dir, WEIGHTS_LOG)
    if not os.path.isfile(path):
        return None

    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]

    half = max(1, len(records) // 2)
    phases = {"first half of training": records[:half], "second half of training": records[half:] or records[:half]}
    plt.switch_backend("agg")
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (title, part) in zip(axes, phases.items()):
        for side, color in (("chosen", "#1f77b4"), ("rejected", "#d62728")):
            values = torch.tensor([w for record in part for w in record[side]]).clamp(min=1e-30).log10()
            ax.hist(values.numpy(), bins=30, alpha=0.5, color=color, label=f"{side} (n={values.numel()})")

        ax.set_title(title)
        ax.set_xlabel("log10 w(x, y)")
        ax.legend()

    axes[0].set_ylabel("count")
    figure.suptitle(f"WPO sequence weights of {output_dir}")
    figure.tight_layout()
    figure_path = os.path.join(output_dir, "training_wpo_weights.png")
    figure.savefig(figure_path, format="png", dpi=100)
    plt.close(figure)
    return figure_path
