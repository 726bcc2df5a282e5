"""Arguments of the plugin stages, parsed by LLaMA-Factory's own ``HfArgumentParser``.

:class:`PluginArguments` is a mixin: :func:`llamafactory_wspo.host.patches.build_finetuning_arguments` combines it
with LLaMA-Factory's ``FinetuningArguments``, so that YAML keys and ``--key value`` flags both work. The stages also
read some of the host's fields: ``pref_beta`` (γ of WSPO, β of WPO's preference loss) and ``pref_ftx`` (the weight of
an SFT term), and for WPO ``pref_loss``, ``dpo_label_smoothing`` and ``ref_model``. Each stage's class docstring
cites its paper; the help strings (``llamafactory-cli train -h``) say what each argument does.
"""

import argparse
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


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


class PluginInputError(ValueError):
    r"""A recipe value that the plugin refuses (bad input, not a failed run): ``llamafactory-cli train`` prints it as
    one line and exits with code 2 (:mod:`llamafactory_wspo.host.patches`); the host's own errors keep its handling."""


def check_stage(stage: Any, host_stages: tuple[str, ...]) -> None:
    r"""``stage`` must name a stage of the host or the plugin (a :class:`PluginInputError` suggesting the close one:
    ``WSPO`` as LLaMA-Board displays it, or a typo such as ``wsp0``)."""
    known = tuple(dict.fromkeys((*host_stages, *PLUGIN_STAGES)))
    if stage is None or stage in known:
        return

    import difflib

    text = str(stage).strip().lower()
    close = [text] if text in known else difflib.get_close_matches(text, known, n=1, cutoff=0.6)
    hint = f"did you mean `stage: {close[0]}`? " if close else ""
    raise PluginInputError(
        f"`stage: {stage}` is not a training stage: {hint}The stages are {', '.join(map(repr, host_stages))} "
        f"(LLaMA-Factory) and {', '.join(map(repr, PLUGIN_STAGES))} (llamafactory-wspo), in lower case."
    )


