"""Helpers shared by the plugin stages' workflows: argument checks, the frozen models, the training loop."""

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from llamafactory.extras.misc import calculate_tps
from llamafactory.extras.ploting import plot_loss
from llamafactory.hparams import FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer
from llamafactory.train.trainer_utils import create_modelcard_and_push

from ..precompute import FrozenModel, weights_identity


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizer

    from ..hparams import PluginArguments


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


def frozen_model_args(model_args: "ModelArguments", name_or_path: str, adapters: str | None = None):
    return ModelArguments.copyfrom(
        model_args, model_name_or_path=name_or_path, adapter_name_or_path=adapters, quantization_bit=None
    )


def check_vocabularies(
    tokenizer: "PreTrainedTokenizer",
    model_args: "ModelArguments",
    finetuning_args: "PluginArguments",
    keys: Sequence[str] = ("ref_model",),
) -> None:
    r"""Frozen models score the policy's token ids, so every tokenizer must map text to the same ids."""
    strong_vocab = tokenizer.get_vocab()
    for key in keys:
        name = getattr(finetuning_args, key)
        if not name:
            continue

        try:
            other = load_tokenizer(frozen_model_args(model_args, name))["tokenizer"]
        except Exception as err:
            raise ValueError(f"`{key}` ({name}) has no tokenizer that can be loaded: {err}") from err

        other_vocab = other.get_vocab()
        if other_vocab != strong_vocab:
            differing = sorted(set(strong_vocab.items()) ^ set(other_vocab.items()), key=lambda item: item[1])
            example = ", ".join(f"{token!r}->{idx}" for token, idx in differing[:3])
            raise ValueError(
                f"`{key}` ({name}) and `model_name_or_path` ({model_args.model_name_or_path}) have different "
                f"vocabularies ({len(other_vocab)} vs {len(strong_vocab)} tokens; differing entries e.g. {example}). "
                "Both models score the same token ids: use models that share one tokenizer "
                "(e.g. Qwen2-1.5B with Qwen2-7B)."
            )


def frozen_model(
    name: str, tokenizer: "PreTrainedTokenizer", model_args: "ModelArguments", name_or_path: str, adapters=None
) -> FrozenModel:
    r"""A frozen model loaded with LLaMA-Factory's loader, identified by its weights for the cache."""
    frozen_args = frozen_model_args(model_args, name_or_path, adapters)

    def load():
        return load_model(tokenizer, frozen_args, FinetuningArguments())

    identity = weights_identity(name_or_path, model_args.model_revision, adapters.split(",") if adapters else None)
    return FrozenModel(name, load, identity)


def reference_model(
    tokenizer: "PreTrainedTokenizer", model_args: "ModelArguments", finetuning_args: "PluginArguments"
) -> FrozenModel:
    r"""The reference: ``ref_model`` or, by default, the policy's checkpoint (with LoRA: without the adapters)."""
    if finetuning_args.ref_model:
        return frozen_model(
            "ref", tokenizer, model_args, finetuning_args.ref_model, finetuning_args.ref_model_adapters
        )

    adapters = model_args.adapter_name_or_path
    if finetuning_args.finetuning_type == "lora" or not adapters:
        adapters = None  # LoRA: the model with its adapters disabled
    else:
        adapters = ",".join(adapters)

    return frozen_model("ref", tokenizer, model_args, model_args.model_name_or_path, adapters)


def train_and_evaluate(
    trainer,
    dataset_module: dict,
    model_args: "ModelArguments",
    data_args,
    training_args,
    finetuning_args: "PluginArguments",
    plot_keys: Sequence[str],
    tps_stage: str,
    plot_extra: Callable[[str], str | None] | None = None,
    drop_eval_rewards: bool = False,
) -> None:
    r"""Train, save, plot and evaluate as LLaMA-Factory's own workflows do."""
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
