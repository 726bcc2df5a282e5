"""``stage: wspo`` on packed rows (``packing``/``neat_packing``): the same objective as unpacked rows.

Three levels, each against an independent computation:
- log-probs: a packed row, collated by LLaMA-Factory's own 4D-mask collator, scores every example as that example
  alone (unpadded, one forward each), for Qwen2, Llama and Gemma-2; no example sees another;
- training: one optimiser step over the same examples, packed (one row per micro-batch, accumulated) and unpacked
  (all examples in one batch), gives the same loss and the same update (SGD: the update is the gradient) in the
  precomputed and per-step modes, full and LoRA, for Qwen2 and Llama (SDPA) and Gemma-2 (eager);
- rows: :func:`~llamafactory_wspo.data.packed.pack_batch` (pairwise data sets) lays rows out as the host's
  ``PackedSupervisedDatasetProcessor`` does.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from helpers.train import DS_Z3_CONFIG, grpo_config, log_history, run_train, train_logs, wspo_config
from safetensors.torch import load_file

from llamafactory_wspo.data.packed import pack_batch
from llamafactory_wspo.hparams import PluginInputError
from llamafactory_wspo.losses import IGNORE_INDEX
from llamafactory_wspo.packing import example_index, segment_ids
from llamafactory_wspo.scoring import score_tokens


CUTOFF = 64


def _examples(num: int, seed: int = 0) -> list[dict[str, list[int]]]:
    r"""(prompt, response) examples of random tokens, 6 to 30 tokens long, prompts of 2 to 8 tokens."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        length = int(torch.randint(6, 31, (1,), generator=generator))
        prompt = int(torch.randint(2, 9, (1,), generator=generator))
        ids = torch.randint(3, 90, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def _model(model_type: str, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CUTOFF + 8,
        tie_word_embeddings=False,
    )
    if model_type == "gemma2":  # rows shorter than the sliding window, soft-capped logits
        common.update(head_dim=8, query_pre_attn_scalar=8, sliding_window=CUTOFF + 8, final_logit_softcapping=0.5)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **common), attn_implementation="sdpa")
    return model.float().eval()


def _packed_batch(examples, model) -> dict[str, torch.Tensor]:
    r"""The examples packed as the host packs SFT rows, collated by the host's collator with the block-diagonal
    mask (``neat_packing``), as the WSPO workflow builds it."""
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(97)}, unk_token="t0")),
        pad_token="t0",
        eos_token="t1",
    )
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="empty"))
    rows = pack_batch({key: [ex[key] for ex in examples] for key in ("input_ids", "labels")}, CUTOFF, True, 0)
    features = [{key: rows[key][i] for key in rows} for i in range(len(rows["input_ids"]))]
    collator = SFTDataCollatorWith4DAttentionMask(
        template=template,
        tokenizer=tokenizer,
        model=model,
        pad_to_multiple_of=None,  # as the workflow collates packed rows (see trainer_utils.packing_collator_args)
        label_pad_token_id=IGNORE_INDEX,
        block_diag_attn=True,
        neat_packing=True,
        attn_implementation="sdpa",
        compute_dtype=torch.float32,
    )
    return collator(features)


def _alone(model, example) -> torch.Tensor:
    r"""The example's response log-probs, the example alone in its batch: plain forward, float64 log-softmax."""
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    labels = torch.tensor(example["labels"][1:])
    scored = labels != IGNORE_INDEX
    return logits.log_softmax(-1)[scored].gather(-1, labels[scored].unsqueeze(-1)).squeeze(-1)


def _per_example(batch, logps, mask) -> list[torch.Tensor]:
    index, count = example_index(mask, segment_ids(batch["position_ids"]))
    return [logps[index == i] for i in range(count)]


