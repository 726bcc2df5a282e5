"""The frozen models of the plugin stages, from one factory: the reference and the weak model before and after
its alignment.

The WSPO and WPO stages, in both modes, take their frozen models from :func:`frozen_models`: the precompute pass
loads each one in turn before the policy exists, the per-step mode loads them beside the policy. What a frozen
model is loaded from is decided here once, so the two modes score with the same weights:

* **reference** (``ref``), built as LLaMA-Factory's ``create_ref_model`` builds it for the DPO stage: with
  ``ref_model`` that model, its ``ref_model_adapters`` and ``ref_model_quantization_bit``; otherwise the
  policy's own checkpoint with every option of the policy (quantisation included). With LoRA and no
  ``ref_model`` the per-step reference is the policy with its adapters disabled; the precompute pass loads the
  same weights: the base model, quantised as the policy is (QLoRA), with the adapters that the policy merges
  (all but the resumed one) merged.
* **weak models** (``weak_base``, ``weak_aligned``): a path or hub id of their own, loaded with the subset of the
  policy's loader options in :data:`WEAK_MODEL_OPTIONS` (hub access, remote code, attention kernel, dtypes) and
  nothing else: never the policy's adapters, revision, quantisation, ``train_from_scratch`` or ``rope_scaling``.

Each frozen model also says what identifies it for the log-prob cache (:meth:`FrozenModel.identity`): the
content of its weights and every loader option it is built with.

Loading a frozen model leaves no auto-class registration behind
(:func:`~llamafactory_wspo.host.compat.auto_class_registrations_kept`): a frozen
model whose config has an ``auto_map`` must not change how the policy is saved.
"""

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from llamafactory.hparams import FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer

from .host.compat import auto_class_registrations_kept
from .logps.fingerprint import FileHashes, weights_identity
from .projection import WEAK_PREFIX


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizer

    from .hparams import PluginArguments


# The policy's loader options that the weak models take over: how to reach the hub, whether to run remote code,
# the attention kernel and the dtypes. Everything else of theirs keeps LLaMA-Factory's defaults.
WEAK_MODEL_OPTIONS = (
    "cache_dir",
    "hf_hub_token",
    "ms_hub_token",
    "om_hub_token",
    "trust_remote_code",
    "flash_attn",
    "low_cpu_mem_usage",
    "offload_folder",
    "infer_dtype",
)
WEAK_MODEL_LAZY_OPTIONS = ("compute_dtype", "device_map", "model_max_length")
# Loader options that cannot change a frozen model's log-probs (credentials, device placement, options of other
# commands): left out of the cache key. Everything else that the loader receives is in it.
_NOT_IN_KEY = frozenset(
    {
        "hf_hub_token",
        "ms_hub_token",
        "om_hub_token",
        "cache_dir",
        "offload_folder",
        "device_map",
        "quantization_device_map",
        "infer_backend",
        "print_param_status",
        "use_kv_cache",
        "disable_gradient_checkpointing",
        "use_reentrant_gc",
        "use_unsloth_gc",
    }
)
_OTHER_COMMANDS = ("export_", "vllm_", "sglang_", "kt_")


@dataclass(frozen=True)
class FrozenModel:
    r"""One frozen model: its role, the argument that names it and the loader options it is built with.

    ``is_policy`` marks the LoRA reference without ``ref_model``: per step it is the policy with its adapters
    disabled (nothing to load), while the precompute pass loads the same weights from :attr:`model_args`.
    ``input_prefix`` names the columns it scores: ``""`` (``input_ids``, ``labels``), or ``"weak_"`` for a weak
    model of cross-tokenizer WSPO, which scores the weak rendering of each row.
    """

    name: str  # "ref", "weak_base" or "weak_aligned"
    key: str  # the argument that names it: "ref_model", "weak_base_model", ... or "model_name_or_path"
    model_args: ModelArguments
    is_policy: bool = False
    input_prefix: str = ""

    @property
    def name_or_path(self) -> str:
        return self.model_args.model_name_or_path

    def load_tokenizer(self) -> "PreTrainedTokenizer":
        with auto_class_registrations_kept():
            return load_tokenizer(self.model_args)["tokenizer"]

    def load(self) -> "PreTrainedModel":
        r"""Load the model for inference with LLaMA-Factory's loader, as ``create_ref_model`` does (without leaving
        auto-class registrations behind)."""
        with auto_class_registrations_kept():
            return load_model(self.load_tokenizer(), self.model_args, FinetuningArguments(), is_trainable=False)

    def identity(self, hashes: "FileHashes") -> dict[str, Any]:
        r"""What the model's log-probs depend on: its weights and every loader option it is built with."""
        args = self.model_args
        options = {
            attr.name: getattr(args, attr.name)
            for attr in fields(args)
            if attr.name not in _NOT_IN_KEY and not attr.name.startswith(_OTHER_COMMANDS)
        }
        weights = weights_identity(
            args.model_name_or_path,
            args.model_revision,
            args.adapter_name_or_path,
            hashes,
            cache_dir=args.cache_dir,
            token=args.hf_hub_token,
        )
        return {"weights": weights, "loader": {key: str(value) for key, value in sorted(options.items())}}


