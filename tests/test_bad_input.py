"""Each bad input: one clear error naming the argument and the fix, before any model loads, nothing left behind.

The cases run LLaMA-Factory's ``run_exp`` in this process (the plugin is active here as in every process of
the environment); two run ``llamafactory-cli`` because what the user sees at the end of its output is the point.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers.train import grpo_config, run_train, wpo_config, wspo_config


def _nothing_written(config: dict) -> None:
    assert not Path(config["output_dir"]).exists()
    assert not Path(config["logps_cache_dir"]).exists()


def _expect_error(run_in_process, config: dict, *needles: str) -> str:
    r"""Run ``config`` in this process: it must raise one error whose message holds every needle."""
    run = run_in_process(config)
    assert run.error is not None, f"no error; log:\n{run.log[-3000:]}"
    message = str(run.error)
    for needle in needles:
        assert needle in message, run.error_text()
    assert run.loaded_models == [], run.error_text()  # the error comes before any model loads
    assert "loading weights file" not in run.log
    _nothing_written(config)
    return message


def _expect_error_on_the_command_line(config: dict, workdir: Path, *needles: str, **env: str) -> str:
    r"""Run ``config`` with ``llamafactory-cli train``: the last lines of its output name the error."""
    proc = run_train(config, workdir, check=False, **env)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    last_lines = "\n".join(text.strip().splitlines()[-5:])
    for needle in needles:
        assert needle in last_lines, last_lines
    assert "loading weights file" not in text  # no model was loaded
    _nothing_written(config)
    return last_lines


@pytest.mark.parametrize("key", ["weak_base_model", "weak_aligned_model"])
def test_missing_weak_model(assets, tmp_path, run_in_process, key):
    config = wspo_config(assets, tmp_path)
    del config[key]
    _expect_error(run_in_process, config, f"`{key}` is required for `stage: wspo`")


@pytest.mark.slow
def test_missing_weak_model_on_the_command_line(assets, tmp_path):
    config = wspo_config(assets, tmp_path, weak_aligned_model=None)
    _expect_error_on_the_command_line(config, tmp_path, "`weak_aligned_model` is required for `stage: wspo`")


@pytest.mark.parametrize("key", ["weak_base_model", "weak_aligned_model", "model_name_or_path", "ref_model"])
def test_path_that_does_not_exist(assets, tmp_path, run_in_process, key):
    missing = str(tmp_path / "no" / "such" / "model")
    config = wspo_config(assets, tmp_path, **{key: missing})
    _expect_error(run_in_process, config, f"`{key}` is a path that does not exist: {missing}")


def test_different_vocabularies(assets, tmp_path, run_in_process):
    config = wspo_config(assets, tmp_path, weak_base_model=str(assets / "alt_vocab"))
    _expect_error(
        run_in_process,
        config,
        "different vocabularies",
        "`weak_base_model`",
        str(assets / "alt_vocab"),
        str(assets / "strong"),
    )


@pytest.fixture
def no_response_data(assets, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    info = json.loads((data / "dataset_info.json").read_text())
    (data / "prompts.json").write_text(json.dumps([{"instruction": "list some animals", "input": ""}] * 8))
    info["prompts_only"] = {"file_name": "prompts.json"}
    turns = [{"conversations": [{"from": "human", "value": "list some colors"}]}] * 8
    (data / "open_turns.json").write_text(json.dumps(turns))
    info["open_turns"] = {"file_name": "open_turns.json", "formatting": "sharegpt"}
    (data / "dataset_info.json").write_text(json.dumps(info))
    return data


@pytest.mark.parametrize("dataset", ["prompts_only", "open_turns"])
def test_dataset_without_responses(assets, tmp_path, run_in_process, no_response_data, dataset):
    config = wspo_config(assets, tmp_path, dataset=dataset, dataset_dir=str(no_response_data))
    _expect_error(run_in_process, config, f"`dataset` {dataset} has no responses")


@pytest.mark.parametrize("response", ["rejected", "both"])
def test_pair_responses_on_data_without_pairs(assets, tmp_path, run_in_process, response):
    config = wspo_config(assets, tmp_path, wspo_response=response)
    _expect_error(
        run_in_process, config, f"`wspo_response: {response}` needs a pairwise (ranking) data set", "tiny_sft"
    )


def test_unknown_wspo_response(assets, tmp_path, run_in_process):
    config = wspo_config(assets, tmp_path, dataset="tiny_pairs", wspo_response="best")
    _expect_error(run_in_process, config, "`wspo_response` must be one of chosen, rejected, both")


def test_wpo_on_data_without_pairs(assets, tmp_path, run_in_process):
    config = wpo_config(assets, tmp_path, dataset="tiny_sft")
    _expect_error(run_in_process, config, "`stage: wpo` needs pairwise data sets", "tiny_sft has no pairs")


@pytest.mark.parametrize("key, value", [("wpo_alignment", "beam"), ("wpo_weighting", "both")])
def test_unknown_wpo_choice(assets, tmp_path, run_in_process, key, value):
    _expect_error(run_in_process, wpo_config(assets, tmp_path, **{key: value}), f"`{key}` must be one of", repr(value))


@pytest.mark.parametrize("loss_type", ["aot", "kto_pair"])
def test_pref_loss_that_cannot_take_a_weight(assets, tmp_path, run_in_process, loss_type):
    config = wpo_config(assets, tmp_path, pref_loss=loss_type)
    _expect_error(run_in_process, config, f"`pref_loss: {loss_type}` cannot take a WPO weight", "sigmoid, hinge, ipo")


def test_wpo_reference_path_that_does_not_exist(assets, tmp_path, run_in_process):
    missing = str(tmp_path / "no" / "ref")
    config = wpo_config(assets, tmp_path, ref_model=missing)
    _expect_error(run_in_process, config, "`ref_model` is a path that does not exist")


def test_kto_form_needs_kto_data(assets, tmp_path, run_in_process):
    config = wpo_config(assets, tmp_path, pref_loss="kto")
    _expect_error(run_in_process, config, "`pref_loss: kto` needs KTO-format data sets", "tiny_pairs")


def test_kto_loss_outside_wpo(assets, tmp_path, run_in_process):
    config = wpo_config(assets, tmp_path, pref_loss="kto", stage="dpo")
    _expect_error(run_in_process, config, "`pref_loss: kto` is the KTO form of `stage: wpo`")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"grpo_reward_funcs": "no_such_module:reward"}, "`grpo_reward_funcs`: cannot import 'no_such_module:reward'"),
        ({"grpo_reward_funcs": "shortness"}, "`grpo_reward_funcs`: 'shortness' is not a reward function"),
        ({"length_reward_min": 30, "length_reward_max": 20}, "`length_reward_min`/`length_reward_max`"),
        ({"grpo_num_generations": 1}, "`grpo_num_generations` must be at least 2"),
        ({"grpo_num_generations": 3}, "Adjust `grpo_num_generations`"),
    ],
)
def test_grpo_bad_arguments(assets, tmp_path, run_in_process, overrides, needle):
    _expect_error(run_in_process, grpo_config(assets, tmp_path, **overrides), needle)


def _process_state() -> dict:
    import logging

    import torch
    import transformers
    from accelerate.state import PartialState

    return {
        "environ": dict(os.environ),
        "transformers_verbosity": transformers.utils.logging.get_verbosity(),
        "handlers": {name: list(logging.getLogger(name).handlers) for name in ("", "llamafactory", "transformers")},
        "accelerate": dict(PartialState._shared_state),
        "distributed": torch.distributed.is_initialized(),
        "rng": torch.get_rng_state().tolist(),
    }


def test_a_failing_run_leaves_no_state_behind(assets, tmp_path, run_in_process, no_response_data):
    r"""The in-process runs above share this process: a failed run must not change what the next one sees."""
    import llamafactory.train.tuner  # noqa: F401 (importing it once configures its loggers for good)

    before = _process_state()
    # deep enough to parse the training arguments (accelerate's state, set_seed, logging) and load the data
    config = wspo_config(assets, tmp_path, dataset="prompts_only", dataset_dir=str(no_response_data))
    _expect_error(run_in_process, config, "`dataset` prompts_only has no responses")
    after = _process_state()
    for key in before:
        assert after[key] == before[key], key


def _command_line(monkeypatch, config: dict) -> tuple:
    r"""The arguments that ``llamafactory-cli train --key value ...`` parses: LLaMA-Factory's training parser on
    ``sys.argv`` (argparse, which checks each ``Literal``'s choices and converts each value's text to its type)."""
    import sys

    from llamafactory.hparams.parser import _parse_train_args

    flags = [token for key, value in config.items() for token in (f"--{key}", str(value))]
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", *flags])
    return _parse_train_args()


# WPO's losses beyond LLaMA-Factory's own (the README's list), and `kto`.
WPO_ONLY_LOSSES = ("robust", "exo_pair", "nca_pair", "sppo_hard", "bco_pair", "apo_zero", "apo_down", "kto")


@pytest.mark.parametrize("loss", WPO_ONLY_LOSSES)
def test_every_wpo_loss_is_a_command_line_choice(assets, tmp_path, monkeypatch, loss):
    r"""``--pref_loss X`` parses for each loss that `stage: wpo` takes, as the same key does in YAML."""
    config = wpo_config(assets, tmp_path, pref_loss=loss)
    finetuning_args = _command_line(monkeypatch, config)[3]
    assert finetuning_args.stage == "wpo" and finetuning_args.pref_loss == loss


@pytest.mark.parametrize(
    ("stage", "key", "text", "value"),
    [
        ("wspo", "pref_beta", "0.1", 0.1),
        ("wpo", "pref_beta", "1e-2", 0.01),
        ("wpo", "pref_ftx", "0.5", 0.5),
        ("wpo", "dpo_label_smoothing", "0.1", 0.1),
        ("wspo", "wspo_shift_warning", "3", 3.0),
        ("wspo", "precompute_batch_size", "8", 8),
        ("wspo", "precompute_logps", "false", False),
        ("grpo", "grpo_beta", "0.04", 0.04),
        ("grpo", "grpo_num_generations", "8", 8),
    ],
)
def test_a_number_written_as_text_is_read_as_on_the_command_line(
    assets, tmp_path, monkeypatch, stage, key, text, value
):
    r"""``pref_beta: '0.1'`` (quoted in YAML) is the value that ``--pref_beta 0.1`` gives: argparse reads that text
    with the field's type, and the YAML key now does the same."""
    from llamafactory.hparams.parser import _parse_train_args

    make = {"wspo": wspo_config, "wpo": wpo_config, "grpo": grpo_config}[stage]
    config = make(assets, tmp_path, **{key: text})
    from_yaml = getattr(_parse_train_args(dict(config))[3], key)
    from_flags = getattr(_command_line(monkeypatch, config)[3], key)
    assert from_yaml == from_flags == value and type(from_yaml) is type(value)


@pytest.mark.parametrize(
    ("key", "text", "needle"),
    [
        ("pref_beta", "0.1.2", "`pref_beta` must be a number, got '0.1.2': write it unquoted, e.g. `pref_beta: 0.1`"),
        ("precompute_logps", "maybe", "`precompute_logps` must be true or false, got 'maybe'"),
        ("precompute_batch_size", "8.5", "`precompute_batch_size` must be an integer or null, got '8.5'"),
        ("pref_beta", True, "`pref_beta` must be a number, got True: write one, e.g. `pref_beta: 0.1`"),
    ],
)
def test_text_that_is_no_number(assets, tmp_path, run_in_process, key, text, needle):
    _expect_error(run_in_process, wspo_config(assets, tmp_path, **{key: text}), needle)