@pytest.mark.parametrize("model_type", ["qwen2", "llama", "gemma2"])
def test_packed_rows_score_each_example_as_alone(model_type):
    model = _model(model_type)
    examples = _examples(10)
    batch = _packed_batch(examples, model)
    assert batch["attention_mask"].dim() == 4 and batch["input_ids"].size(0) < len(examples)  # packed, 4D mask
    with torch.no_grad():
        logps, _, mask, _ = score_tokens(model, batch)
    per_example = _per_example(batch, logps, mask)
    # pack_batch places examples by length (the host's greedy knapsack): match them by their token ids
    order = sorted(range(len(examples)), key=lambda i: tuple(examples[i]["input_ids"]))
    assert len(per_example) == len(examples)
    found = {}
    for row in range(batch["input_ids"].size(0)):
        segments = segment_ids(batch["position_ids"][row : row + 1])[0]
        for number in segments.unique().tolist():
            ids = batch["input_ids"][row][segments == number].tolist()
            if any(ids == ex["input_ids"] for ex in examples):
                found[tuple(ids)] = len(found)
    assert sorted(found) == [tuple(examples[i]["input_ids"]) for i in order]
    for example in examples:
        expected = _alone(model, example)
        got = per_example[found[tuple(example["input_ids"])]].double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_an_example_never_sees_its_neighbours():
    model = _model("qwen2")
    examples = _examples(10)
    batch = _packed_batch(examples, model)
    with torch.no_grad():
        logps, _, mask, _ = score_tokens(model, batch)

    # change every token of one example (the second of the first row), keeping its length and labels' layout
    changed = {key: value.clone() for key, value in batch.items()}
    segments = segment_ids(batch["position_ids"])
    target = (segments[0] == 1) & (batch["labels"][0] != IGNORE_INDEX)
    assert bool(target.any()) and int(segments[0].max()) >= 2  # the row holds at least three examples
    changed["input_ids"][0][segments[0] == 1] = (changed["input_ids"][0][segments[0] == 1] + 7) % 90 + 3
    changed["labels"][0][target] = changed["input_ids"][0][target]
    with torch.no_grad():
        logps_changed, _, mask_changed, _ = score_tokens(model, changed)

    assert torch.equal(mask, mask_changed)
    own = segments[:, 1:] == 1
    own[1:] = False
    others = mask & ~own
    assert torch.equal(logps[others], logps_changed[others])  # bit-identical
    assert not torch.equal(logps[mask & own], logps_changed[mask & own])  # the changed example did change


def test_pack_batch_lays_rows_out_as_the_host_packs_sft_rows():
    r"""Against ``PackedSupervisedDatasetProcessor`` of LLaMA-Factory on the same tokenized examples."""
    from llamafactory.data.processor.supervised import PackedSupervisedDatasetProcessor
    from llamafactory.hparams import DataArguments

    examples = _examples(12, seed=3)

    class Encoded(PackedSupervisedDatasetProcessor):  # the host's packing of examples already tokenized
        def _encode_data_example(self, prompt, response, **kwargs):
            example = examples[int(prompt[0]["content"])]
            return example["input_ids"], example["labels"]

    class Tok:
        pad_token_id = 0

    processor = Encoded(template=None, tokenizer=Tok(), processor=None, data_args=DataArguments(cutoff_len=CUTOFF))
    processor.data_args.neat_packing = True
    n = len(examples)
    host = processor.preprocess_dataset(
        {
            "_prompt": [[{"role": "user", "content": str(i)}] for i in range(n)],
            "_response": [[{"role": "assistant", "content": ""}] for _ in range(n)],
            **{key: [None] * n for key in ("_system", "_tools", "_images", "_videos", "_audios")},
        }
    )
    ours = pack_batch({key: [ex[key] for ex in examples] for key in ("input_ids", "labels")}, CUTOFF, True, 0)
    for key in ("input_ids", "attention_mask", "position_ids", "labels"):
        assert ours[key] == host[key], key


def _weights(path: Path) -> dict[str, torch.Tensor]:
    (file,) = [p for p in path.glob("*.safetensors")]
    return load_file(file)


