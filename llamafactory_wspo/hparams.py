"""Arguments of the plugin stages, parsed by LLaMA-Factory's own ``HfArgumentParser``.

:class:`PluginArguments` is a mixin: :mod:`llamafactory_wspo.integration` combines it with
LLaMA-Factory's ``FinetuningArguments`` so that YAML keys and ``--key value`` flags both work.
The WSPO hyper-parameter γ is LLaMA-Factory's ``pref_beta`` and the optional SFT term is
``pref_ftx``, so the authors' recipes run unchanged; WPO reuses the DPO stage's arguments
(``pref_loss``, ``pref_beta``, ``pref_ftx``, ``dpo_label_smoothing``, ``ref_model``). The ``grpo``
stage (online RL with rule-based rewards, for the weak model's length alignment of the XSUM
experiment) has its own ``grpo_*`` and ``length_reward_*`` fields.
"""

import os
from dataclasses import dataclass, field
from typing import Literal


PLUGIN_STAGES = ("wspo", "wpo", "grpo")
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
class GRPOArguments:
    r"""Arguments of the ``grpo`` stage: online RL with TRL's ``GRPOTrainer`` and rewards named in YAML."""

    grpo_reward_funcs: str = field(
        default="length",
        metadata={
            "help": "Comma-separated reward functions: `length` (the summary-length reward, see "
            "`length_reward_min`/`length_reward_max`), an importable `module:function` (or `module.function`) "
            "following TRL's reward-function signature `f(prompts, completions, **kwargs) -> list[float]`, or the "
            "path of a local sequence-classification reward model."
        },
    )
    length_reward_min: int = field(
        default=20,
        metadata={"help": "L_min of the length reward: the shortest in-range output, in words."},
    )
    length_reward_max: int = field(
        default=30,
        metadata={"help": "L_max of the length reward: the longest in-range output, in words."},
    )
    grpo_num_generations: int = field(
        default=8,
        metadata={
            "help": "Outputs sampled per prompt (the group of GRPO). Must divide per_device_train_batch_size x "
            "number of processes x gradient_accumulation_steps."
        },
    )
    grpo_max_completion_length: int = field(
        default=64,
        metadata={"help": "Maximum number of new tokens of a sampled output."},
    )
    grpo_temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of the outputs."},
    )
    grpo_top_p: float = field(
        default=1.0,
        metadata={"help": "Top-p of the sampling of the outputs."},
    )
    grpo_beta: float = field(
        default=0.04,
        metadata={
            "help": "Coefficient of the KL penalty towards the initial (reference) model; 0 loads no reference model."
        },
    )

    def check_grpo_args(self) -> None:
        from .rewards import check_length_range

        if not self.grpo_reward_funcs or not self.grpo_reward_funcs.strip(" ,"):
            raise ValueError("`grpo_reward_funcs` is empty: name at least one reward function, e.g. `length`.")

        try:
            check_length_range(self.length_reward_min, self.length_reward_max)
        except ValueError as exc:
            raise ValueError(f"`length_reward_min`/`length_reward_max`: {exc}") from None

        if self.grpo_num_generations < 2:
            raise ValueError("`grpo_num_generations` must be at least 2: GRPO compares the outputs of one prompt.")

        if self.grpo_max_completion_length < 1:
            raise ValueError("`grpo_max_completion_length` must be a positive integer.")

        if self.grpo_temperature <= 0 or not 0 < self.grpo_top_p <= 1:
            raise ValueError("`grpo_temperature` must be > 0 and `grpo_top_p` in (0, 1]: GRPO samples its outputs.")

        if self.grpo_beta < 0:
            raise ValueError("`grpo_beta` must be >= 0.")

        if self.include_effective_tokens_per_second:
            raise ValueError("`include_effective_tokens_per_second` is not available for `stage: grpo`; remove it.")


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
class PluginArguments(WSPOArguments, WPOArguments, GRPOArguments, PrecomputeArguments):
    r"""Every argument of the plugin stages."""

    def check_plugin_args(self) -> None:
        r"""Structural checks that need no file system access; called from ``__post_init__``."""
        if self.stage == "wspo":
            self.check_wspo_args()
        elif self.stage == "wpo":
            self.check_wpo_args()
            self.use_ref_model = self.pref_loss not in ("orpo", "simpo")  # as in the DPO stage
        elif self.stage == "grpo":
            self.check_grpo_args()
        elif self.pref_loss == "kto":
            raise ValueError("`pref_loss: kto` is the KTO form of `stage: wpo`; plain KTO is `stage: kto`.")

        if self.precompute_batch_size is not None and self.precompute_batch_size < 1:
            raise ValueError("`precompute_batch_size` must be a positive integer.")
