"""The collective steps of the precompute pass, and its frozen models under ZeRO-3.

Under ZeRO-3 with several ranks a frozen model is loaded partitioned and run by a DeepSpeed engine with the run's
resolved config, so each rank holds only its share of the weights; otherwise each rank loads it whole.
"""

import copy
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..logging import get_logger


if TYPE_CHECKING:
    from ..frozen import FrozenModel


logger = get_logger(__name__)


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()

    return 0, 1


def broadcast(value: Any) -> Any:
    r"""Rank 0's ``value`` on every rank (the value itself without ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    return value


def all_gather(value: Any) -> list[Any]:
    r"""Every rank's ``value``, in rank order."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(values, value)
        return values

    return [value]


def _hf_deepspeed_config() -> dict[str, Any] | None:
    r"""The DeepSpeed config of this run when it uses ZeRO-3 (as ``TrainingArguments`` resolved it), else ``None``."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    return config if config is not None and config.is_zero3() else None


def _inference_config(ds_config: Any, model: "torch.nn.Module") -> dict[str, Any]:
    r"""The run's ZeRO-3 config for a frozen model: no optimiser or scheduler, and the ``auto`` values that depend on
    the model resolved as the Trainer resolves them (``HfTrainerDeepSpeedConfig.trainer_config_finalize``)."""
    config = copy.deepcopy(ds_config.config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    text = model.config.get_text_config()
    hidden = max(text.hidden_sizes) if getattr(text, "hidden_sizes", None) else text.hidden_size
    zero = config.setdefault("zero_optimization", {})
    for key, value in (
        ("reduce_bucket_size", hidden * hidden),
        ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
        ("stage3_param_persistence_threshold", 10 * hidden),
    ):
        if zero.get(key, "auto") == "auto":
            zero[key] = value

    left = [path for path, value in _walk(config) if value == "auto"]
    if left:
        raise ValueError(
            f"The DeepSpeed config leaves {', '.join(left)} as `auto` for the precompute pass: set a value, or "
            "`precompute_logps: false`."
        )

    return config


def _walk(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@contextmanager
def frozen_for_pass(model_spec: "FrozenModel", world: int) -> Iterator["torch.nn.Module"]:
    r"""A frozen model loaded for the precompute pass, in evaluation mode, freed afterwards.

    Under ZeRO-3 with several ranks it is loaded partitioned (``zero.Init``) and run by a DeepSpeed engine, as the
    per-step mode runs it: each rank holds only its share of the weights, so any model that trains also
    precomputes. Otherwise each rank loads it whole.
    """
    ds_config = _hf_deepspeed_config() if world > 1 else None
    if ds_config is None:
        from transformers.integrations import deepspeed as hf_deepspeed

        ref = hf_deepspeed._hf_deepspeed_config_weak_ref
        config = ref() if ref is not None else None
        if config is not None:  # ZeRO-1/2 (or one rank): no partitioned loading
            hf_deepspeed.unset_hf_deepspeed_config()
        try:
            model = model_spec.load()
        finally:
            if config is not None:
                hf_deepspeed.set_hf_deepspeed_config(config)
        engine = None
    else:
        import deepspeed

        loaded = model_spec.load()  # partitioned as it loads
        held = sum(param.ds_tensor.numel() for param in loaded.parameters())
        total = sum(param.ds_numel for param in loaded.parameters())
        logger.info_rank0(
            f"Precomputing {model_spec.name} log-probs sharded by ZeRO-3: this rank holds {held} of its {total} "
            "parameters."
        )
        engine, *_ = deepspeed.initialize(model=loaded, config=_inference_config(ds_config, loaded))
        model = engine

    model.eval()
    try:
        yield model
    finally:
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()
        del model, engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