def _build_strong(assets: Path, out: Path, model_type: str) -> Path:
    r"""The strong model of the tiny assets' tokenizer in another architecture (Llama, Gemma-2: sliding window 4096,
    longer than any row here), saved with the tokenizer."""
    if model_type == "qwen2":
        return assets / "strong"

    from llamafactory_wspo.cli.smoke_families import build_model

    template = {"llama": "llama3", "gemma2": "gemma2"}[model_type]
    return build_model(out, assets / "tokenizer", template=template, max_positions=512)


def _one_step(assets, workdir, run_in_process, packed: bool, **overrides) -> tuple[dict, dict]:
    config = wspo_config(
        assets,
        workdir,
        max_samples=12,
        cutoff_len=128,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=1,
        **overrides,
    )
    if packed:  # one packed row per micro-batch, every row of the set in the one optimiser step
        config.update(packing=True, neat_packing=True, per_device_train_batch_size=1, gradient_accumulation_steps=16)
    else:  # every example in one batch
        config.update(per_device_train_batch_size=12, gradient_accumulation_steps=1)
    run = run_in_process(config).check()
    (log,) = train_logs(workdir / "out")
    return log, _weights(workdir / "out"), run


@pytest.mark.parametrize(
    ("model_type", "finetuning", "precompute", "dataset"),
    [
        ("qwen2", "full", True, "tiny_sft"),
        ("qwen2", "lora", False, "tiny_sft"),
        ("llama", "full", False, "tiny_sft"),
        ("llama", "lora", True, "tiny_sft"),
        ("qwen2", "full", True, "tiny_pairs"),  # a pairwise set's chosen responses, packed by data/packed.py
        # eager attention (the host gives Gemma-2 eager on the CPU), soft-capped attention and logits
        ("gemma2", "full", True, "tiny_sft"),
        ("gemma2", "lora", False, "tiny_sft"),
    ],
)
def test_packed_training_step_equals_unpacked(
    assets, tmp_path, run_in_process, model_type, finetuning, precompute, dataset
):
    strong = _build_strong(assets, tmp_path / "strong", model_type)
    common = {"model_name_or_path": str(strong), "precompute_logps": precompute, "pref_ftx": 0.3, "dataset": dataset}
    if finetuning == "lora":
        common.update(finetuning_type="lora", lora_target="all", lora_rank=4)
    base = _weights(strong) if finetuning == "full" else None
    log_u, weights_u, _ = _one_step(assets, tmp_path / "unpacked", run_in_process, False, **common)
    log_p, weights_p, run = _one_step(assets, tmp_path / "packed", run_in_process, True, **common)
    assert log_p["wspo/examples_per_row"] > 1.5  # several examples a row
    if model_type == "gemma2":  # eager attention: the 4D mask through the host's plain softmax(q.k + mask)
        assert "Using vanilla attention implementation." in run.log
    assert log_p["loss"] == pytest.approx(log_u["loss"], rel=1e-5)
    assert weights_p.keys() == weights_u.keys()
    moved = 0.0
    for name, value in weights_u.items():
        update_u = value - (base[name] if base is not None else 0)
        update_p = weights_p[name] - (base[name] if base is not None else 0)
        torch.testing.assert_close(update_p, update_u, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float(update_u.abs().max()))
    assert moved > 1e-4  # the step moved the weights


