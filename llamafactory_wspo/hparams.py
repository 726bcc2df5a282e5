"""Arguments of the plugin stages, parsed by LLaMA-Factory's own ``HfArgumentParser``.

:class:`PluginArguments` is a mixin: :mod:`llamafactory_wspo.integration` combines it with
LLaMA-Factory's ``FinetuningArguments`` so that YAML keys and ``--key value`` flags both work.
The WSPO hyper-parameter γ is LLaMA-Factory's ``pref_beta`` and the optional SFT term is
``pref_ftx``, so the authors' recipes run unchanged; WPO reuses the DPO stage's arguments
(``pref_loss``, ``pref_beta``, ``pref_ftx``, ``dpo_label_smoothing``, ``ref_model``).
"""

import os
from dataclasses import dataclass, field
from typing import Literal


PLUGIN_STAGES = ("wspo", "wpo")
WSPO_RESPONSES = ("chosen", "rejected", "both")
WPO_ALIGNMENTS = ("sampled", "greedy", "none")
WPO_WEIGHTINGS = ("pair", "chosen", "rejected")
# Preference losses whose value is a sum of per-pair terms, so that each pair can carry its own weight.
# (TRL's `aot`/`aot_pair` sort log-ratios across the batch, `kto_pair` no longer exists in TRL, and `discopop`
# needs a TRL-only `discopop_tau` argument.)
WPO_PREF_LOSSES = (
    "sigmoid", "hinge", "ipo", "orpo", "simpo", "robust", "exo_pair", "nca_pair", "sppo_hard", "bco_pair",
    "apo_zero", "apo_down",
)  # fmt: skip


@dataclass
class WSPOArguments:
    r"""Arguments of the ``wspo`` stage (Weak-to-Strong Preference Optimization)."""

    weak_base_model: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of the weak model before its alignment (pi_w^0). Required for `stage: wspo`."
        },
    )
    weak_aligned_model: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of the weak model after its alignment, e.g. by DPO or PPO (pi_w*). "
            "Required for `stage: wspo`."
        },
    )
    wspo_response: Literal["chosen", "rejected", "both"] = field(
        default="chosen",
        metadata={
            "help": "Which responses of a pairwise (ranking) data set WSPO trains on: `chosen`, `rejected` or `both`. "
            "SFT-format data sets always use their single response."
        },
    )

    def check_wspo_args(self) -> None:
        if self.wspo_response not in WSPO_RESPONSES:
            raise ValueError(
                f"`wspo_response` must be one of {', '.join(WSPO_RESPONSES)}, got {self.wspo_response!r}."
            )

        for key in ("weak_base_model", "weak_aligned_model"):
            if not getattr(self, key):
                raise ValueError(
                    f"`{key}` is required for `stage: wspo`: set it to the path or hub id of the weak model "
                    f"{'before' if key == 'weak_base_model' else 'after'} its alignment."
                )


@dataclass
class WPOArguments:
    r"""Arguments of the ``wpo`` stage (Weighted Preference Optimization)."""

    wpo_alignment: Literal["sampled", "greedy", "none"] = field(
        default="sampled",
        metadata={
            "help": "How the WPO weight aligns a token's log-prob with the policy's own outputs: `sampled` "
            "(subtract log sum_v p_v^2), `greedy` (subtract log max_v p_v) or `none`."
        },
    )
    wpo_weighting: Literal["pair", "chosen", "rejected"] = field(
        default="pair",
        metadata={
            "help": "Which weights a pair's loss carries: `pair` (WPO, w(y_w) * w(y_l)), `chosen` (WPO_w, w(y_w)) "
            "or `rejected` (WPO_l, w(y_l)); always clamped at 1."
        },
    )

    def check_wpo_args(self) -> None:
        for key, choices in (("wpo_alignment", WPO_ALIGNMENTS), ("wpo_weighting", WPO_WEIGHTINGS)):
            if getattr(self, key) not in choices:
                raise ValueError(f"`{key}` must be one of {', '.join(choices)}, got {getattr(self, key)!r}.")

        if self.pref_loss not in WPO_PREF_LOSSES + ("kto",):
            raise ValueError(
                f"`pref_loss: {self.pref_loss}` cannot take a WPO weight: it is not a sum of per-pair terms. Use one "
                f"of {', '.join(WPO_PREF_LOSSES)}, or `kto` for unpaired (KTO-format) data."
            )

        if self.ld_alpha is not None:
            raise ValueError("`ld_alpha` (LD-DPO) is not supported by `stage: wpo`; remove it.")

        if self.dpo_label_smoothing > 1e-6 and self.pref_loss not in ("sigmoid", "robust", "exo_pair"):
            raise ValueError("`dpo_label_smoothing` is only valid for the sigmoid, robust and exo_pair losses.")


@dataclass
class PrecomputeArguments:
    r"""Where and how the frozen models' per-token log-probs are computed."""

    precompute_logps: bool = field(
        default=True,
        metadata={
            "help": "Compute the frozen models' per-token log-probs (WSPO: weak shift and reference; WPO: reference) "
            "once before training and cache them on disk, so that training holds only the policy. `false` keeps "
            "the frozen models in memory and computes the same values at every step."
        },
    )
    logps_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the precomputed log-prob cache (a shared file system for multi-node runs). "
            "Defaults to $LLAMAFACTORY_WSPO_CACHE or ~/.cache/llamafactory_wspo."
        },
    )
    precompute_batch_size: int | None = field(
        default=None,
        metadata={"help": "Batch size of the precompute pass. Defaults to `per_device_eval_batch_size`."},
    )

    def get_logps_cache_dir(self) -> str:
        if self.logps_cache_dir:
            return os.path.abspath(os.path.expanduser(self.logps_cache_dir))

        default = os.getenv("LLAMAFACTORY_WSPO_CACHE") or os.path.join("~", ".cache", "llamafactory_wspo")
        return os.path.abspath(os.path.expanduser(default))


@dataclass
class PluginArguments(WSPOArguments, WPOArguments, PrecomputeArguments):
    r"""Every argument of the plugin stages."""

    def check_plugin_args(self) -> None:
        r"""Structural checks that need no file system access; called from ``__post_init__``."""
        if self.stage == "wspo":
            self.check_wspo_args()
        elif self.stage == "wpo":
            self.check_wpo_args()
            self.use_ref_model = self.pref_loss not in ("orpo", "simpo")  # as in the DPO stage
        elif self.pref_loss == "kto":
            raise ValueError("`pref_loss: kto` is the KTO form of `stage: wpo`; plain KTO is `stage: kto`.")

        if self.precompute_batch_size is not None and self.precompute_batch_size < 1:
            raise ValueError("`precompute_batch_size` must be a positive integer.")