@dataclass
class WSPOArguments:
    r"""Arguments of the ``wspo`` stage.

    WSPO is Zhu et al., "Weak-to-Strong Preference Optimization: Stealing Reward from Weak Aligned Model", ICLR 2025,
    arXiv:2410.18640. Its loss, per example, is the mean over the response tokens ``y_t`` of ``(γ · s_t - w_t)²``,
    where ``s_t = log π_θ(y_t) - log π_ref(y_t)`` is the strong model's shift from its reference and
    ``w_t = log π_w*(y_t) - log π_w⁰(y_t)`` the weak model's alignment shift (``π_w⁰`` before, ``π_w*`` after its
    alignment). γ is LLaMA-Factory's ``pref_beta``: at the optimum ``γ · s_t = w_t``, so a smaller γ amplifies the
    weak model's alignment (the authors' recipes set 0.1). The optional SFT term ``-(1/T) Σ_t log π_θ(y_t)`` is
    weighted by ``pref_ftx``. Cross-tokenizer WSPO (``weak_template``) is this plugin's extension; the paper uses
    one tokenizer.
    """

    weak_base_model: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of the weak model before its alignment, π_w⁰ (e.g. its SFT model): the "
            "reference of the weak shift w_t = log π_w*(y_t) - log π_w⁰(y_t). Required for `stage: wspo`."
        },
    )
    weak_aligned_model: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of the weak model after its alignment (e.g. by DPO or PPO), π_w*: the aligned "
            "side of the weak shift w_t = log π_w*(y_t) - log π_w⁰(y_t) that WSPO transfers to the strong model. "
            "Required for `stage: wspo`."
        },
    )
    weak_template: str | None = field(
        default=None,
        metadata={
            "help": "LLaMA-Factory chat template of the weak models' family (e.g. `llama3`) for cross-tokenizer WSPO: "
            "weak models whose tokenizer differs from the strong model's (or that use another template) score the "
            "same conversations rendered with their own tokenizer and this template, and the weak shift w_t is "
            "moved onto the strong tokens by UTF-8 byte offsets, keeping each turn's total log-ratio. Required when "
            "the vocabularies differ; both weak models share one tokenizer."
        },
    )
    wspo_response: Literal["chosen", "rejected", "both"] = field(
        default="chosen",
        metadata={
            "help": "Which responses y of a pairwise (ranking) data set the WSPO loss is computed on: `chosen` (what "
            "the paper's authors train on), `rejected` or `both`. SFT-format data sets always use their single "
            "response."
        },
    )
    wspo_shift_warning: float = field(
        default=2.0,
        metadata={
            "help": "Nats per response token: the precompute pass warns when the mean |w_t| of the weak shift "
            "w_t = log π_w*(y_t) - log π_w⁰(y_t) exceeds it (cross-tokenizer WSPO: on the weak tokens or on the "
            "projected shift). A weak alignment that moved tokens this hard (e.g. DPO's likelihood displacement) "
            "hands the strong model a degenerate target to copy. A diagnostic of this plugin, in no paper; the "
            "statistics are logged and stored in the cache manifest whatever the value."
        },
    )

    def check_wspo_args(self) -> None:
        value = self.wspo_shift_warning
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise PluginInputError(
                f"`wspo_shift_warning` must be a positive number of nats per token, got {value!r}: the mean |w_t| "
                "above which the precompute pass warns (default 2; a large value such as 1e9 silences it)."
            )

        if self.wspo_response not in WSPO_RESPONSES:
            raise PluginInputError(
                f"`wspo_response` must be one of {', '.join(WSPO_RESPONSES)}, got {self.wspo_response!r}."
            )

        for key in ("weak_base_model", "weak_aligned_model"):
            if not getattr(self, key):
                raise PluginInputError(
                    f"`{key}` is required for `stage: wspo`: set it to the path or hub id of the weak model "
                    f"{'before' if key == 'weak_base_model' else 'after'} its alignment."
                )

        self.weak_template = self.weak_template or None  # an empty field (LLaMA-Board, command line) is no template
        if self.weak_template is not None:
            from llamafactory.data.template import TEMPLATES

            if self.weak_template not in TEMPLATES:
                raise PluginInputError(unknown_template_message(self.weak_template, TEMPLATES))


def unknown_template_message(name: str, templates: "dict[str, object]") -> str:
    return (
        f"`weak_template: {name}` does not exist: name one of LLaMA-Factory's chat templates for the weak models' "
        f"family, e.g. {', '.join(t for t in ('llama3', 'qwen', 'mistral', 'gemma') if t in templates)} "
        f"({len(templates)} in all: `llamafactory.data.template.TEMPLATES`)."
    )