def test_plain_packing_the_pass_and_training_see_the_same_rows(assets, tmp_path, run_in_process):
    r"""``packing`` without ``neat_packing`` keeps the host's meaning (examples attend to each other): the precompute
    pass must score the rows exactly as the per-step models do during training."""
    common = {"packing": True, "max_samples": 32, "max_steps": 2, "per_device_train_batch_size": 2}
    common.update(val_size=0.25, do_eval=True, eval_strategy="steps", eval_steps=2)
    pre_dir, step_dir = tmp_path / "pre", tmp_path / "step"
    run_in_process(wspo_config(assets, pre_dir, **common)).check()
    run_in_process(wspo_config(assets, step_dir, precompute_logps=False, **common)).check()
    pre, step = train_logs(pre_dir / "out"), train_logs(step_dir / "out")
    assert [e["loss"] for e in pre] == pytest.approx([e["loss"] for e in step], rel=1e-5)
    evals = [[e["eval_loss"] for e in log_history(path / "out") if "eval_loss" in e] for path in (pre_dir, step_dir)]
    assert len(evals[0]) == 1 and evals[0] == pytest.approx(evals[1], rel=1e-5)
    (manifest,) = (tmp_path / "pre" / "cache").glob("*/manifest.json")
    extra = json.loads(manifest.read_text())["extra"]
    assert extra["packing"] is True and extra["neat_packing"] is False  # the key covers the packing options


@pytest.mark.slow
def test_deepspeed_zero3_two_processes_packed_equals_one_process(assets, tmp_path, run_in_process):
    r"""Two ranks under ZeRO-3 (``llamafactory-cli train`` with torchrun) and one process hold the same packed rows in
    each optimiser step (every row of the set, one row per micro-batch); the loss of step 1 and of step 2 (after
    the update) must agree, whatever number of examples each rank's rows hold."""
    common = dict(
        packing=True,
        neat_packing=True,
        max_samples=16,
        max_steps=2,
        per_device_train_batch_size=1,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
    )
    one = wspo_config(assets, tmp_path / "one", gradient_accumulation_steps=16, **common)
    run = run_in_process(one).check()
    rows = int(re.search(r"Num examples = (\d+)", run.log).group(1))
    assert rows % 2 == 0 and rows > 2  # the two ranks' shares are equal, with no row repeated to fill one
    two = wspo_config(assets, tmp_path / "two", gradient_accumulation_steps=16, deepspeed=str(DS_Z3_CONFIG), **common)
    proc = run_train(two, tmp_path / "two", nproc=2)
    assert "world size: 2" in proc.stdout + proc.stderr
    losses_one = [entry["loss"] for entry in train_logs(tmp_path / "one" / "out")]
    losses_two = [entry["loss"] for entry in train_logs(tmp_path / "two" / "out")]
    assert len(losses_one) == 2 and losses_two == pytest.approx(losses_one, rel=1e-4)
    assert losses_one[1] != pytest.approx(losses_one[0], rel=1e-3)  # the update changed the loss


def test_grpo_keeps_the_hosts_refusal_of_neat_packing(assets, tmp_path, run_in_process):
    r"""Only the packing stages (wspo, wpo) pass the host's check; GRPO generates, and keeps it."""
    run = run_in_process(grpo_config(assets, tmp_path, neat_packing=True))
    assert isinstance(run.error, ValueError) and "`neat_packing` cannot be set as True except SFT" in str(run.error)


def test_grpo_refuses_plain_packing_before_any_model_loads(assets, tmp_path, run_in_process):
    run = run_in_process(grpo_config(assets, tmp_path, packing=True))
    assert isinstance(run.error, PluginInputError) and str(run.error).startswith(
        "`packing` does not apply to `stage: grpo`"
    )
    assert run.loaded_models == []


def test_flash_attention_takes_one_packed_row_per_batch(assets, tmp_path, run_in_process):
    r"""LLaMA-Factory's collator folds a neat-packed row into flash-attention's varlen call only at batch 1 (it
    asserts so at the first step); the stage says it before any model loads, naming each size to change."""
    config = wspo_config(assets, tmp_path, neat_packing=True, flash_attn="fa2", per_device_train_batch_size=2)
    run = run_in_process(config)
    assert isinstance(run.error, PluginInputError), run.error_text()
    message = str(run.error)
    assert "`per_device_train_batch_size: 2`" in message and "`precompute_batch_size: 4`" in message
    assert run.loaded_models == []
