"""The frozen models of the plugin stages, from one factory: the reference and the weak model before and after
its alignment.

Both stages and both modes take their frozen models from :func:`frozen_models`: the precompute pass loads each
one in turn before the policy exists, the per-step mode loads them beside the policy. What a frozen model is
loaded from is decided here once, so the two modes score with the same weights:

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

Loading a frozen model leaves no auto-class registration behind (:func:`auto_class_registrations_kept`): a frozen
model whose config has an ``auto_map`` must not change how the policy is saved.
"""

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from llamafactory.hparams import FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer

from .identity import FileHashes, weights_identity
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


# The transformers classes whose subclasses carry `_auto_class` (set by `register_for_auto_class`): configs, models,
# tokenizers and processors, by module (`PretrainedConfig` is the name before transformers 5).
_AUTO_CLASS_BASES = {
    "transformers.configuration_utils": ("PreTrainedConfig", "PretrainedConfig"),
    "transformers.modeling_utils": ("PreTrainedModel",),
    "transformers.tokenization_utils_base": ("PreTrainedTokenizerBase",),
    "transformers.processing_utils": ("ProcessorMixin",),
    "transformers.feature_extraction_utils": ("FeatureExtractionMixin",),
    "transformers.image_processing_base": ("ImageProcessingMixin",),
    "transformers.video_processing_utils": ("BaseVideoProcessor",),
}
_AUTO_MODULES = "transformers.models.auto."
_UNSET = object()


def _registrable_classes() -> set[type]:
    r"""Every class of the process (imported so far) that ``register_for_auto_class`` can mark."""
    classes: set[type] = set()
    for module_name, names in _AUTO_CLASS_BASES.items():
        module = sys.modules.get(module_name)
        stack = [base for name in names if isinstance(base := getattr(module, name, None), type)]
        while stack:
            cls = stack.pop()
            if cls not in classes:
                classes.add(cls)
                stack.extend(type.__subclasses__(cls))

    return classes


def _auto_mapping_registrations() -> dict[int, dict]:
    r"""The registrations of the auto mappings (``AutoConfig``'s, each ``AutoModel*``'s, ``AutoTokenizer``'s...)."""
    registrations = {}
    for name, module in list(sys.modules.items()):
        if name.startswith(_AUTO_MODULES) and module is not None:
            for value in list(vars(module).values()):
                extra = getattr(value, "__dict__", {}).get("_extra_content")
                if isinstance(extra, dict):
                    registrations[id(extra)] = extra

    return registrations


@contextmanager
def auto_class_registrations_kept() -> Iterator[None]:
    r"""Undo every auto-class registration made inside the block, keeping those made before it.

    Loading a model whose config has an ``auto_map`` registers classes process-wide, twice over: transformers'
    remote-code loader calls ``register_for_auto_class`` on the config, tokenizer and model classes (and adds the
    model class to the ``AutoModel*`` mapping), and LLaMA-Factory's ``register_autoclass`` registers the classes it
    loaded, even transformers' own (remote code off, or an ``auto_map`` that names a library class). A class with
    ``_auto_class`` set copies "its custom code" beside every save of an instance: the policy, of the same class as a
    frozen model, would save transformers' own modules with its weights, or fail on their relative imports
    (``FileNotFoundError: .../models/qwen2/..activations.py``). Frozen models are never saved, so their registrations
    are dropped; the policy's own (when it is loaded first) are kept, and it registers again when loaded after.
    """
    classes = {cls: cls.__dict__.get("_auto_class", _UNSET) for cls in _registrable_classes()}
    mappings = {key: (extra, dict(extra)) for key, extra in _auto_mapping_registrations().items()}
    try:
        yield
    finally:
        for cls in _registrable_classes():
            before, now = classes.get(cls, _UNSET), cls.__dict__.get("_auto_class", _UNSET)
            if now != before:
                if before is _UNSET:
                    del cls._auto_class
                else:
                    cls._auto_class = before

        for extra, before in mappings.values():
            if extra != before:
                extra.clear()
                extra.update(before)


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


def _load_vocab(model: FrozenModel) -> tuple["PreTrainedTokenizer", dict[str, int]]:
    try:
        tokenizer = model.load_tokenizer()
    except Exception as err:
        raise ValueError(f"`{model.key}` ({model.name_or_path}) has no tokenizer that can be loaded: {err}") from err

    return tokenizer, tokenizer.get_vocab()


