"""``run_wpo``: pairwise data -> reference log-probs (precomputed or per step) -> weighted DPO -> save, plot."""

from typing import TYPE_CHECKING, Any

import torch
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.model import load_model, load_tokenizer

from ...data import (
    KTODataCollatorWithLogps,
    PackedPairsCollatorWithLogps,
    PairwiseDataCollatorWithLogps,
    SFTDataCollatorWithLogps,
    check_wpo_data,
    drop_unscored,
    kto_rows,
    map_splits,
    max_token_id,
    pack_pairs,
    select_responses,
)
from ...frozen import frozen_models
from ...host.packing import restore_neat_packing
from ...hub import offline_data_sets
from ...logging import get_logger
from ...logps.store import REF_LOGPS
from ...vocab import check_embedding_sizes, check_vocabularies
from ..plots import plot_wpo_weights
from ..trainer_utils import (
    check_model_paths,
    check_packing,
    packing_collator_args,
    precompute_frozen_logps,
    train_and_evaluate,
    training_attn_implementation,
)
from .kto_trainer import CustomWPOKTOTrainer
from .trainer import CustomWPOTrainer


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments, TrainerCallback

    from ...frozen import FrozenModels
    from ...hparams import PluginArguments
    from ...logps.store import LogpsStore


logger = get_logger(__name__)


def run_wpo(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "PluginArguments",
    callbacks: list["TrainerCallback"] | None = None,
):
    restore_neat_packing(model_args, data_args)
    check_model_paths(model_args, finetuning_args)
    kto = finetuning_args.pref_loss == "kto"
    check_wpo_data(data_args, kto)
    packed = bool(data_args.packing)  # `neat_packing` means the same: every sequence attends only to itself
    if packed:
        check_packing(model_args, data_args, training_args, finetuning_args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    frozen = frozen_models(model_args, finetuning_args)
    check_vocabularies(tokenizer, frozen, model_args.model_name_or_path)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    with offline_data_sets():
        dataset_module = get_dataset(
            template, model_args, data_args, training_args, stage="kto" if kto else "rm", **tokenizer_module
        )
    label_columns = ("labels",) if kto else ("chosen_labels", "rejected_labels")
    dataset_module = drop_unscored(dataset_module, label_columns, data_args.cutoff_len)
    if packed:
        dataset_module = map_splits(lambda split: pack_pairs(split, data_args.cutoff_len), dataset_module)
    check_embedding_sizes(frozen, max_token_id(dataset_module), len(tokenizer))
    precompute = finetuning_args.precompute_logps and finetuning_args.use_ref_model
    logger.info_rank0(
        f"WPO: pref_loss = {finetuning_args.pref_loss}, alignment = {finetuning_args.wpo_alignment}, "
        f"weighting = {finetuning_args.wpo_weighting}, reference log-probs "
        f"{'precomputed' if precompute else 'per step' if finetuning_args.use_ref_model else 'not used'}"
        f"{', packed pairs' if packed else ''}."
    )

    collator_args = dict(template=template, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, **tokenizer_module)
    store = None
    if precompute:
        store = precompute_reference(
            dataset_module, frozen, collator_args, model_args, data_args, training_args, finetuning_args, kto
        )

    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    ref_model = None
    if finetuning_args.use_ref_model and not precompute:
        if finetuning_args.ref_model is None and not training_args.do_train:
            ref_model = model  # as the DPO stage: evaluation only, the model is its own reference
        elif not frozen.ref.is_policy:
            ref_model = frozen.ref.load()

    if kto:
        collator = KTODataCollatorWithLogps(model=model, store=store, **collator_args)
    elif packed:  # the pass laid the rows out for the attention the policy loaded with (or it stops here)
        pass_attn = packing_collator_args(model_args, data_args)["attn_implementation"]
        attn = training_attn_implementation(model, {"attn_implementation": pass_attn}, store is not None)
        collator = PackedPairsCollatorWithLogps(
            model=model,
            store=store,
            attn_implementation=attn,
            compute_dtype=model_args.compute_dtype or torch.float32,
            **collator_args,
        )
    else:
        collator = PairwiseDataCollatorWithLogps(model=model, store=store, **collator_args)

    trainer_args = {} if kto else {"packed": packed}
    trainer = (CustomWPOKTOTrainer if kto else CustomWPOTrainer)(
        model=model,
        ref_model=ref_model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=collator,
        callbacks=callbacks,
        **trainer_args,
        **dataset_module,
        **tokenizer_module,
    )

    train_and_evaluate(
        trainer,
        dataset_module,
        model_args,
        data_args,
        plot_keys=["loss", "rewards/chosen" if kto else "rewards/accuracies", "wpo/weight_mean"],
        tps_stage="sft" if kto or packed else "rm",  # a KTO row, or a packed row, is in `input_ids`
        plot_extra=plot_wpo_weights,
        drop_eval_rewards=id(model) == id(ref_model),
    )


def precompute_reference(
    dataset_module: dict[str, Any],
    frozen: "FrozenModels",
    collator_args: dict[str, Any],
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "PluginArguments",
    kto: bool = False,
) -> "LogpsStore":
    r"""The reference log-probs of every sequence that training scores, from the pass or its cache.

    Unpacked, one row per response (KTO: per target and KL row); packed (:func:`pack_pairs`), the packed rows
    themselves, with the attention that training gives them (each sequence attends only to itself), and the
    packing options in the cache key (only then, so that an unpacked cache keeps its key).
    """
    storage_dtype = model_args.compute_dtype or torch.float32
    extra = {
        "stage": "wpo-kto" if kto else "wpo",
        "template": data_args.template,
        "cutoff_len": data_args.cutoff_len,
        "dtype": str(storage_dtype),
        "tokenizer_size": len(collator_args["tokenizer"]),
    }
    if data_args.packing and not kto:
        extra.update(packing=True, neat_packing=True)  # `packing` alone means `neat_packing` for WPO
        collate = PackedPairsCollatorWithLogps(
            attn_implementation=packing_collator_args(model_args, data_args)["attn_implementation"],
            compute_dtype=storage_dtype,
            **collator_args,
        )
        rows = None
    else:
        collate = SFTDataCollatorWithLogps(**collator_args)  # one row per response
        rows = kto_rows if kto else lambda split: select_responses(split, "both")

    return precompute_frozen_logps(
        dataset_module,
        frozen,
        combine=lambda logps: {REF_LOGPS: logps["ref"].to(storage_dtype)},
        collate=collate,
        training_args=training_args,
        finetuning_args=finetuning_args,
        extra=extra,
        rows=rows,
    )
