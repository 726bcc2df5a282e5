"""Cross-tokenizer WSPO end to end: LLaMA-Factory's ``run_exp`` in this process, with tiny weak models whose
tokenizer (byte-level BPE) and chat template (llama3) differ from the strong model's (word-level, qwen).

* identity: the same tokenizer and template through the cross path give the same-tokenizer losses;
* the precompute pass and the per-step mode give the same losses and metrics;
* the weak shift keeps each example's total log-ratio (checked against the weak models run here, in float64);
* each bad input stops with one clear error before any model loads;
* the quickstart task with a weak model of another family: the strong model follows the weak alignment.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.cross import WEAK_TEMPLATE, build_cross_assets
from helpers.scripts import script_module
from helpers.tiny_tokenizers import build_weak_family
from helpers.train import ROOT, base_env, log_history, train_logs, wspo_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from llamafactory_wspo.cli import main as cli_main


def generate(*args: str) -> None:
    r"""``llamafactory-wspo generate ARGS``, in this process (the command's own entry, without a process start)."""
    assert cli_main(["generate", *map(str, args)]) == 0


demo_evaluate = script_module("demo/evaluate")  # the quickstart's scores of the answers `generate` wrote


@pytest.fixture(scope="module")
def family(assets, tmp_path_factory) -> Path:
    return build_cross_assets(assets, tmp_path_factory.mktemp("cross"))


def cross_config(assets: Path, family: Path, workdir: Path, **overrides) -> dict:
    weak = {"weak_base_model": str(family / "weak"), "weak_aligned_model": str(family / "weak_aligned")}
    return wspo_config(assets, workdir, **{**weak, "weak_template": WEAK_TEMPLATE, **overrides})


def _values(history: list[dict], key: str) -> list[float]:
    return [entry[key] for entry in history if key in entry]


@pytest.mark.slow
def test_identity_through_the_cross_path(assets, tmp_path, run_in_process, monkeypatch):
    r"""A copy of the qwen template under another name switches the cross path on with the same tokenizer and
    rendering on both sides: every loss and metric equals the same-tokenizer run's."""
    from llamafactory.data.template import TEMPLATES

    monkeypatch.setitem(TEMPLATES, "qwen_copy", copy.copy(TEMPLATES["qwen"]))
    common = {"val_size": 0.25, "do_eval": True, "eval_strategy": "steps", "eval_steps": 2, "pref_ftx": 0.5}
    same = run_in_process(wspo_config(assets, tmp_path / "same", **common)).check()
    cross = run_in_process(wspo_config(assets, tmp_path / "cross", weak_template="qwen_copy", **common)).check()
    assert "Cross-tokenizer WSPO" not in same.log
    assert "template `qwen`), weak tokenizer" in cross.log and "template `qwen_copy`)" in cross.log

    same_history, cross_history = log_history(tmp_path / "same" / "out"), log_history(tmp_path / "cross" / "out")
    for key in ("loss", "wspo/fit_mse", "wspo/weak_logratio", "wspo/strong_logratio", "eval_loss"):
        expected = _values(same_history, key)
        assert expected and _values(cross_history, key) == pytest.approx(expected, rel=1e-6, abs=1e-9), key
    assert _values(cross_history, "wspo/projection_unmatched") == [0.0] * 3
    assert "wspo/projection_unmatched" not in same_history[0]


def _independent_first_weak_logratio(assets: Path, family: Path, num_examples: int) -> float:
    r"""``wspo/weak_logratio`` of the first batch, from the weak models run here in float64 on the llama3
    rendering: per example ``sum_j w_j / T`` (the projection keeps each turn's total ``sum_j w_j``; ``T`` counts
    the strong response tokens of the qwen rendering). Token ids come from LLaMA-Factory's templates."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    strong_tok = AutoTokenizer.from_pretrained(assets / "strong")
    strong_tpl = get_template_and_fix_tokenizer(strong_tok, DataArguments(template="qwen"))
    weak_tok = AutoTokenizer.from_pretrained(family / "weak")
    weak_tpl = get_template_and_fix_tokenizer(weak_tok, DataArguments(template=WEAK_TEMPLATE))
    models = {name: AutoModelForCausalLM.from_pretrained(family / name).eval() for name in ("weak", "weak_aligned")}
    rows = json.loads((assets / "data" / "tiny_sft.json").read_text())[:num_examples]
    ratios = []
    for row in rows:
        messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        prompt, response = weak_tpl.encode_oneturn(weak_tok, messages)
        ids = torch.tensor([prompt + response])
        total = 0.0
        with torch.no_grad():
            logps = {name: model(ids).logits[0].double().log_softmax(-1) for name, model in models.items()}
        for i, token in enumerate(response):
            position = len(prompt) + i - 1
            total += logps["weak_aligned"][position, token].item() - logps["weak"][position, token].item()
        ratios.append(total / len(strong_tpl.encode_oneturn(strong_tok, messages)[1]))
    return sum(ratios) / len(ratios)


@pytest.mark.slow
def test_precompute_and_per_step_agree_and_keep_the_total(assets, family, tmp_path, run_in_process):
    common = {"eval_dataset": "tiny_sft_eval", "do_eval": True, "eval_strategy": "steps", "eval_steps": 2}
    pre = run_in_process(cross_config(assets, family, tmp_path / "pre", **common)).check()
    run_in_process(cross_config(assets, family, tmp_path / "step", precompute_logps=False, **common)).check()
    assert "Cross-tokenizer WSPO: strong tokenizer" in pre.log
    assert f"weak tokenizer {family / 'weak'}" in pre.log and f"template `{WEAK_TEMPLATE}`" in pre.log
    assert not (tmp_path / "step" / "cache").exists()

    pre_history, step_history = log_history(tmp_path / "pre" / "out"), log_history(tmp_path / "step" / "out")
    keys = ("loss", "wspo/fit_mse", "wspo/weak_logratio", "wspo/projection_unmatched", "eval_loss")
    for key in keys:
        expected = _values(pre_history, key)
        assert expected and _values(step_history, key) == pytest.approx(expected, rel=1e-5, abs=1e-7), key

    first = train_logs(tmp_path / "pre" / "out")[0]
    assert first["wspo/projection_unmatched"] == 0.0  # the tiny task's responses end in a word
    assert first["wspo/strong_logratio"] == pytest.approx(0.0, abs=1e-6)
    assert first["wspo/weak_logratio"] == pytest.approx(_independent_first_weak_logratio(assets, family, 4), rel=1e-4)

    (manifest,) = list((tmp_path / "pre" / "cache").glob("*/manifest.json"))
    extra = json.loads(manifest.read_text())["extra"]
    assert extra["weak_template"] == WEAK_TEMPLATE and len(extra["weak_tokenizer"]) == 64
    # the weak-shift statistics: of the projected shift on the strong tokens, and of the weak models' own w_j on
    # the weak tokens, whose totals agree (nothing is unmatched here)
    stats = json.loads(manifest.read_text())["weak_shift_statistics"]
    shift, weak = stats["shift"], stats["weak_tokens"]
    assert weak["tokens"] > shift["tokens"] > 0  # byte-level pieces against whole words
    assert shift["mean"] * shift["tokens"] == pytest.approx(weak["mean"] * weak["tokens"], rel=1e-5)
    assert f"Weak shift over the weak tokens, before the projection: mean {weak['mean']:+.3f}" in pre.log


@pytest.mark.slow
def test_pairwise_data_both_responses(assets, family, tmp_path, run_in_process):
    r"""Both responses of a pairwise set get their weak rendering (the ``chosen_``/``rejected_`` weak columns)."""
    config = cross_config(assets, family, tmp_path, dataset="tiny_pairs", wspo_response="both", max_samples=8)
    run = run_in_process({**config, "max_steps": 1}).check()
    assert "Num examples = 16" in run.log and "0 weak response tokens of 16 examples end after" in run.log
    assert train_logs(tmp_path / "out")[0]["wspo/projection_unmatched"] == 0.0


# LLaMA-Board in a subprocess: the WSPO stage with the weak template field set, then emptied.
_BOARD_PROBE = r"""
import json, sys
from llamafactory.webui import common
from llamafactory.webui.interface import create_ui

demo = create_ui()
preview = next(f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "preview_train")
runner = preview.fn.__self__
data = {elem: elem.value for elem in preview.inputs}  # what "Preview command" and "Start" receive
values = {
    "top.lang": "en", "top.model_name": "Custom", "top.model_path": "strong", "top.finetuning_type": "full",
    "top.template": "qwen", "train.dataset_dir": sys.argv[1], "train.dataset": ["tiny_sft"],
    "train.output_dir": "run", "train.config_path": "run.yaml", "train.training_stage": "WSPO",
    "train.weak_base_model": "weak", "train.weak_aligned_model": "weak_dpo", "train.weak_template": "llama3",
}
for elem_id, value in values.items():
    data[runner.manager.get_elem_by_id(elem_id)] = value
out = {"set": common.gen_cmd(runner._parse_train_args(data))}
data[runner.manager.get_elem_by_id("train.weak_template")] = None
out["empty"] = common.gen_cmd(runner._parse_train_args(data))
print("PROBE" + json.dumps(out))
"""


@pytest.mark.slow
def test_weak_template_field_in_llamaboard(assets, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _BOARD_PROBE, str(assets / "data")],
        cwd=tmp_path,
        env=base_env(GRADIO_ANALYTICS_ENABLED="False"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = json.loads(proc.stdout.split("PROBE", 1)[1])
    assert "--weak_template llama3" in commands["set"] and "--stage wspo" in commands["set"]
    assert "weak_template" not in commands["empty"]


def test_weak_template_from_the_command_line(assets, family, tmp_path):
    import llamafactory.train.tuner  # noqa: F401 (the plugin's training arguments are active once it is imported)
    from llamafactory.hparams.parser import _parse_train_args

    argv = [f"--{key}={value}" for key, value in cross_config(assets, family, tmp_path).items()]
    finetuning_args = _parse_train_args(argv)[3]
    assert finetuning_args.stage == "wspo" and finetuning_args.weak_template == WEAK_TEMPLATE


def _expect_error(run_in_process, config: dict, *needles: str) -> str:
    run = run_in_process(config)
    assert run.error is not None, f"no error; log:\n{run.log[-3000:]}"
    for needle in needles:
        assert needle in str(run.error), run.error_text()
    assert run.loaded_models == [], run.error_text()  # before any model loads
    assert not Path(config["output_dir"]).exists() and not Path(config["logps_cache_dir"]).exists()
    return str(run.error)


def test_different_tokenizers_need_a_weak_template(assets, family, tmp_path, run_in_process):
    config = cross_config(assets, family, tmp_path, weak_template=None)
    _expect_error(run_in_process, config, "have different vocabularies", "needs `weak_template`", str(family / "weak"))


def test_weak_template_that_does_not_exist(assets, family, tmp_path, run_in_process):
    config = cross_config(assets, family, tmp_path, weak_template="no_such_template")
    _expect_error(run_in_process, config, "`weak_template: no_such_template` does not exist", "llama3")


def test_weak_tokenizer_without_offsets(assets, family, tmp_path, run_in_process):
    slow = str(family / "slow")
    config = cross_config(assets, family, tmp_path, weak_base_model=slow, weak_aligned_model=slow)
    _expect_error(run_in_process, config, f"`weak_base_model` ({slow}) has a tokenizer without offset mappings")


def test_weak_models_with_two_tokenizers(assets, family, tmp_path, run_in_process):
    config = cross_config(assets, family, tmp_path, weak_aligned_model=str(assets / "weak_aligned"))
    _expect_error(run_in_process, config, "Both weak models must share one tokenizer", str(assets / "weak_aligned"))


def test_packing_is_refused(assets, family, tmp_path, run_in_process):
    config = cross_config(assets, family, tmp_path, packing=True)
    _expect_error(run_in_process, config, "`packing` is not supported by cross-tokenizer WSPO")


def _demo_step(name: str, assets: Path, family: Path, work: Path, **overrides) -> dict:
    r"""``scripts/demo/cross/<name>.yaml`` with its ``demo_runs/cross/...`` paths moved to this test's folders."""
    config = yaml.safe_load((ROOT / "scripts" / "demo" / "cross" / f"{name}.yaml").read_text())
    places = (("demo_runs/cross/assets/bpe/", family), ("demo_runs/cross/assets/", assets), ("demo_runs/cross/", work))
    for key, value in config.items():
        for prefix, folder in places if isinstance(value, str) else ():
            if value.startswith(prefix):
                config[key] = str(folder / value.removeprefix(prefix))
                break
    return {**config, **overrides}


@pytest.mark.slow
def test_quickstart_with_a_weak_model_of_another_family(assets, tmp_path, run_in_process):
    r"""The quickstart task (``scripts/quickstart_cross.sh``, shortened SFT): a weak model with a byte-level BPE
    tokenizer and the llama3 template is aligned by DPO towards short answers; cross-tokenizer WSPO moves the strong
    model (word-level tokenizer, qwen template) the same way. Lengths are measured as the quickstart measures them:
    answers sampled by `llamafactory-wspo generate` in each model's template, scored by ``scripts/demo/evaluate.py``."""
    family = build_weak_family(tmp_path / "bpe", assets / "data", "byte_bpe", 900, (("weak", 0),), 48, 1)
    for name, epochs in (("weak_sft", 5), ("strong_sft", 5), ("weak_dpo", None), ("strong_wspo", None)):
        overrides = {"num_train_epochs": epochs} if epochs else {}
        run = run_in_process(_demo_step(name, assets, family, tmp_path, **overrides)).check()
    assert "Cross-tokenizer WSPO: strong tokenizer" in run.log

    scores = {}
    for name, template in (
        ("weak_sft", "llama3"),
        ("weak_dpo", "llama3"),
        ("strong_sft", "qwen"),
        ("strong_wspo", "qwen"),
    ):
        answers = tmp_path / f"{name}_answers.jsonl"
        generate(
            f"model_name_or_path={tmp_path / name}",
            f"template={template}",
            f"input_file={assets / 'data' / 'tiny_sft_eval.json'}",
            f"output_file={answers}",
            *("num_samples=2", "temperature=1.0", "max_new_tokens=32", "seed=0", "infer_backend=huggingface"),
        )
        scores[name] = demo_evaluate.score(demo_evaluate.read_answers(answers), short_max=5)
    print(json.dumps(scores, indent=1))
    assert scores["weak_dpo"]["mean_words"] < scores["weak_sft"]["mean_words"]  # the weak model's alignment
    assert scores["strong_wspo"]["mean_words"] < 0.8 * scores["strong_sft"]["mean_words"]  # followed by the strong
    assert scores["strong_wspo"]["short_pct"] > scores["strong_sft"]["short_pct"] + 15
    assert scores["strong_wspo"]["on_topic_pct"] > 0.9 * scores["strong_sft"]["on_topic_pct"]
