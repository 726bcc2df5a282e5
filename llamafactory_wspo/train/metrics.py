"""``PreferenceMetricsMixin``: a trainer's per-step metrics, logged as their mean over steps and ranks."""

from collections import defaultdict
from typing import Literal

import torch
from transformers import Trainer
from typing_extensions import override


class PreferenceMetricsMixin:
    r"""Stores the metrics of every step and logs each one's mean over the steps since the last log and the ranks.

    The arithmetic of LLaMA-Factory's DPO stage (``CustomDPOTrainer.log``): on each rank the stored values of a
    metric are averaged in float32, then the averages are averaged over the ranks with one all-reduce. Every rank
    must store the same metric names. Put the mixin before the trainer class in the bases; the loss computation
    (TRL's ``compute_loss`` or the trainer's own) passes its metrics to :meth:`store_metrics`.
    """

    _MIN_REDUCED = 10  # the all-reduced list is padded to this length, as in LLaMA-Factory

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stored_metrics = defaultdict(lambda: defaultdict(list))

    def store_metrics(self, metrics: dict[str, float], train_eval: Literal["train", "eval"] = "train") -> None:
        for key, value in metrics.items():
            self._stored_metrics[train_eval][key].append(value)

    @override
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        train_eval = "train" if "loss" in logs else "eval"  # `logs` holds either "loss" or "eval_loss"
        stored = self._stored_metrics.pop(train_eval, {})
        device = self.accelerator.device
        means = [torch.tensor(values, dtype=torch.float).to(device).mean().item() for values in stored.values()]
        means += [0.0] * (self._MIN_REDUCED - len(means))
        means = self.accelerator.reduce(torch.tensor(means, dtype=torch.float).to(device), "mean").tolist()
        logs.update(zip(stored, means))
        return Trainer.log(self, logs, *args, **kwargs)  # not the DPO trainers' own `log`