@dataclass
class WPOArguments:
    r"""Arguments of the ``wpo`` stage.

    WPO is Zhou et al., "WPO: Enhancing RLHF with Weighted Preference Optimization", EMNLP 2024, arXiv:2406.11827.
    The loss of a pair, ``pref_loss`` (β: ``pref_beta``), is weighted by how likely the policy is to produce it
    (Eq. (1), Sec. 3.2); the weight of an output is ``w(x, y) = exp((1/|y|) Σ_t a_t)`` with ``a_t`` set by
    ``wpo_alignment`` (sampled: Eq. (2); greedy: Sec. 3.3). The variants WPO_w and WPO_l are Sec. 4.3, unpaired
    (KTO) data Sec. 4.2. WPO also reads the DPO stage's ``pref_ftx``, ``dpo_label_smoothing`` and ``ref_model``.
    """

    wpo_alignment: Literal["sampled", "greedy", "none"] = field(
        default="sampled",
        metadata={
            "help": "Weight alignment of WPO (Sec. 3.3): the term a_t of the weight w(x, y) = exp((1/|y|) Σ_t a_t) "
            "is log π_θ(y_t) minus log Σ_v π_θ(v)² for `sampled` (Eq. (2), the paper's default), minus "
            "log max_v π_θ(v) for `greedy`, and log π_θ(y_t) alone for `none` (the unaligned weight of Sec. 3.2)."
        },
    )
    wpo_weighting: Literal["pair", "chosen", "rejected"] = field(
        default="pair",
        metadata={
            "help": "Which weights a pair's loss carries: `pair` (WPO, w(x, y_w)·w(x, y_l), Eq. (1)), `chosen` "
            "(WPO_w, w(x, y_w)) or `rejected` (WPO_l, w(x, y_l)), the variants of Sec. 4.3; detached and clamped "
            "at 1 as in the authors' code. Not used by `pref_loss: kto`, where each output carries its own weight, "
            "normalised per batch as in Sec. 4.2."
        },
    )

    def check_wpo_args(self) -> None:
        for key, choices in (("wpo_alignment", WPO_ALIGNMENTS), ("wpo_weighting", WPO_WEIGHTINGS)):
            if getattr(self, key) not in choices:
                raise PluginInputError(f"`{key}` must be one of {', '.join(choices)}, got {getattr(self, key)!r}.")

        if self.pref_loss not in WPO_PREF_LOSSES + ("kto",):
            raise PluginInputError(
                f"`pref_loss: {self.pref_loss}` cannot take a WPO weight: it is not a sum of per-pair terms. Use one "
                f"of {', '.join(WPO_PREF_LOSSES)}, or `kto` for unpaired (KTO-format) data."
            )

        if self.ld_alpha is not None:
            raise PluginInputError("`ld_alpha` (LD-DPO) is not supported by `stage: wpo`; remove it.")

        if self.dpo_label_smoothing > 1e-6 and self.pref_loss not in ("sigmoid", "robust", "exo_pair"):
            raise PluginInputError("`dpo_label_smoothing` is only valid for the sigmoid, robust and exo_pair losses.")


@dataclass
class GRPOArguments:
    r"""Arguments of the ``grpo`` stage: online RL with TRL's ``GRPOTrainer`` and rewards named in YAML.

    GRPO is Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models", 2024,
    arXiv:2402.03300: the objective is Eq. (3), its KL estimator Eq. (4), the group-normalised rewards Sec. 4.1.2,
    the published settings Sec. 4.2. The ``length`` reward is the summary-length reward of the XSUM experiment of
    the WSPO paper (:class:`WSPOArguments`), in which the weak model is aligned to a length range before WSPO
    transfers that alignment (see :mod:`llamafactory_wspo.length_reward`).
    """

    grpo_reward_funcs: str = field(
        default="length",
        metadata={
            "help": "Comma-separated reward functions, giving the rewards r_i that GRPO normalises within each group "
            "of outputs (Sec. 4.1.2): `length` (the summary-length reward of WSPO's XSUM experiment; see "
            "`length_reward_min`/`length_reward_max`), an importable `module:function` (or `module.function`) "
            "following TRL's reward-function signature `f(prompts, completions, **kwargs) -> list[float]`, or the "
            "path of a local sequence-classification reward model."
        },
    )
    length_reward_min: int = field(
        default=20,
        metadata={
            "help": "L_min of the length reward: the shortest in-range output, in words (20 in WSPO's XSUM "
            "experiment)."
        },
    )
    length_reward_max: int = field(
        default=30,
        metadata={
            "help": "L_max of the length reward: the longest in-range output, in words (30 in WSPO's XSUM experiment)."
        },
    )
    grpo_num_generations: int = field(
        default=8,
        metadata={
            "help": "G, the number of outputs sampled per prompt: the group of GRPO (Eq. (3); 64 in Sec. 4.2). "
            "Must divide per_device_train_batch_size x number of processes x gradient_accumulation_steps."
        },
    )
    grpo_max_completion_length: int = field(
        default=64,
        metadata={"help": "Maximum number of new tokens of a sampled output o_i of GRPO."},
    )
    grpo_temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of the outputs o_i ~ π_θ_old of GRPO."},
    )
    grpo_top_p: float = field(
        default=1.0,
        metadata={"help": "Top-p of the sampling of the outputs o_i ~ π_θ_old of GRPO."},
    )
    grpo_beta: float = field(
        default=0.04,
        metadata={
            "help": "β, the coefficient of the KL term towards the initial (reference) model in the GRPO objective "
            "(Eq. (3), the KL estimated per token by Eq. (4); 0.04 in Sec. 4.2). 0 loads no reference model."
        },
    )

    def check_grpo_args(self) -> None:
        from .length_reward import check_length_range

        if not self.grpo_reward_funcs or not self.grpo_reward_funcs.strip(" ,"):
            raise PluginInputError("`grpo_reward_funcs` is empty: name at least one reward function, e.g. `length`.")

        try:
            check_length_range(self.length_reward_min, self.length_reward_max)
        except ValueError as exc:
            raise PluginInputError(f"`length_reward_min`/`length_reward_max`: {exc}") from None

        if self.grpo_num_generations < 2:
            raise PluginInputError(
                "`grpo_num_generations` must be at least 2: GRPO compares the outputs of one prompt."
            )

        if self.grpo_max_completion_length < 1:
            raise PluginInputError("`grpo_max_completion_length` must be a positive integer.")

        if self.grpo_temperature <= 0 or not 0 < self.grpo_top_p <= 1:
            raise PluginInputError(
                "`grpo_temperature` must be > 0 and `grpo_top_p` in (0, 1]: GRPO samples its outputs."
            )

        if self.grpo_beta < 0:
            raise PluginInputError("`grpo_beta` must be >= 0.")

        if self.include_effective_tokens_per_second:
            raise PluginInputError(
                "`include_effective_tokens_per_second` is not available for `stage: grpo`; remove it."
            )