@dataclass(frozen=True)
class FrozenModels:
    r"""The frozen models of one run, by role; the weak ones are ``None`` for ``stage: wpo``."""

    ref: FrozenModel
    weak_base: FrozenModel | None = None
    weak_aligned: FrozenModel | None = None

    def __iter__(self) -> Iterator[FrozenModel]:
        return iter(model for model in (self.ref, self.weak_base, self.weak_aligned) if model is not None)

    def weak_models_score_weak_columns(self) -> "FrozenModels":
        r"""These models with the weak ones scoring the weak rendering of each row (cross-tokenizer WSPO)."""
        return replace(
            self,
            weak_base=replace(self.weak_base, input_prefix=WEAK_PREFIX),
            weak_aligned=replace(self.weak_aligned, input_prefix=WEAK_PREFIX),
        )


def _merged_adapters(model_args: ModelArguments, finetuning_args: "PluginArguments") -> list[str]:
    r"""The adapters that LLaMA-Factory merges into the policy's base (and that disabling the LoRA keeps)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    adapters = model_args.adapter_name_or_path or []
    not_mergeable = (
        model_args.quantization_bit is not None
        or is_deepspeed_zero3_enabled()
        or model_args.use_unsloth
        or getattr(model_args, "use_kt", False)
    )
    if not_mergeable:  # the single adapter is resumed, none merged
        return []

    return list(adapters) if finetuning_args.create_new_adapter else list(adapters[:-1])


def _copy_args(model_args: ModelArguments, **overrides: Any) -> ModelArguments:
    r"""``ModelArguments.copyfrom`` with the adapters as the comma-separated string that ``__post_init__`` splits."""
    adapters = overrides.pop("adapter_name_or_path", model_args.adapter_name_or_path)
    if isinstance(adapters, list | tuple):
        adapters = ",".join(adapters) or None

    return ModelArguments.copyfrom(model_args, adapter_name_or_path=adapters, **overrides)


def reference_model(model_args: ModelArguments, finetuning_args: "PluginArguments") -> FrozenModel:
    r"""The reference, exactly as LLaMA-Factory's ``create_ref_model`` builds it (see the module docstring)."""
    if finetuning_args.ref_model:
        args = _copy_args(
            model_args,
            model_name_or_path=finetuning_args.ref_model,
            adapter_name_or_path=finetuning_args.ref_model_adapters,
            quantization_bit=finetuning_args.ref_model_quantization_bit,
        )
        return FrozenModel("ref", "ref_model", args)

    if finetuning_args.finetuning_type == "lora":
        args = _copy_args(model_args, adapter_name_or_path=_merged_adapters(model_args, finetuning_args))
        return FrozenModel("ref", "model_name_or_path", args, is_policy=True)

    return FrozenModel("ref", "model_name_or_path", _copy_args(model_args))


def weak_model(name: str, key: str, name_or_path: str, model_args: ModelArguments) -> FrozenModel:
    r"""A weak model: its own path with the policy's :data:`WEAK_MODEL_OPTIONS`, LLaMA-Factory's defaults otherwise."""
    args = ModelArguments(
        model_name_or_path=name_or_path, **{option: getattr(model_args, option) for option in WEAK_MODEL_OPTIONS}
    )
    for option in WEAK_MODEL_LAZY_OPTIONS:
        setattr(args, option, getattr(model_args, option))

    return FrozenModel(name, key, args)


def frozen_models(model_args: ModelArguments, finetuning_args: "PluginArguments") -> FrozenModels:
    r"""The frozen models of a ``wspo`` run (reference and both weak models) or a ``wpo`` run (the reference)."""
    ref = reference_model(model_args, finetuning_args)
    if finetuning_args.stage != "wspo":
        return FrozenModels(ref)

    return FrozenModels(
        ref,
        weak_model("weak_base", "weak_base_model", finetuning_args.weak_base_model, model_args),
        weak_model("weak_aligned", "weak_aligned_model", finetuning_args.weak_aligned_model, model_args),
    )
