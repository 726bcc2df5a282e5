"""Compatibility shims for the libraries next to LLaMA-Factory, each applied explicitly where it is needed."""


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
