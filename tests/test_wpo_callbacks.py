"""``wpo_weights.jsonl``: one line per optimizer step of this run, whether it starts afresh or resumes."""

import json
from pathlib import Path

import pytest
import torch
from helpers.train import wpo_config
from transformers import TrainerControl, TrainerState, TrainingArguments

from llamafactory_wspo.train.callbacks import WPO_WEIGHTS_LOG, WPOWeightsCallback


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / WPO_WEIGHTS_LOG).read_text().splitlines()]


def _step_weights(seed: int, step: int, micro_batches: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    r"""``(weights, chosen)`` of each micro-batch of one step: four sequences, the first two chosen."""
    generator = torch.Generator().manual_seed(1000 * seed + step)
    chosen = torch.tensor([True, True, False, False])
    return [(torch.rand(4, generator=generator), chosen) for _ in range(micro_batches)]


def _train(output_dir: Path, seed: int, steps: range) -> dict[int, dict]:
    r"""The callback's hooks as the trainer calls them, from ``steps.start`` (a resume if not 0) to the end.

    Returns the records that these steps should leave, computed from the weights handed to the callback.
    """
    from accelerate import Accelerator

    args = TrainingArguments(output_dir=str(output_dir), report_to="none")
    state, control = TrainerState(global_step=steps.start), TrainerControl()
    callback = WPOWeightsCallback(Accelerator())
    callback.on_train_begin(args, state, control)
    expected = {}
    for step in steps:
        micro_batches = _step_weights(seed, step)
        for weights, chosen in micro_batches:
            callback.add(weights, chosen)
            callback.on_substep_end(args, state, control)

        state.global_step += 1
        callback.on_step_end(args, state, control)
        expected[step] = {
            "step": step,
            "chosen": torch.cat([weights[chosen] for weights, chosen in micro_batches]).tolist(),
            "rejected": torch.cat([weights[~chosen] for weights, chosen in micro_batches]).tolist(),
        }

    return expected


def test_a_fresh_run_replaces_the_records_of_an_earlier_run(tmp_path):
    _train(tmp_path, seed=0, steps=range(0, 3))
    assert [record["step"] for record in _records(tmp_path)] == [0, 1, 2]
    expected = _train(tmp_path, seed=1, steps=range(0, 2))  # a rerun in the same output folder
    assert _records(tmp_path) == [expected[0], expected[1]]


def test_a_resumed_run_records_each_step_once(tmp_path):
    first = _train(tmp_path, seed=0, steps=range(0, 4))
    with (tmp_path / WPO_WEIGHTS_LOG).open("a") as f:
        f.write('{"step": 4, "chosen": [0.1')  # killed while writing step 4

    resumed = _train(tmp_path, seed=1, steps=range(2, 5))  # from the checkpoint after two steps
    assert _records(tmp_path) == [first[0], first[1], resumed[2], resumed[3], resumed[4]]


def test_trainer_records_its_steps_and_resumes_from_a_checkpoint(assets, tmp_path):
    r"""``CustomWPOTrainer`` with ``plot_loss``: three steps, a resume from the checkpoint after two, a rerun."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    from llamafactory_wspo.data import PairwiseDataCollatorWithLogps
    from llamafactory_wspo.losses import IGNORE_INDEX
    from llamafactory_wspo.train.plots import plot_wpo_weights
    from llamafactory_wspo.train.wpo.trainer import CustomWPOTrainer

    config = wpo_config(assets, tmp_path, pref_loss="simpo", plot_loss=True, save_strategy="steps", save_steps=2)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)
    model = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
    collator = PairwiseDataCollatorWithLogps(template=template, model=model, pad_to_multiple_of=8, **tokenizer_module)
    trainer = CustomWPOTrainer(
        model=model,
        ref_model=None,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=collator,
        train_dataset=dataset["train_dataset"],
        **tokenizer_module,
    )
    first_batch = collator([dataset["train_dataset"][i] for i in range(4)])  # no shuffling
    with torch.no_grad():  # w(x, y) = exp(mean_t [log p(y_t) - log sum_v p(v)^2]) in float64, before any update
        logits = model(input_ids=first_batch["input_ids"], attention_mask=first_batch["attention_mask"]).logits
        log_p = logits[:, :-1].double().log_softmax(-1)
        labels = first_batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        aligned = log_p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) - (2 * log_p).logsumexp(-1)
        initial_weights = ((aligned * mask).sum(-1) / mask.sum(-1)).exp()

    out = Path(training_args.output_dir)
    trainer.train()
    first = _records(out)
    assert [record["step"] for record in first] == [0, 1, 2] and len(first[0]["rejected"]) == 4
    assert first[0]["chosen"] + first[0]["rejected"] == pytest.approx(initial_weights.tolist(), rel=1e-5)

    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    resumed = _records(out)
    assert [record["step"] for record in resumed] == [0, 1, 2] and resumed[:2] == first[:2]
    assert resumed[2]["chosen"] == pytest.approx(first[2]["chosen"], rel=1e-6)  # the same step again

    trainer.train()  # a fresh run in the same folder
    assert [record["step"] for record in _records(out)] == [0, 1, 2]
    assert plot_wpo_weights(str(out)) == str(out / "training_wpo_weights.png")
    assert (out / "training_wpo_weights.png").is_file()
