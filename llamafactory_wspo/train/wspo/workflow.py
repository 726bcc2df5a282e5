"""``run_wspo``: YAML arguments -> data -> precompute (or its cache) -> trainer -> save, plot."""

from typing import TYPE_CHECKING

import torch
from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.model import load_model, load_tokenizer
from llamafactory.train.trainer_utils import create_ref_model

from ...data import SFTDataCollatorWithLogps, check_wspo_data, get_wspo_dataset
from ...logging import get_logger
from ...precompute import precompute_logps
from ..trainer_utils import check_model_paths, check_vocabularies, frozen_model, reference_model, train_and_evaluate
from .trainer import CustomWSPOTrainer, wspo_targets


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
    check_model_paths(model_args, finetuning_args, WSPO_MODEL_KEYS)
    pairwise = check_wspo_data(data_args, finetuning_args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    check_vocabularies(tokenizer, model_args, finetuning_args, WSPO_MODEL_KEYS)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    dataset_module = get_wspo_dataset(
        template, model_args, data_args, training_args, finetuning_args, pairwise, **tokenizer_module
    )
    storage_dtype = model_args.compute_dtype or torch.float32
    logger.info_rank0(
        f"WSPO: gamma (pref_beta) = {finetuning_args.pref_beta}, pref_ftx = {finetuning_args.pref_ftx}, "
        f"{'precomputed' if finetuning_args.precompute_logps else 'per-step'} weak and reference log-probs."
    )

    def make_collator(model=None, store=None) -> SFTDataCollatorWithLogps:
        return SFTDataCollatorWithLogps(
            template=template,
            model=model,
            pad_to_multiple_of=8,
            label_pad_token_id=IGNORE_INDEX,
            compute_dtype=model_args.compute_dtype,
            store=store,
            **tokenizer_module,
        )

    frozen = [
        reference_model(tokenizer, model_args, finetuning_args),
        frozen_model("weak_base", tokenizer, model_args, finetuning_args.weak_base_model),
        frozen_model("weak_aligned", tokenizer, model_args, finetuning_args.weak_aligned_model),
    ]
    store = None
    if finetuning_args.precompute_logps:
        splits = [dataset_module.get("train_dataset")]
        eval_dataset = dataset_module.get("eval_dataset")
        splits += list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]
        store = precompute_logps(
            datasets=[split for split in splits if split is not None],
            models=frozen,
            combine=lambda logps: wspo_targets(logps, storage_dtype),
            collate=make_collator(),
            cache_dir=finetuning_args.get_logps_cache_dir(),
            extra={
                "stage": "wspo",
                "template": data_args.template,
                "cutoff_len": data_args.cutoff_len,
                "wspo_response": finetuning_args.wspo_response if pairwise else None,
                "dtype": str(storage_dtype),
                "tokenizer_size": len(tokenizer),
            },
            batch_size=finetuning_args.precompute_batch_size or training_args.per_device_eval_batch_size,
            show_progress=training_args.should_log,
        )

    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    frozen_models = {}
    if not finetuning_args.precompute_logps:
        frozen_models["weak_base_model"] = frozen[1].load()
        frozen_models["weak_aligned_model"] = frozen[2].load()
        frozen_models["ref_model"] = create_ref_model(model_args, finetuning_args)

    trainer = CustomWSPOTrainer(
        model=model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=make_collator(model, store),
        callbacks=callbacks,
        storage_dtype=storage_dtype,
        **frozen_models,
        **dataset_module,
        **tokenizer_module,
    )

    train_and_evaluate(
        trainer,
        dataset_module,
        model_args,
        data_args,
        training_args,
        finetuning_args,
        plot_keys=["loss", "wspo/fit_mse"],
        tps_stage="sft",
    )
