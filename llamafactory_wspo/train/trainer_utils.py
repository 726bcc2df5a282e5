"""Helpers shared by the plugin stages' workflows: argument checks, the precompute pass, the per-step frozen models,
the training loop."""

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from llamafactory.extras.misc import calculate_tps
from llamafactory.extras.ploting import plot_loss
from llamafactory.train.trainer_utils import create_modelcard_and_push

from ..data import dataset_splits
from ..logps.precompute import precompute_logps


if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    from ..frozen import FrozenModels
    from ..hparams import PluginArguments
    from ..logps.store import LogpsStore


def looks_like_local_path(name: str) -> bool:
    r"""Decided locally, never by the hub: a value that starts with ``/``, ``./``, ``../`` or ``~``, has more than one
    ``/`` (hub ids are ``name`` or ``org/name``), or whose first component is an existing local folder
    (``saves/qwen2-grpo`` where ``saves/`` exists) is a path."""
    if name.startswith(("/", "./", "../", "~")) or name in (".", "..") or name.count("/") > 1:
        return True

    if os.sep != "/" and os.sep in name:
        return True

    return "/" in name and os.path.isdir(name.split("/", 1)[0])


def hub_offline() -> bool:
    return os.getenv("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def check_model_paths(
    model_args: "ModelArguments", finetuning_args: "PluginArguments", keys: Sequence[str] = ("ref_model",)
) -> None:
    r"""Before any load, one :class:`~llamafactory_wspo.hparams.PluginInputError` per model argument: a local path
    (:func:`looks_like_local_path`) that is not an existing folder, or, with ``HF_HUB_OFFLINE=1``, a hub id that is not in
    the local hub cache. Other hub ids are left to the loader."""
    from ..hparams import PluginInputError

    for key in ("model_name_or_path", *keys):
        value = model_args.model_name_or_path if key == "model_name_or_path" else getattr(finetuning_args, key)
        if not value or os.path.isdir(os.path.expanduser(value)):
            continue

        if os.path.isfile(os.path.expanduser(value)):
            raise PluginInputError(f"`{key}: {value}` is a file: point it at a model folder or a hub id (org/name).")

        if looks_like_local_path(value):
            raise PluginInputError(
                f"`{key}` is a path that does not exist: {value}. Point it at a model folder (a local path is never "
                "looked up on the hub), or give a hub id (org/name)."
            )

        revision = model_args.model_revision if key == "model_name_or_path" else "main"
        if hub_offline() and not _in_hub_cache(value, revision, model_args.cache_dir):
            raise PluginInputError(
                f"`{key}: {value}` is not in the local hub cache, and HF_HUB_OFFLINE=1 stops its download: download "
                f"it once online (`huggingface-cli download {value}`), point `{key}` at a local folder, or unset "
                "HF_HUB_OFFLINE."
            )