def _differing_entries(vocab: dict[str, int], other: dict[str, int]) -> str:
    differing = sorted(set(vocab.items()) ^ set(other.items()), key=lambda item: item[1])
    return f"{len(other)} vs {len(vocab)} tokens; differing entries e.g. " + ", ".join(
        f"{token!r}->{idx}" for token, idx in differing[:3]
    )


def check_vocabularies(tokenizer: "PreTrainedTokenizer", models: Iterable[FrozenModel], strong_name: str) -> None:
    r"""Frozen models score the policy's token ids, so every tokenizer must map text to the same ids."""
    strong_vocab = tokenizer.get_vocab()
    for model in models:
        if model.key == "model_name_or_path":
            continue

        _, other_vocab = _load_vocab(model)
        if other_vocab != strong_vocab:
            raise ValueError(
                f"`{model.key}` ({model.name_or_path}) and `model_name_or_path` ({strong_name}) have different "
                f"vocabularies ({_differing_entries(strong_vocab, other_vocab)}). "
                "Both models score the same token ids: use models that share one tokenizer "
                "(e.g. Qwen2-1.5B with Qwen2-7B)."
            )


def weak_tokenizer(
    tokenizer: "PreTrainedTokenizer",
    models: FrozenModels,
    strong_name: str,
    template: str | None,
    weak_template: str | None,
) -> "PreTrainedTokenizer | None":
    r"""The weak models' tokenizer if this WSPO run is cross-tokenizer, else ``None`` (the weak models score the
    strong token ids).

    Cross-tokenizer WSPO (the spec's "Cross-tokenizer WSPO") switches on when the weak models' vocabulary differs
    from the strong model's, or when ``weak_template`` names another template than ``template``. The reference
    always scores the strong ids (same vocabulary), both weak models share one tokenizer (their shift compares
    log-probs of the same ids), and different vocabularies need ``weak_template``: the strong template would add
    its stop words to the weak tokenizer, giving ids past the weak embedding.
    """
    check_vocabularies(tokenizer, [models.ref], strong_name)
    strong_vocab = tokenizer.get_vocab()
    base, base_vocab = _load_vocab(models.weak_base)
    if base_vocab != strong_vocab and not weak_template:
        raise ValueError(
            f"`weak_base_model` ({models.weak_base.name_or_path}) and `model_name_or_path` ({strong_name}) have "
            f"different vocabularies ({_differing_entries(strong_vocab, base_vocab)}). Cross-tokenizer WSPO needs "
            "`weak_template`, the chat template of the weak models' family (e.g. `llama3` for a Llama-3 weak model): "
            f"the strong template `{template}` would add its stop words to the weak tokenizer, giving token ids past "
            "the weak models' embedding."
        )

    _, aligned_vocab = _load_vocab(models.weak_aligned)
    if aligned_vocab != base_vocab:
        raise ValueError(
            f"`weak_aligned_model` ({models.weak_aligned.name_or_path}) and `weak_base_model` "
            f"({models.weak_base.name_or_path}) have different vocabularies "
            f"({_differing_entries(base_vocab, aligned_vocab)}). Both weak models must share one tokenizer: the weak "
            "shift log pi_w*(y_t) - log pi_w0(y_t) compares their log-probs of the same token ids. Use the weak model "
            "before and after its alignment."
        )

    if base_vocab == strong_vocab and (not weak_template or weak_template == template):
        return None

    return base


def check_embedding_sizes(
    models: Iterable[FrozenModel], max_token_id: int, tokenizer_size: int, tokenizer_key: str = "model_name_or_path"
) -> None:
    r"""Every frozen model must have an embedding row for each token id of the data (read from configs, no weights).

    A model with fewer rows than the strong tokenizer's ids fails with an ``IndexError`` deep inside its forward
    pass otherwise, after minutes of loading. The policy's own checkpoint is LLaMA-Factory's (``resize_vocab``).
    """
    from llamafactory.model.loader import load_config

    for model in models:
        if model.key == "model_name_or_path" or model.model_args.resize_vocab:
            continue

        with auto_class_registrations_kept():
            config = load_config(model.model_args)
        rows = getattr(config.get_text_config(), "vocab_size", None)
        if rows is not None and max_token_id >= rows:
            raise ValueError(
                f"`{model.key}` ({model.name_or_path}) has an embedding of {rows} rows, but the data holds token id "
                f"{max_token_id} (the tokenizer of `{tokenizer_key}` has {tokenizer_size} tokens): it cannot score "
                f"these ids. Use a `{model.key}` whose embedding covers the tokenizer of `{tokenizer_key}`."
            )
