"""``run_grpo``: YAML arguments -> reward functions -> prompts -> TRL's GRPO -> save, plot.

The stage serves the weak model's length alignment of the WSPO paper's XSUM experiment (the paper
used PPO; stock PPO of LLaMA-Factory 0.9.5 cannot run next to the TRL release its DPO stage needs).
Prompts come from LLaMA-Factory's own data pipeline (`stage: ppo` preprocessing, so the chat template
and `cutoff_len` apply); TRL's ``GRPOTrainer`` samples ``grpo_num_generations`` outputs per prompt,
scores them with the reward functions named in YAML and optimises the group-relative advantage with a
KL penalty (``grpo_beta``) towards the initial model.
"""

from typing import TYPE_CHECKING

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.model import load_model, load_tokenizer

from ...data import check_grpo_data, map_splits
from ...host.compat import ensure_warnings_issued
from ...hub import offline_data_sets
from ...logging import get_logger
from ..trainer_utils import check_model_paths, train_and_evaluate
from .reward_funcs import resolve_reward_funcs


if TYPE_CHECKING:
    from datasets import Dataset
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import PreTrainedTokenizer, Seq2SeqTrainingArguments, TrainerCallback

    from ...hparams import GRPOArguments


logger = get_logger(__name__)


def to_prompt_dataset(dataset: "Dataset", tokenizer: "PreTrainedTokenizer") -> "Dataset":
    r"""LLaMA-Factory's tokenized prompts (chat template applied) as the text ``prompt`` column TRL expects.

    The reference response, when the data set has one, is kept as ``reference`` for reward functions.
    """

    def convert(batch: dict[str, list]) -> dict[str, list[str]]:
        prompts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
        references = [[token for token in labels if token >= 0] for labels in batch["labels"]]
        return {"prompt": prompts, "reference": tokenizer.batch_decode(references, skip_special_tokens=True)}

    return dataset.map(convert, batched=True, remove_columns=dataset.column_names, desc="Decoding prompts")


def run_grpo(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "GRPOArguments",
    callbacks: list["TrainerCallback"] | None = None,
):
    check_model_paths(model_args, finetuning_args, ())
    check_grpo_data(data_args)
    reward_funcs = resolve_reward_funcs(finetuning_args)
    from .trainer import CustomGRPOTrainer, build_grpo_config  # imports TRL's GRPO, after the cheap checks

    config = build_grpo_config(training_args, finetuning_args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    with offline_data_sets():
        dataset_module = get_dataset(template, model_args, data_args, training_args, stage="ppo", **tokenizer_module)
    dataset_module = map_splits(lambda split: to_prompt_dataset(split, tokenizer), dataset_module)

    logger.info_rank0(
        f"GRPO: rewards {finetuning_args.grpo_reward_funcs}, {finetuning_args.grpo_num_generations} outputs per "
        f"prompt, KL coefficient {finetuning_args.grpo_beta}."
    )
    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    ensure_warnings_issued(model)

    trainer = CustomGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        finetuning_args=finetuning_args,
        train_dataset=dataset_module.get("train_dataset"),
        eval_dataset=dataset_module.get("eval_dataset"),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    # `tps_stage` is unused: `include_effective_tokens_per_second` is refused for this stage
    train_and_evaluate(trainer, dataset_module, model_args, data_args, plot_keys=["loss", "reward"], tps_stage="sft")
