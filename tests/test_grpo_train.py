"""``stage: grpo``: the length alignment of the XSUM experiment, through LLaMA-Factory's ``run_exp`` (in this
process; ``llamafactory-cli train`` for two-process ZeRO-3)."""

import json
import sys
from pathlib import Path

import pytest
from helpers.in_process import run_exp_in_process
from helpers.scripts import script_module
from helpers.train import DS_Z3_CONFIG, grpo_config, run_train, train_logs

from llamafactory_wspo.cli import main as cli_main


def generate(*args: str) -> None:
    r"""``llamafactory-wspo generate ARGS``, in this process (the command's own entry, without a process start)."""
    assert cli_main(["generate", *map(str, args)]) == 0


demo_evaluate = script_module("demo/evaluate")  # the quickstart's reading of the answers `generate` wrote


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weak_sft(assets, tmp_path_factory) -> Path:
    r"""The tiny weak model after SFT on the toy task (answers of 3 to 15 words)."""
    workdir = tmp_path_factory.mktemp("weak_sft")
    config = {
        "model_name_or_path": str(assets / "weak"),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "tiny_sft",
        "dataset_dir": str(assets / "data"),
        "template": "qwen",
        "cutoff_len": 128,
        "output_dir": str(workdir / "out"),
        "per_device_train_batch_size": 16,
        "num_train_epochs": 15,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 12,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_exp_in_process(config, monkeypatch).check()
    return workdir / "out"


def in_range_share(model_dir: Path, data_file: Path, length_min: int, length_max: int) -> float:
    r"""Share of answers (8 sampled per prompt by `llamafactory-wspo generate`, as the quickstart samples them)
    whose word count lies in the range."""
    output = model_dir.parent / f"{model_dir.name}_answers.jsonl"
    generate(
        f"model_name_or_path={model_dir}",
        "template=qwen",
        f"input_file={data_file}",
        f"output_file={output}",
        *("num_samples=8", "temperature=1.0", "max_new_tokens=32", "seed=0", "infer_backend=huggingface"),
    )
    answers = [answer for _, samples in demo_evaluate.read_answers(output) for answer in samples]
    return sum(length_min <= len(answer.split()) <= length_max for answer in answers) / len(answers)


def test_length_alignment_raises_the_in_range_share(assets, weak_sft, tmp_path, run_in_process):
    prompts = assets / "data" / "tiny_sft_eval.json"
    config = grpo_config(
        assets,
        tmp_path,
        model_name_or_path=str(weak_sft),
        length_reward_min=8,
        length_reward_max=10,
        grpo_num_generations=8,
        grpo_max_completion_length=24,
        per_device_train_batch_size=16,
        max_samples=None,
        max_steps=100,
        plot_loss=True,
    )
    run_in_process(config).check()
    before = in_range_share(weak_sft, prompts, 8, 10)
    after = in_range_share(tmp_path / "out", prompts, 8, 10)
    assert after >= before + 0.1, (before, after)

    logs = train_logs(tmp_path / "out")
    assert len(logs) == 100 and all("rewards/length/mean" in entry for entry in logs)
    first, last = logs[:20], logs[-20:]
    assert sum(e["reward"] for e in last) / 20 > sum(e["reward"] for e in first) / 20
    assert (tmp_path / "out" / "training_reward.png").is_file()


def test_custom_reward_function_named_in_yaml(assets, tmp_path, run_in_process, monkeypatch):
    module = tmp_path / "my_rewards.py"
    module.write_text(
        "def constant(prompts, completions, **kwargs):\n"
        "    assert all(isinstance(p, str) and p.startswith('<|im_start|>') for p in prompts)\n"
        "    return [0.25] * len(completions)\n"
    )
    config = grpo_config(assets, tmp_path, grpo_reward_funcs="length, my_rewards:constant", max_steps=2)
    monkeypatch.syspath_prepend(str(tmp_path))  # importable where training runs, as PYTHONPATH makes it
    try:
        run_in_process(config).check()
    finally:
        sys.modules.pop("my_rewards", None)
    for entry in train_logs(tmp_path / "out"):
        assert entry["rewards/constant/mean"] == pytest.approx(0.25)
        assert entry["reward"] == pytest.approx(entry["rewards/length/mean"] + 0.25, abs=1e-4)


def test_lora_with_kl_penalty(assets, tmp_path, run_in_process):
    config = grpo_config(assets, tmp_path, finetuning_type="lora", lora_target="all", grpo_beta=0.1)
    run_in_process(config).check()
    logs = train_logs(tmp_path / "out")
    assert len(logs) == 3 and all("kl" in entry for entry in logs)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_deepspeed_zero3_two_processes(assets, tmp_path):
    config = grpo_config(
        assets,
        tmp_path,
        grpo_beta=0.04,
        per_device_train_batch_size=2,
        deepspeed=str(DS_Z3_CONFIG),
    )
    run_train(config, tmp_path, nproc=2)
    logs = train_logs(tmp_path / "out")
    assert len(logs) == 3 and all("kl" in entry for entry in logs)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert (tmp_path / "out" / "model.safetensors").is_file()
