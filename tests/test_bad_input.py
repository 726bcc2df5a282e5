"""Each bad input: one clear error naming the argument and the fix, before any model loads, nothing left behind."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import grpo_config, run_train, wpo_config, wspo_config


pytestmark = pytest.mark.slow


def _expect_error(config: dict, workdir: Path, *needles: str, **env: str) -> str:
    proc = run_train(config, workdir, check=False, **env)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    last_lines = "\n".join(text.strip().splitlines()[-5:])
    for needle in needles:
        assert needle in last_lines, last_lines
    assert "loading weights file" not in text  # no model was loaded
    assert not Path(config["output_dir"]).exists()
    assert not Path(config["logps_cache_dir"]).exists()
    return last_lines


@pytest.mark.parametrize("key", ["weak_base_model", "weak_aligned_model"])
def test_missing_weak_model(assets, tmp_path, key):
    config = wspo_config(assets, tmp_path)
    del config[key]
    _expect_error(config, tmp_path, f"`{key}` is required for `stage: wspo`")


@pytest.mark.parametrize("key", ["weak_base_model", "weak_aligned_model", "model_name_or_path", "ref_model"])
def test_path_that_does_not_exist(assets, tmp_path, key):
    missing = str(tmp_path / "no" / "such" / "model")
    config = wspo_config(assets, tmp_path, **{key: missing})
    _expect_error(config, tmp_path, f"`{key}` is a path that does not exist: {missing}")


def test_different_vocabularies(assets, tmp_path):
    config = wspo_config(assets, tmp_path, weak_base_model=str(assets / "alt_vocab"))
    _expect_error(
        config,
        tmp_path,
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
def test_dataset_without_responses(assets, tmp_path, no_response_data, dataset):
    config = wspo_config(assets, tmp_path, dataset=dataset, dataset_dir=str(no_response_data))
    _expect_error(config, tmp_path, f"`dataset` {dataset} has no responses")


@pytest.mark.parametrize("response", ["rejected", "both"])
def test_pair_responses_on_data_without_pairs(assets, tmp_path, response):
    config = wspo_config(assets, tmp_path, wspo_response=response)
    _expect_error(config, tmp_path, f"`wspo_response: {response}` needs a pairwise (ranking) data set", "tiny_sft")


def test_unknown_wspo_response(assets, tmp_path):
    config = wspo_config(assets, tmp_path, dataset="tiny_pairs", wspo_response="best")
    _expect_error(config, tmp_path, "`wspo_response` must be one of chosen, rejected, both")


def test_unsupported_llamafactory_version(assets, tmp_path):
    import llamafactory

    site = tmp_path / "site"
    shutil.copytree(Path(llamafactory.__file__).parent, site / "llamafactory", ignore=shutil.ignore_patterns("*.pyc"))
    env_py = site / "llamafactory" / "extras" / "env.py"
    env_py.write_text(env_py.read_text().replace('VERSION = "0.9.5"', 'VERSION = "0.9.9"'))
    config = wspo_config(assets, tmp_path)
    last = _expect_error(
        config, tmp_path, "LLaMA-Factory 0.9.9 is installed", "supports LLaMA-Factory 0.9.5", PYTHONPATH=str(site)
    )
    assert "UnsupportedLlamaFactoryError" in last


def test_wpo_on_data_without_pairs(assets, tmp_path):
    config = wpo_config(assets, tmp_path, dataset="tiny_sft")
    _expect_error(config, tmp_path, "`stage: wpo` needs pairwise data sets", "tiny_sft has no pairs")


@pytest.mark.parametrize("key, value", [("wpo_alignment", "beam"), ("wpo_weighting", "both")])
def test_unknown_wpo_choice(assets, tmp_path, key, value):
    _expect_error(wpo_config(assets, tmp_path, **{key: value}), tmp_path, f"`{key}` must be one of", repr(value))


@pytest.mark.parametrize("loss_type", ["aot", "kto_pair"])
def test_pref_loss_that_cannot_take_a_weight(assets, tmp_path, loss_type):
    config = wpo_config(assets, tmp_path, pref_loss=loss_type)
    _expect_error(config, tmp_path, f"`pref_loss: {loss_type}` cannot take a WPO weight", "sigmoid, hinge, ipo")


def test_wpo_reference_path_that_does_not_exist(assets, tmp_path):
    missing = str(tmp_path / "no" / "ref")
    _expect_error(
        wpo_config(assets, tmp_path, ref_model=missing), tmp_path, "`ref_model` is a path that does not exist"
    )


def test_kto_form_needs_kto_data(assets, tmp_path):
    config = wpo_config(assets, tmp_path, pref_loss="kto")
    _expect_error(config, tmp_path, "`pref_loss: kto` needs KTO-format data sets", "tiny_pairs")


def test_kto_loss_outside_wpo(assets, tmp_path):
    config = wpo_config(assets, tmp_path, pref_loss="kto", stage="dpo")
    _expect_error(config, tmp_path, "`pref_loss: kto` is the KTO form of `stage: wpo`")


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
def test_grpo_bad_arguments(assets, tmp_path, overrides, needle):
    _expect_error(grpo_config(assets, tmp_path, **overrides), tmp_path, needle)
