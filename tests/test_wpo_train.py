"""``stage: wpo`` end to end: LLaMA-Factory's ``run_exp`` in this process, ``llamafactory-cli train`` for ZeRO-3."""

import json
import math

import pytest
from helpers.train import DS_Z3_CONFIG, log_history, run_train, train_logs, wpo_config


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("loss_type", [pytest.param("sigmoid", marks=pytest.mark.host_compat), "ipo", "simpo"])
def test_wpo_runs(assets, tmp_path, run_in_process, loss_type):
    config = wpo_config(assets, tmp_path, pref_loss=loss_type, plot_loss=True, learning_rate=1e-4)
    run_in_process(config).check()
    out = tmp_path / "out"
    logs = train_logs(out)
    assert len(logs) == 3
    for entry in logs:
        assert 0 < entry["wpo/weight_min"] <= entry["wpo/weight_mean"] <= entry["wpo/weight_max"] <= 1
        assert math.isfinite(entry["loss"])
    if loss_type == "sigmoid":  # at step 1 the policy is the reference: the DPO loss is log 2 for every pair
        assert logs[0]["loss"] == pytest.approx(math.log(2) * logs[0]["wpo/weight_mean"], rel=1e-4)
    assert (tmp_path / "cache").exists() == (loss_type != "simpo")  # simpo has no reference model
    records = [json.loads(line) for line in (out / "wpo_weights.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 1, 2] and len(records[0]["chosen"]) == 4
    assert (out / "training_wpo_weights.png").is_file() and (out / "training_loss.png").is_file()


@pytest.mark.host_compat
def test_precomputed_reference_gives_the_same_losses(assets, tmp_path, run_in_process):
    common = {"val_size": 0.25, "do_eval": True, "eval_strategy": "steps", "eval_steps": 2, "pref_ftx": 0.3}
    run_in_process(wpo_config(assets, tmp_path / "pre", **common)).check()
    run_in_process(wpo_config(assets, tmp_path / "step", precompute_logps=False, **common)).check()
    assert not (tmp_path / "step" / "cache").exists()  # nothing precomputed
    pre, step = log_history(tmp_path / "pre" / "out"), log_history(tmp_path / "step" / "out")
    for key in ("loss", "wpo/weight_mean", "rewards/margins", "eval_loss"):
        a = [entry[key] for entry in pre if key in entry]
        b = [entry[key] for entry in step if key in entry]
        assert a and a == pytest.approx(b, rel=1e-4, abs=1e-7), key


def test_variants_change_the_weights(assets, tmp_path, run_in_process):
    means = {}
    for alignment, weighting in (("sampled", "pair"), ("greedy", "pair"), ("none", "chosen")):
        workdir = tmp_path / f"{alignment}_{weighting}"
        config = wpo_config(assets, workdir, wpo_alignment=alignment, wpo_weighting=weighting, max_steps=1)
        run_in_process(config).check()
        means[alignment, weighting] = train_logs(workdir / "out")[0]["wpo/weight_mean"]

    assert len(set(means.values())) == 3
    assert means["none", "chosen"] < means["sampled", "pair"]  # raw probabilities of whole sequences are tiny


def test_deepspeed_zero3_two_processes(assets, tmp_path):
    config = wpo_config(assets, tmp_path, deepspeed=str(DS_Z3_CONFIG), max_steps=2, per_device_train_batch_size=2)
    proc = run_train(config, tmp_path, nproc=2)
    assert "world size: 2" in proc.stdout + proc.stderr
    logs = train_logs(tmp_path / "out")
    assert len(logs) == 2 and logs[0]["loss"] == pytest.approx(math.log(2) * logs[0]["wpo/weight_mean"], rel=1e-4)
    assert len(list((tmp_path / "cache").glob("*/shard-*"))) == 2
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_kto_form(assets, tmp_path, run_in_process):
    common = {"dataset": "tiny_kto", "pref_loss": "kto", "plot_loss": True}
    run_in_process(wpo_config(assets, tmp_path / "pre", **common)).check()
    run_in_process(wpo_config(assets, tmp_path / "step", precompute_logps=False, **common)).check()
    pre, step = train_logs(tmp_path / "pre" / "out"), train_logs(tmp_path / "step" / "out")
    # At step 1 the policy is the reference: every KTO term is 1 - sigmoid(0) = 0.5, and the weights of each group
    # sum to 1 while the group keeps its share of the loss, so the weighted loss is 0.5 too.
    assert pre[0]["loss"] == pytest.approx(0.5, abs=1e-6)
    assert [e["loss"] for e in pre] == pytest.approx([e["loss"] for e in step], rel=1e-4)
    assert all(e["wpo/weight_min"] <= e["wpo/weight_mean"] <= e["wpo/weight_max"] for e in pre)
    assert (tmp_path / "pre" / "out" / "training_wpo_weights.png").is_file()
    (manifest,) = list((tmp_path / "pre" / "cache").glob("*/manifest.json"))
    assert json.loads(manifest.read_text())["examples"] > 16  # target rows and KL rows
