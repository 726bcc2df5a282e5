"""``run_wpo``: pairwise data -> reference log-probs (precomputed or per step) -> weighted DPO -> save, plot."""

from typing import TYPE_CHECKING

import torch
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.model import load_model, load_tokenizer

from ...data import (
    KTODataCollatorWithLogps,
    PairwiseDataCollatorWithLogps,
    SFTDataCollatorWithLogps,
    check_wpo_data,
    drop_unscored,
    kto_rows,
    max_token_id,
    select_responses,
)
from ...frozen import frozen_models
from ...logging import get_logger
from ...logps.store import REF_LOGPS
from ...vocab import check_embedding_sizes, check_vocabularies
from ..plots import plot_wpo_weights
from ..trainer_utils import check_model_paths, precompute_frozen_logps, train_and_evaluate
from .kto_trainer import CustomWPOKTOTrainer
from .trainer import CustomWPOTrainer


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments, TrainerCallback

    from ...hparams import PluginArguments


logger = get_logger(__name__)


def run_wpo(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "PluginArguments",
    callbacks: list["TrainerCallback"] | None = None,
):
    check_model_paths(model_args, finetuning_args)
    kto = finetuning_args.pref_loss == "kto"
    check_wpo_data(data_args, kto)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    frozen = frozen_models(model_args, finetuning_args)
    check_vocabularies(tokenizer, frozen, model_args.model_name_or_path)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    dataset_module = get_dataset(
        template, model_args, data_args, training_args, stage="kto" if kto else "rm", **tokenizer_module
    )
    label_columns = ("labels",) if kto else ("chosen_labels", "rejected_labels")
    dataset_module = drop_unscored(dataset_module, label_columns, data_args.cutoff_len)
    check_embedding_sizes(frozen, max_token_id(dataset_module), len(tokenizer))
    storage_dtype = model_args.compute_dtype or torch.float32
    precompute = finetuning_args.precompute_logps and finetuning_args.use_ref_model
    logger.info_rank0(
        f"WPO: pref_loss = {finetuning_args.pref_loss}, alignment = {finetuning_args.wpo_alignment}, "
        f"weighting = {finetuning_args.wpo_weighting}, reference log-probs "
        f"{'precomputed' if precompute else 'per step' if finetuning_args.use_ref_model else 'not used'}."
    )

    collator_args = dict(template=template, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, **tokenizer_module)
    store = None
    if precompute:
        store = precompute_frozen_logps(
            dataset_module,
            frozen,
            combine=lambda logps: {REF_LOGPS: logps["ref"].to(storage_dtype)},
            collate=SFTDataCollatorWithLogps(**collator_args),  # one row per response
            training_args=training_args,
            finetuning_args=finetuning_args,
            extra={
                "stage": "wpo-kto" if kto else "wpo",
                "template": data_args.template,
                "cutoff_len": data_args.cutoff_len,
                "dtype": str(storage_dtype),
                "tokenizer_size": len(tokenizer),
            },
            rows=kto_rows if kto else lambda split: select_responses(split, "both"),
        )

    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    ref_model = None
    if finetuning_args.use_ref_model and not precompute:
        if finetuning_args.ref_model is None and not training_args.do_train:
            ref_model = model  # as the DPO stage: evaluation only, the model is its own reference
        elif not frozen.ref.is_policy:
            ref_model = frozen.ref.load()

    collator_class = KTODataCollatorWithLogps if kto else PairwiseDataCollatorWithLogps
    trainer = (CustomWPOKTOTrainer if kto else CustomWPOTrainer)(
        model=model,
        ref_model=ref_model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=collator_class(model=model, store=store, **collator_args),
        callbacks=callbacks,
        **dataset_module,
        **tokenizer_module,
    )

    train_and_evaluate(
        trainer,
        dataset_module,
        model_args,
        data_args,
        plot_keys=["loss", "rewards/chosen" if kto else "rewards/accuracies", "wpo/weight_mean"],
        tps_stage="sft" if kto else "rm",  # a KTO row holds one sequence in `input_ids`
        plot_extra=plot_wpo_weights,
        drop_eval_rewards=id(model) == id(ref_model),
    )
