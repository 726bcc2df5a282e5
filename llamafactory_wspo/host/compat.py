"""Shims for the libraries next to LLaMA-Factory (TRL, transformers), each applied explicitly where it is needed."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def fix_trl_availability_flags() -> None:
    r"""Make TRL's optional-dependency flags booleans again before a TRL trainer module is imported.

    TRL 0.24 (the newest release LLaMA-Factory 0.9.5 allows) computes ``_mergekit_available`` and its
    siblings with ``transformers.utils.import_utils._is_package_available``, which since transformers 5
    returns a ``(available, version)`` tuple: always truthy, so importing ``trl.GRPOTrainer`` tries to
    import mergekit, vLLM, ... and fails. Only those tuple-valued flags are replaced by their first item;
    nothing is changed on other TRL releases.
    """
    import trl
    import trl.import_utils as import_utils

    if not trl.__version__.startswith("0.24."):
        return

    for name, value in list(vars(import_utils).items()):
        if name.startswith("_") and name.endswith("_available") and isinstance(value, tuple) and len(value) == 2:
            setattr(import_utils, name, bool(value[0]))


def ensure_warnings_issued(model) -> None:
    r"""TRL 0.24's trainers write to ``model.warnings_issued``, a dict that transformers 5 no longer creates."""
    if not hasattr(model, "warnings_issued"):
        model.warnings_issued = {}


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
