"""``run_wspo``: YAML arguments -> data -> precompute (or its cache) -> trainer -> save, plot."""

from typing import TYPE_CHECKING

import torch
from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.model import load_model, load_tokenizer

from ...data import SFTDataCollatorWithLogps, check_wspo_data, get_wspo_dataset, max_token_id
from ...frozen import frozen_models
from ...host.packing import restore_neat_packing
from ...logging import get_logger
from ...logps.shift_stats import report as report_weak_shift
from ...vocab import check_embedding_sizes, cross_tokenizer_side
from ..trainer_utils import (
    check_model_paths,
    check_packing,
    packing_cache_key,
    packing_collator_args,
    precompute_frozen_logps,
    train_and_evaluate,
    training_attn_implementation,
)
from .targets import projected_targets, wspo_targets
from .trainer import CustomWSPOTrainer


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments, TrainerCallback

    from ...hparams import WSPOArguments


logger = get_logger(__name__)
WSPO_MODEL_KEYS = ("weak_base_model", "weak_aligned_model", "ref_model")


def run_wspo(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "WSPOArguments",
    callbacks: list["TrainerCallback"] | None = None,
):
    restore_neat_packing(model_args, data_args)
    check_model_paths(model_args, finetuning_args, WSPO_MODEL_KEYS)
    pairwise = check_wspo_data(data_args, finetuning_args)
    if data_args.packing:
        check_packing(model_args, data_args, training_args, finetuning_args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    frozen = frozen_models(model_args, finetuning_args)
    weak_side = cross_tokenizer_side(tokenizer, frozen, model_args, data_args, finetuning_args)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    dataset_module = get_wspo_dataset(
        template, model_args, data_args, training_args, finetuning_args, pairwise, weak_side, **tokenizer_module
    )
    if weak_side is None:
        check_embedding_sizes(frozen, max_token_id(dataset_module), len(tokenizer))
    else:  # the weak models score the weak rendering of each row
        check_embedding_sizes([frozen.ref], max_token_id(dataset_module), len(tokenizer))
        weak_models = [frozen.weak_base, frozen.weak_aligned]
        check_embedding_sizes(
            weak_models, max_token_id(dataset_module, weak=True), len(weak_side.tokenizer), "weak_base_model"
        )
        frozen = frozen.weak_models_score_weak_columns()
    storage_dtype = model_args.compute_dtype or torch.float32
    logger.info_rank0(
        f"WSPO: gamma (pref_beta) = {finetuning_args.pref_beta}, pref_ftx = {finetuning_args.pref_ftx}, "
        f"{'precomputed' if finetuning_args.precompute_logps else 'per-step'} weak and reference log-probs."
    )
    collator_args = dict(
        template=template,
        pad_to_multiple_of=8,
        label_pad_token_id=IGNORE_INDEX,
        compute_dtype=model_args.compute_dtype,
        **tokenizer_module,
    )
    collator_args.update(packing_collator_args(model_args, data_args))

    store = None
    if finetuning_args.precompute_logps:
        store = precompute_frozen_logps(
            dataset_module,
            frozen,
            combine=lambda logps: (projected_targets if weak_side else wspo_targets)(logps, storage_dtype),
            collate=weak_side.collators(collator_args) if weak_side else SFTDataCollatorWithLogps(**collator_args),
            training_args=training_args,
            finetuning_args=finetuning_args,
            extra={
                "stage": "wspo",
                "template": data_args.template,
                "cutoff_len": data_args.cutoff_len,
                "wspo_response": finetuning_args.wspo_response if pairwise else None,
                "dtype": str(storage_dtype),
                "tokenizer_size": len(tokenizer),
                **(weak_side.cache_key() if weak_side else {}),
                **packing_cache_key(data_args),
            },
        )
        report_weak_shift(store.statistics, finetuning_args.wspo_shift_warning, finetuning_args.pref_beta)

    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    per_step_models = {}
    if not finetuning_args.precompute_logps:
        per_step_models = {
            "weak_base_model": frozen.weak_base.load(),
            "weak_aligned_model": frozen.weak_aligned.load(),
            "ref_model": None if frozen.ref.is_policy else frozen.ref.load(),
        }

    if data_args.packing:  # as LLaMA-Factory's SFT workflow: the loaded policy's attention and compute dtype
        collator_args["attn_implementation"] = training_attn_implementation(model, collator_args, store is not None)
        collator_args["compute_dtype"] = model_args.compute_dtype

    trainer = CustomWSPOTrainer(
        model=model,
        args=training_args,
        finetuning_args=finetuning_args,
        packed=data_args.packing,
        data_collator=SFTDataCollatorWithLogps(model=model, store=store, **collator_args),
        callbacks=callbacks,
        storage_dtype=storage_dtype,
        **per_step_models,
        **dataset_module,
        **tokenizer_module,
    )

    train_and_evaluate(
        trainer,
        dataset_module,
        model_args,
        data_args,
        plot_keys=["loss", "wspo/fit_mse"],
        tps_stage="sft",
    )
