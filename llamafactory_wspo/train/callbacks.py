"""Callbacks of the plugin stages, beside LLaMA-Factory's ``train/callbacks.py``."""

import json
import os
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback
from typing_extensions import override


if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import TrainerControl, TrainerState, TrainingArguments


WPO_WEIGHTS_LOG = "wpo_weights.jsonl"


class WPOWeightsCallback(TrainerCallback):
    r"""Writes the WPO sequence weights of every training step to ``output_dir/wpo_weights.jsonl``.

    The trainer passes each micro-batch's weights to :meth:`add` on every rank, where they are gathered across the
    ranks. At the end of the optimizer step rank 0 appends one line ``{"step": s, "chosen": [...], "rejected":
    [...]}``, where ``s`` counts the optimizer steps before this one (0 for the first). A fresh run starts the file
    anew; a run resumed from a checkpoint keeps only the lines of the steps that the checkpoint holds.
    """

    def __init__(self, accelerator: "Accelerator") -> None:
        self.accelerator = accelerator
        self._step_rows: list[torch.Tensor] = []

    def add(self, weights: torch.Tensor, chosen: torch.Tensor) -> None:
        r"""Gather the ``weights`` of a micro-batch's sequences, and whether each one is chosen, from every rank.

        A collective call: every rank makes it for every training micro-batch.
        """
        rows = torch.stack((weights.detach().float(), chosen.to(weights.device, torch.float)), dim=-1)
        self._step_rows.append(self.accelerator.gather_for_metrics(rows))

    @override
    def on_train_begin(self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs):
        self._step_rows = []
        path = os.path.join(args.output_dir, WPO_WEIGHTS_LOG)
        if not state.is_world_process_zero or not os.path.isfile(path):
            return

        if state.global_step == 0:  # a fresh run: nothing of an earlier run in this folder
            os.remove(path)
            return

        # Resumed from a checkpoint after `global_step` steps: the steps from there on run again.
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if (step := _step_of(line)) is not None and step < state.global_step]

        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines)

    @override
    def on_step_end(self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs):
        if not self._step_rows:
            return

        rows, self._step_rows = torch.cat(self._step_rows), []
        if state.is_world_process_zero:
            chosen = rows[:, 1].bool()
            record = {
                "step": state.global_step - 1,
                "chosen": rows[chosen, 0].tolist(),
                "rejected": rows[~chosen, 0].tolist(),
            }
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, WPO_WEIGHTS_LOG), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> int | None:
    r"""The step of one line of the weights log, or ``None`` for a line cut short (a run killed while writing)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
