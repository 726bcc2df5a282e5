"""``CustomWPOKTOTrainer``: the KTO form of WPO, LLaMA-Factory's KTO trainer with WPO's sequence weights."""

from contextlib import nullcontext
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch
from llamafactory.train.kto.trainer import CustomKTOTrainer
from typing_extensions import override

from ...logps.store import KL_PREFIX, REF_LOGPS
from ...losses import response_mask, wpo_sequence_weight, wpo_unpaired_weights
from ...scoring import score_tokens
from ..callbacks import WPOWeightsCallback
from ..guards import FiniteLossMixin
from ..trainer_utils import prepare_frozen_model


if TYPE_CHECKING:
    from transformers import PreTrainedModel


class KTOOutputs(NamedTuple):
    r"""Per row of a KTO batch, in the batch's order (``kto_tags`` marks the desirable rows)."""

    logps: torch.Tensor  # summed log-probs of the response
    kl_logps: torch.Tensor | None = None  # summed log-probs of the row's KL response (after another prompt)
    # The policy's only:
    logps_avg: torch.Tensor | None = None  # mean log-prob per response token
    logits: torch.Tensor | None = None  # mean logit, for the metrics
    weights: torch.Tensor | None = None  # w(x, y)


class CustomWPOKTOTrainer(FiniteLossMixin, CustomKTOTrainer):
    r"""The KTO form of WPO (``pref_loss: kto``): each output's KTO term is weighted by its own ``w(x, y)``.

    Within a batch the weights of the desirable outputs are normalised to sum to 1, and so are those of the
    undesirable outputs; each group keeps the share of the loss it has in stock KTO, so uniform weights give
    exactly the stock KTO loss. ``concatenated_forward`` and ``compute_reference_log_probs`` return
    :class:`KTOOutputs` in the batch's order, where LLaMA-Factory's KTO trainer returns tuples split by tag.
    """

    def __init__(self, model: "PreTrainedModel", ref_model: Optional["PreTrainedModel"] = None, **kwargs) -> None:
        super().__init__(model=model, ref_model=None, **kwargs)
        if ref_model is not None:  # prepared as the WSPO stage prepares its per-step frozen models
            self.ref_model = prepare_frozen_model(ref_model, self.accelerator)

        self.alignment = self.finetuning_args.wpo_alignment
        self._weights: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}
        self.weights_callback = WPOWeightsCallback(self.accelerator) if self.finetuning_args.plot_loss else None
        if self.weights_callback is not None:
            self.add_callback(self.weights_callback)

    def _forward(
        self, model: "PreTrainedModel", batch: dict[str, torch.Tensor], prefix: str = "", alignment: str = "none"
    ) -> KTOOutputs:
        r"""The outputs of the rows whose columns start with ``prefix`` (``""``: the targets, ``KL_PREFIX``: KL)."""
        inputs = {key: batch[f"{prefix}{key}"] for key in ("input_ids", "attention_mask", "labels")}
        response_only = self.finetuning_args.response_only_logits
        token_logps, aligned, mask, mean_logits = score_tokens(model, inputs, alignment, response_only)
        logps = token_logps.sum(-1)
        return KTOOutputs(
            logps=logps,
            logps_avg=logps / mask.sum(-1).clamp(min=1),
            logits=mean_logits,
            weights=wpo_sequence_weight(aligned, mask),
        )

    @override
    def concatenated_forward(self, model: "PreTrainedModel", batch: dict[str, torch.Tensor]) -> KTOOutputs:
        target = self._forward(model, batch, alignment=self.alignment)
        with torch.no_grad():
            kl = self._forward(model, batch, KL_PREFIX)

        return target._replace(kl_logps=kl.logps)

    @override
    def compute_reference_log_probs(self, model: "PreTrainedModel", batch: dict[str, torch.Tensor]) -> KTOOutputs:
        if REF_LOGPS in batch:  # precomputed
            target = (batch[REF_LOGPS].float() * response_mask(batch["labels"])).sum(-1)
            kl = (batch[KL_PREFIX + REF_LOGPS].float() * response_mask(batch[f"{KL_PREFIX}labels"])).sum(-1)
            return KTOOutputs(logps=target, kl_logps=kl)

        if self.ref_model is None:
            ref_model, ref_context = model, self.accelerator.unwrap_model(model).disable_adapter()
        else:
            ref_model, ref_context = self.ref_model, nullcontext()

        with torch.no_grad(), ref_context:
            target = self._forward(ref_model, batch)
            kl = self._forward(ref_model, batch, KL_PREFIX)

        return KTOOutputs(logps=target.logps, kl_logps=kl.logps)

    def group_kto_loss(
        self, policy: KTOOutputs, reference: KTOOutputs, rows: torch.Tensor, desirable: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""TRL's KTO losses and rewards of the ``rows`` of one group (all desirable or all undesirable), and the KL.

        TRL's ``kto_loss`` takes both groups and concatenates their losses; called with the other group empty,
        it returns this group's alone. Each call gathers the KL estimate across ranks, so every rank makes both.
        """
        empty = policy.logps[:0]
        if desirable:
            losses, rewards, _, kl = self.kto_loss(
                policy.logps[rows], empty, policy.kl_logps, reference.logps[rows], empty, reference.kl_logps
            )
        else:
            losses, _, rewards, kl = self.kto_loss(
                empty, policy.logps[rows], policy.kl_logps, empty, reference.logps[rows], reference.kl_logps
            )

        return losses, rewards, kl

    @override
    def get_batch_loss_metrics(self, model: "PreTrainedModel", batch: dict[str, torch.Tensor]):
        train_eval = "train" if model.training else "eval"
        reference = self.compute_reference_log_probs(model, batch)
        policy = self.concatenated_forward(model, batch)
        tags = batch["kto_tags"]
        chosen_losses, chosen_rewards, kl = self.group_kto_loss(policy, reference, tags, desirable=True)
        rejected_losses, rejected_rewards, _ = self.group_kto_loss(policy, reference, ~tags, desirable=False)
        # Each group's weights sum to 1; the group keeps its stock share n_group / n of the loss.
        normalised = wpo_unpaired_weights(policy.weights, tags)
        chosen_scale = normalised[tags] * tags.sum() / len(tags)
        rejected_scale = normalised[~tags] * (~tags).sum() / len(tags)
        loss = torch.cat([chosen_scale * chosen_losses, rejected_scale * rejected_losses]).nansum()
        num_chosen = int(tags.sum())
        if self.ftx_gamma > 1e-6 and num_chosen > 0:  # rescaled as in LLaMA-Factory's KTO stage
            loss = loss + self.ftx_gamma * (-policy.logps_avg[tags]).nanmean() / num_chosen * len(tags)

        metrics = {"kl": kl.item()}
        for side, rewards, rows in (("chosen", chosen_rewards, tags), ("rejected", rejected_rewards, ~tags)):
            if len(rewards) > 0:
                metrics[f"rewards/{side}_sum"] = rewards.nansum().item()
                metrics[f"logps/{side}_sum"] = policy.logps[rows].nansum().item()
                metrics[f"logits/{side}_sum"] = policy.logits[rows].nansum().item()
                metrics[f"count/{side}"] = float(len(rewards))

        self._weights[train_eval].append(self.accelerator.gather_for_metrics(policy.weights.detach().float()))
        if train_eval == "train" and self.weights_callback is not None:
            self.weights_callback.add(policy.weights, chosen=tags)

        return loss, metrics

    @override
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        r"""LLaMA-Factory's KTO metrics, and the mean, least and largest weight of the outputs since the last log."""
        train_eval = "train" if "loss" in logs else "eval"
        prefix = "eval_" if train_eval == "eval" else ""
        if self._weights[train_eval]:
            weights = torch.cat(self._weights[train_eval])
            logs[f"{prefix}wpo/weight_mean"] = weights.mean().item()
            logs[f"{prefix}wpo/weight_min"] = weights.min().item()
            logs[f"{prefix}wpo/weight_max"] = weights.max().item()
            self._weights[train_eval] = []

        return super().log(logs, *args, **kwargs)
