"""Helpers shared by the plugin stages' workflows: argument checks, the precompute pass, the per-step frozen models,
the training loop."""

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llamafactory.extras.misc import calculate_tps
from llamafactory.extras.ploting import plot_loss
from llamafactory.train.trainer_utils import create_modelcard_and_push

from ..data import dataset_splits
from ..logps.precompute import precompute_logps


if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from datasets import Dataset
    from llamafactory.hparams import ModelArguments
    from transformers import Seq2SeqTrainingArguments

    from ..frozen import FrozenModels
    from ..hparams import PluginArguments
    from ..logps.store import LogpsStore


def _looks_like_path(name: str) -> bool:
    r"""Hub ids are ``name`` or ``org/name``; anything else (absolute, ``./x``, ``~/x``, ``a/b/c``) is a path."""
    return name.startswith((os.sep, ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_paths(
    model_args: "ModelArguments", finetuning_args: "PluginArguments", keys: Sequence[str] = ("ref_model",)
) -> None:
    r"""A model argument that is clearly a path must exist (hub ids are left to the loader)."""
    for key in ("model_name_or_path", *keys):
        value = model_args.model_name_or_path if key == "model_name_or_path" else getattr(finetuning_args, key)
        if value and _looks_like_path(value) and not os.path.exists(os.path.expanduser(value)):
            raise ValueError(
                f"`{key}` is a path that does not exist: {value}. Point it at a model directory or hub id."
            )


def precompute_frozen_logps(
    dataset_module: dict[str, Any],
    models: "FrozenModels",
    combine: Callable[[dict[str, "torch.Tensor"]], dict[str, "torch.Tensor"]],
    collate: Callable,
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "PluginArguments",
    extra: dict[str, Any],
    rows: Callable[["Dataset"], "Dataset"] | None = None,
) -> "LogpsStore":
    r"""The precompute pass (or its cache) over every training and evaluation example of a plugin stage.

    ``rows`` turns a split into the (prompt, response) rows that the frozen models score, one sequence a row;
    ``combine`` turns the frozen models' per-token log-probs of a row into the stored columns.
    """
    splits = dataset_splits(dataset_module)
    return precompute_logps(
        datasets=[rows(split) for split in splits] if rows else splits,
        models=list(models),
        combine=combine,
        collate=collate,
        cache_dir=finetuning_args.get_logps_cache_dir(),
        extra=extra,
        batch_size=finetuning_args.precompute_batch_size or training_args.per_device_eval_batch_size,
        show_progress=training_args.should_log,
        response_only=finetuning_args.response_only_logits,
    )


def prepare_frozen_model(model: "torch.nn.Module", accelerator: "Accelerator") -> "torch.nn.Module":
    r"""A frozen model that runs at every step (WSPO's per-step models, WPO's reference), prepared for inference as
    LLaMA-Factory's DPO and KTO trainers prepare their reference model.

    The same branches in the same order: dropout off; under DeepSpeed, TRL's ``prepare_deepspeed`` (the frozen copy
    sharded only under ZeRO-3), except for 4- and 8-bit models, which bitsandbytes has already placed on their
    device; under FSDP, ``fsdp2_prepare_model`` or TRL's ``prepare_fsdp``; otherwise ``prepare_model`` in evaluation
    mode (placed on the device, never wrapped for gradient synchronisation). DeepSpeed and FSDP are read from the
    accelerator's state as ``Trainer.is_deepspeed_enabled`` and ``Trainer.is_fsdp_enabled`` read them.
    """
    from trl.models.utils import prepare_deepspeed, prepare_fsdp
    from trl.trainer.utils import disable_dropout_in_model

    disable_dropout_in_model(model)
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
            return model

        return prepare_deepspeed(model, accelerator)

    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        if accelerator.is_fsdp2:
            from accelerate.utils.fsdp_utils import fsdp2_prepare_model

            return fsdp2_prepare_model(accelerator, model)

        return prepare_fsdp(model, accelerator)

    model = accelerator.prepare_model(model, evaluation_mode=True)
    model.eval()
    return model


def train_and_evaluate(
    trainer,
    dataset_module: dict,
    model_args: "ModelArguments",
    data_args,
    plot_keys: Sequence[str],
    tps_stage: str,
    plot_extra: Callable[[str], str | None] | None = None,
    drop_eval_rewards: bool = False,
) -> None:
    r"""Train, save, plot and evaluate as LLaMA-Factory's own workflows do (with the trainer's own arguments)."""
    training_args, finetuning_args = trainer.args, trainer.finetuning_args
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        if finetuning_args.include_effective_tokens_per_second:
            train_result.metrics["effective_tokens_per_sec"] = calculate_tps(
                dataset_module["train_dataset"], train_result.metrics, stage=tps_stage
            )

        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero() and finetuning_args.plot_loss:
            keys = list(plot_keys)
            if isinstance(dataset_module.get("eval_dataset"), dict):
                keys += [f"eval_{key}_loss" for key in dataset_module["eval_dataset"].keys()]
            else:
                keys += ["eval_loss"]

            plot_loss(training_args.output_dir, keys=keys)
            figure = plot_extra(training_args.output_dir) if plot_extra else None
            if figure:
                print("Figure saved at:", figure)

    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        if drop_eval_rewards:  # unable to compute rewards if the reference model is the model itself
            for key in [key for key in metrics if "rewards" in key]:
                metrics.pop(key)

        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    create_modelcard_and_push(trainer, model_args, data_args, training_args, finetuning_args)
