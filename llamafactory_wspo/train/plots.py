"""Figures of the plugin stages, beside the loss curves of LLaMA-Factory's ``plot_loss``."""

import json
import os

import torch

from .callbacks import WPO_WEIGHTS_LOG


def plot_wpo_weights(output_dir: str) -> str | None:
    r"""Histograms of the chosen and rejected sequence weights early and late in training (cf. the WPO paper's Fig. 2).

    Reads ``output_dir/wpo_weights.jsonl`` (see :class:`~llamafactory_wspo.train.callbacks.WPOWeightsCallback`)
    and saves ``output_dir/training_wpo_weights.png``; returns its path, or ``None`` without recorded weights.
    """
    import matplotlib.pyplot as plt

    path = os.path.join(output_dir, WPO_WEIGHTS_LOG)
    if not os.path.isfile(path):
        return None

    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]

    if not records:
        return None

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
