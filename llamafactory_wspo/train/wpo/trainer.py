"""``CustomWPOTrainer``: LLaMA-Factory's DPO trainer with WPO's pair weights."""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Literal, Optional

import torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer
from llamafactory.train.trainer_utils import nested_detach
from typing_extensions import override

from ...logps.store import REF_LOGPS
from ...losses import response_mask, wpo_pair_weight, wpo_sequence_weight
from ...packing import example_index, per_example_count, per_example_mean, per_example_sum, segment_ids
from ...scoring import score_tokens
from ..callbacks import WPOWeightsCallback
from ..guards import FiniteLossMixin
from ..metrics import PreferenceMetricsMixin
from ..packed_step import PackedStepMixin
from ..trainer_utils import prepare_frozen_model


if TYPE_CHECKING:
    from transformers import PreTrainedModel


_AVERAGED_LOSSES = ("ipo", "orpo", "simpo")  # as in the DPO stage: average, not summed, log-probs


class CustomWPOTrainer(PackedStepMixin, FiniteLossMixin, PreferenceMetricsMixin, CustomDPOTrainer):
    r"""Every ``pref_loss`` of the DPO stage, each pair's term multiplied by its WPO weight.

    The weight comes from the policy's own logits in the forward pass that the loss needs anyway, without
    gradient. With precomputed reference log-probs (``REF_LOGPS`` in the batch) no reference model runs; a reference
    model that runs per step is prepared by :func:`~llamafactory_wspo.train.trainer_utils.prepare_frozen_model`.

    With ``packed`` the batches are packed pair rows (:mod:`llamafactory_wspo.data.packed_pairs`): the sequences of a
    row (``chosen_1, rejected_1, chosen_2, ...``) are found from the restarts of ``position_ids``, and every sum,
    mean, length and weight is taken per sequence, as without packing. The loss is the mean over the pairs of the
    whole optimiser step (:mod:`llamafactory_wspo.train.packed_step`), as for WSPO's packed examples.
    """

    def __init__(
        self,
        model: "PreTrainedModel",
        ref_model: Optional["PreTrainedModel"] = None,
        packed: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(model=model, ref_model=None, **kwargs)
        self.packed = packed
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
        if self.packed:
            return self._packed_forward(model, {**batch, "labels": labels}, alignment, is_ref_model)

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

    def _packed_forward(
        self, model: "PreTrainedModel", batch: dict[str, torch.Tensor], alignment: str, is_ref_model: bool
    ) -> dict[str, torch.Tensor]:
        r"""The outputs of :meth:`concatenated_forward` for packed pair rows, per sequence in pair order."""
        mask = response_mask(batch["labels"])
        with nullcontext([]) if is_ref_model else _scored_logit_means(model, mask) as logit_means:
            token_logps, aligned, mask, _ = score_tokens(
                model, batch, alignment, self.finetuning_args.response_only_logits
            )

        index, count = _pair_index(mask, batch["position_ids"])
        output = self._pair_outputs(*_pair_order(per_example_sum(token_logps, index, count), index, count))
        if not is_ref_model:
            weights = per_example_mean(aligned.detach(), index, count).exp()
            output["weights"] = torch.cat([weights[0::2], weights[1::2]])  # chosen, then rejected
            means = per_example_mean(logit_means[0], index, count)
            output["chosen_logits"], output["rejected_logits"] = means[0::2], means[1::2]

        return output

    def _sequence_outputs(self, token_logps: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Summed (or, for ipo/orpo/simpo, averaged) log-probs of chosen and rejected, as the DPO stage computes."""
        return self._pair_outputs(token_logps.sum(-1), mask.sum(-1))

    def _pair_outputs(self, logps: torch.Tensor, length: torch.Tensor) -> dict[str, torch.Tensor]:
        r""":meth:`_sequence_outputs` from each sequence's summed log-prob and length (chosen ones, then rejected)."""
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

    def _precomputed_reference(
        self, ref_logps: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        mask = response_mask(labels)
        if self.packed:
            index, count = _pair_index(mask, position_ids)
            sums = per_example_sum(ref_logps.float() * mask, index, count)
            output = self._pair_outputs(*_pair_order(sums, index, count))
        else:
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
            ref_chosen_logps, ref_rejected_logps = self._precomputed_reference(
                ref_logps, batch["labels"], batch.get("position_ids")
            )
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

        return (self.step_mean(losses, train_eval == "train") if self.packed else losses.mean()), metrics

    def count_examples(self, batch: dict[str, torch.Tensor]) -> int:
        r"""The pairs of a packed micro-batch (:class:`~llamafactory_wspo.train.packed_step.PackedStepMixin`)."""
        return _pair_index(response_mask(batch["labels"]), batch["position_ids"])[1] // 2


def _pair_index(mask: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    r"""The sequence of every scored position of packed pair rows, and the number of sequences.

    Every sequence of the rows must hold a scored position (``drop_unscored`` keeps only such pairs), so that
    sequence ``2i`` is pair ``i``'s chosen one and ``2i + 1`` its rejected one. A sequence is at least two tokens
    long (prompt and response); the padding restarts its positions at every token.
    """
    index, count = example_index(mask, segment_ids(position_ids))
    sequences = int(((position_ids[:, :-1] == 0) & (position_ids[:, 1:] == 1)).sum())
    if count != sequences or count % 2:
        raise ValueError(
            f"A packed batch holds {sequences} sequences, {count} of them with a response token: packed pair rows "
            "hold a chosen and a rejected sequence per pair, each with a response token."
        )

    return index, count


def _pair_order(sums: torch.Tensor, index: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-sequence sums and lengths for :meth:`CustomWPOTrainer._pair_outputs`: chosen sequences first, then
    rejected (sequence ``2i`` of a packed batch is pair ``i``'s chosen one, ``2i + 1`` its rejected one)."""
    order = torch.cat([torch.arange(0, count, 2), torch.arange(1, count, 2)]).to(sums.device)
    return sums[order], per_example_count(index, count).to(sums.device)[order]


@contextmanager
def _scored_logit_means(model: "PreTrainedModel", mask: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    r"""The mean logit (over the vocabulary) of every scored position of ``mask``, ``(batch, length - 1)``, from the
    logits that the model's forward returns (full, or the scored positions alone: :mod:`llamafactory_wspo.scoring`).

    For the ``logits/*`` metrics, which the unpacked path takes per row from ``score_tokens``.
    """
    from accelerate.utils import extract_model_from_parallel

    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        logits = output.logits.detach()
        if logits.dim() == 3 and logits.shape[:2] == (mask.size(0), mask.size(1) + 1):
            logits = logits[:, :-1][mask]
        else:  # the scored positions alone, in the order of `mask.nonzero()`
            logits = logits.reshape(-1, logits.size(-1))

        means = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
        captured.append(means.masked_scatter(mask.to(logits.device), logits.float().mean(-1)))

    handle = extract_model_from_parallel(model).register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()