@dataclass
class PrecomputeArguments:
    r"""Where and how the frozen models' per-token log-probs are computed.

    The frozen terms never change during training: WSPO's weak shift ``w_t`` and ``log π_ref(y_t)``, and WPO's
    reference log-probs inside the preference loss of its Eq. (1) (the papers: :class:`WSPOArguments`,
    :class:`WPOArguments`). Computing them once, before training, is an implementation choice of this plugin: the
    losses are the same either way.
    """

    precompute_logps: bool = field(
        default=True,
        metadata={
            "help": "Compute the frozen models' per-token log-probs once before training and cache them on disk, so "
            "that training holds only the policy: for WSPO the weak shift w_t = log π_w*(y_t) - log π_w⁰(y_t) and "
            "log π_ref(y_t), for WPO the reference log-probs of its preference loss. `false` keeps the frozen "
            "models in memory and computes the same values at every step."
        },
    )
    logps_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the precomputed log-prob cache of `precompute_logps` (a shared file system for "
            "multi-node runs); an implementation setting, in no paper. Defaults to $LLAMAFACTORY_WSPO_CACHE or "
            "~/.cache/llamafactory_wspo."
        },
    )
    precompute_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Batch size of the precompute pass of `precompute_logps`; an implementation setting, in no paper. "
            "Defaults to `per_device_eval_batch_size`."
        },
    )

    def get_logps_cache_dir(self) -> str:
        if self.logps_cache_dir:
            return os.path.abspath(os.path.expanduser(self.logps_cache_dir))

        default = os.getenv("LLAMAFACTORY_WSPO_CACHE") or os.path.join("~", ".cache", "llamafactory_wspo")
        return os.path.abspath(os.path.expanduser(default))


@dataclass
class ScoringArguments:
    r"""How the per-token log-probs of the WSPO and WPO losses are computed (the numbers are the same either way)."""

    response_only_logits: bool = field(
        default=True,
        metadata={
            "help": "Apply the output layer only at the positions whose token is scored (the responses of every "
            "row), in training and in the precompute pass, instead of at every position: the same log-probs, "
            "less work and memory with a large vocabulary. Used for the architectures whose equality is tested "
            "(Qwen2, Qwen3, Llama, Mistral, Gemma-2); other models always compute full logits. `false` computes "
            "full logits everywhere."
        },
    )


# LLaMA-Factory's numeric fields that the plugin stages read (besides their own).
HOST_NUMBERS = {"pref_beta": float, "pref_ftx": float, "dpo_label_smoothing": float}