def _in_hub_cache(repo_id: str, revision: str | None, cache_dir: str | None) -> bool:
    r"""Whether the Hugging Face cache holds ``repo_id``'s ``config.json`` (ModelScope and Modelers: not checked)."""
    if any(
        os.getenv(key, "0").lower() in ("1", "true", "yes", "on") for key in ("USE_MODELSCOPE_HUB", "USE_OPENMIND_HUB")
    ):
        return True

    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision or "main")
    except ValueError:  # not a valid repo id: the loader names it
        return True
    return isinstance(found, str)


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
    batch_size = finetuning_args.precompute_batch_size or training_args.per_device_eval_batch_size
    if (
        getattr(collate, "neat_packing", False)
        and getattr(collate, "attn_implementation", None) == "flash_attention_2"
    ):
        batch_size = 1  # LLaMA-Factory's collator folds a packed row into flash-attention's varlen call one at a time
    return precompute_logps(
        datasets=[rows(split) for split in splits] if rows else splits,
        models=list(models),
        combine=combine,
        collate=collate,
        cache_dir=finetuning_args.get_logps_cache_dir(),
        extra=extra,
        batch_size=batch_size,
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


def packing_collator_args(model_args: "ModelArguments", data_args: "DataArguments") -> dict[str, Any]:
    r"""What LLaMA-Factory's ``SFTDataCollatorWith4DAttentionMask`` needs for packed rows, as its SFT workflow passes
    it: the block-diagonal mask with ``neat_packing``, and the attention implementation, taken here from
    ``flash_attn`` because the precompute pass collates before any model loads (flash-attention reads the example
    boundaries from ``position_ids``; eager and SDPA get the host's 4D mask)."""
    if not data_args.packing:
        return {}

    fa2 = str(model_args.flash_attn) in ("fa2", "AttentionFunction.FA2")
    return {
        # Packed rows are all `cutoff_len + 1` long already; padding them further would leave `position_ids`, which
        # the host's collator does not pad, one length and the other columns another.
        "pad_to_multiple_of": None,
        # The 4D mask's dtype: the models' compute dtype, known once they load (the pass sets it per model).
        "compute_dtype": model_args.compute_dtype or torch.float32,
        "block_diag_attn": model_args.block_diag_attn,
        "neat_packing": data_args.neat_packing,
        "attn_implementation": "flash_attention_2" if fa2 else "sdpa",
    }


def training_attn_implementation(model: "torch.nn.Module", collator_args: dict[str, Any], precomputed: bool) -> str:
    r"""The attention implementation of the training collator: the loaded policy's, as LLaMA-Factory's SFT workflow
    takes it. With packed rows whose frozen log-probs were precomputed, the pass must have laid the rows out for the
    same one (flash-attention or a 4D mask), or the stored values would not be the ones training sees."""
    chosen = collator_args["attn_implementation"]
    loaded = getattr(model.config, "_attn_implementation", None)
    if precomputed and (loaded == "flash_attention_2") != (chosen == "flash_attention_2"):
        from ..hparams import PluginInputError

        raise PluginInputError(
            f"The policy loaded with attention `{loaded}`, but the precompute pass laid the packed rows out for "
            f"`{chosen}`: set `flash_attn` explicitly (fa2, or sdpa) so that both use the same."
        )

    return loaded


def packing_cache_key(data_args: "DataArguments") -> dict[str, Any]:
    r"""The packing options in the cache key: only when packing is on, so an unpacked cache keeps the key it had
    before packing existed (the packed rows themselves are in the key through their uids)."""
    if not data_args.packing:
        return {}

    return {"packing": True, "neat_packing": bool(data_args.neat_packing)}


def check_packing(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "PluginArguments",
) -> None:
    r"""Before any load, for a packing stage (WSPO, WPO) with ``packing`` on: packing reads the whole data set (not
    streamed), and flash-attention's varlen path takes one packed row per forward, as LLaMA-Factory's neat packing
    does (WPO's packed pairs are always neat: each sequence attends only to itself)."""
    from ..hparams import PluginInputError

    stage = finetuning_args.stage
    if data_args.streaming:
        raise PluginInputError(
            f"`packing` for `stage: {stage}` packs the whole data set, which `streaming: true` never holds: set "
            "`streaming: false`, or `packing: false`."
        )

    neat = data_args.neat_packing or stage == "wpo"
    if not neat or packing_collator_args(model_args, data_args)["attn_implementation"] != "flash_attention_2":
        return

    sizes = {"per_device_train_batch_size": training_args.per_device_train_batch_size}
    if training_args.do_eval:
        sizes["per_device_eval_batch_size"] = training_args.per_device_eval_batch_size
    if finetuning_args.precompute_logps and (stage == "wspo" or finetuning_args.use_ref_model):
        sizes["precompute_batch_size"] = (
            finetuning_args.precompute_batch_size or training_args.per_device_eval_batch_size
        )

    over = [f"`{name}: {size}`" for name, size in sizes.items() if size != 1]
    if over:
        examples = "pairs" if stage == "wpo" else "examples"
        raise PluginInputError(
            f"`packing` with `flash_attn: fa2` takes one packed row per batch, but {', '.join(over)}: set them to 1 "
            f"(a packed row already holds several {examples}; raise `cutoff_len` for more per row)."
        )