def scalar_kind(annotation: Any) -> tuple[type | None, bool]:
    r"""``(bool, int or float, None where the field holds none of them; whether it may be None)``."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    kinds = [arg for arg in args if arg in (bool, int, float)]
    return (kinds[0] if len(kinds) == 1 else None), type(None) in args


def coerce_scalar(key: str, value: Any, kind: type, optional: bool = False) -> Any:
    r"""``value`` of the field ``key`` (declared ``kind``: bool, int or float), read as the command line reads it.

    ``HfArgumentParser`` turns the text of ``--key value`` into the field's type (``float()``, ``int()``, its
    ``string_to_bool``), but takes the values of a YAML file or a dict as they are: ``pref_beta: '0.1'``, quoted,
    would reach the loss as a string. The same text is read the same way here; a number is kept (an integral float
    such as ``8.0`` is the integer for an integer field); anything else is one error naming the field.
    """
    if value is None and optional:
        return value

    if isinstance(value, bool):
        if kind is bool:
            return value
    elif isinstance(value, int | float) and kind is float or isinstance(value, int) and kind is int:
        return value
    elif isinstance(value, float) and kind is int and value.is_integer():
        return int(value)
    elif isinstance(value, str):
        from transformers.hf_argparser import string_to_bool

        try:
            return string_to_bool(value.strip()) if kind is bool else kind(value.strip())
        except (ValueError, argparse.ArgumentTypeError):  # what float(), int() and string_to_bool refuse
            pass

    expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
    example = {bool: "true", int: "8", float: "0.1"}[kind]
    fix = "write it unquoted" if isinstance(value, str) else "write one"
    raise PluginInputError(
        f"`{key}` must be {expected}{' or null' if optional else ''}, got {value!r}: {fix}, e.g. `{key}: {example}`."
    )


@dataclass
class PluginArguments(WSPOArguments, WPOArguments, GRPOArguments, PrecomputeArguments, ScoringArguments):
    r"""Every argument of the plugin stages."""

    def coerce_scalars(self) -> None:
        r"""The plugin stages' boolean and numeric fields given as text (a quoted YAML value), read as numbers.

        Only in a plugin stage: the stock stages keep the host's own handling of their fields.
        """
        hints = typing.get_type_hints(PluginArguments)
        for item in dataclasses.fields(PluginArguments):
            kind, optional = scalar_kind(hints[item.name])
            if kind is not None:
                setattr(self, item.name, coerce_scalar(item.name, getattr(self, item.name), kind, optional))

        for key, kind in HOST_NUMBERS.items():
            setattr(self, key, coerce_scalar(key, getattr(self, key), kind))

    def check_plugin_args(self) -> None:
        r"""Structural checks that need no file system access; called from ``__post_init__``."""
        if self.stage in PLUGIN_STAGES:
            self.coerce_scalars()

        if self.stage in ("wspo", "wpo") and not (math.isfinite(self.pref_beta) and self.pref_beta > 0):
            meaning = "gamma of the WSPO loss" if self.stage == "wspo" else "beta of the weighted preference loss"
            raise PluginInputError(
                f"`pref_beta` must be a positive number for `stage: {self.stage}` ({meaning}), got {self.pref_beta}: "
                "0 trains nothing, a negative value trains the wrong way, NaN trains on NaN. The papers use 0.1 "
                "(WSPO) and 0.01 (WPO)."
            )

        if self.stage == "wspo":
            self.check_wspo_args()
        elif self.stage == "wpo":
            self.check_wpo_args()
            self.use_ref_model = self.pref_loss not in ("orpo", "simpo")  # as in the DPO stage
        elif self.stage == "grpo":
            self.check_grpo_args()
        elif self.pref_loss == "kto":
            raise PluginInputError("`pref_loss: kto` is the KTO form of `stage: wpo`; plain KTO is `stage: kto`.")

        if self.precompute_batch_size is not None and self.precompute_batch_size < 1:
            raise PluginInputError("`precompute_batch_size` must be a positive integer.")
