"""``stage: wspo`` end to end: LLaMA-Factory's ``run_exp`` in this process, ``llamafactory-cli train`` where the
run needs its own processes (two-process ZeRO-3) or the lead's equivalence checks run it so."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_assets
from helpers.train import DS_Z3_CONFIG, log_history, run_train, train_logs, wspo_config
from transformers import AutoModelForCausalLM, AutoTokenizer


pytestmark = pytest.mark.slow


def _independent_first_loss(assets: Path, num_examples: int, gamma: float) -> float:
    r"""Mean over the first examples of (1/T) sum_t (gamma * 0 - w_t)^2: at step 1 the policy is the reference.

    Token ids come from LLaMA-Factory's template (the host's job); the log-probs are computed here, one
    unpadded example at a time, in float64 from plain transformers models.
    """
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    tokenizer = AutoTokenizer.from_pretrained(assets / "strong")
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="qwen"))
    rows = json.loads((assets / "data" / "tiny_sft.json").read_text())[:num_examples]
    models = {name: AutoModelForCausalLM.from_pretrained(assets / name).eval() for name in ("weak", "weak_aligned")}

    losses = []
    for row in rows:
        messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        prompt_ids, response_ids = template.encode_oneturn(tokenizer, messages)
        input_ids = torch.tensor([prompt_ids + response_ids])
        logps = {}
        with torch.no_grad():
            for name, model in models.items():
                log_softmax = model(input_ids).logits[0].double().log_softmax(-1)
                logps[name] = [
                    log_softmax[len(prompt_ids) + i - 1, token].item() for i, token in enumerate(response_ids)
                ]

        shifts = [a - b for a, b in zip(logps["weak_aligned"], logps["weak"])]
        losses.append(sum((gamma * 0.0 - w) ** 2 for w in shifts) / len(shifts))

    return sum(losses) / len(losses)


@pytest.mark.host_compat
def test_sft_data_full_tuning_matches_independent_loss(assets, tmp_path, run_in_process):
    gamma = 0.1
    config = wspo_config(assets, tmp_path, pref_beta=gamma, plot_loss=True)
    run_in_process(config).check()
    logs = train_logs(tmp_path / "out")
    assert len(logs) == 3
    first = logs[0]
    assert first["wspo/strong_logratio"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert first["loss"] == pytest.approx(_independent_first_loss(assets, 4, gamma), rel=1e-4)
    assert first["wspo/fit_mse"] == pytest.approx(first["loss"], rel=1e-6)
    assert all(math.isfinite(entry["logps/chosen"]) and entry["logps/chosen"] < 0 for entry in logs)
    assert logs[-1]["wspo/strong_logratio"] != 0.0  # the policy moved
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "training_loss.png").is_file()
    assert (tmp_path / "out" / "training_wspo_fit_mse.png").is_file()


@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_precompute_and_per_step_give_the_same_losses(assets, tmp_path, finetuning_type):
    common = {"pref_ftx": 0.5, "val_size": 0.25, "do_eval": True, "eval_strategy": "steps", "eval_steps": 2}
    common["finetuning_type"] = finetuning_type
    run_train(wspo_config(assets, tmp_path / "pre", **common), tmp_path / "pre")
    run_train(wspo_config(assets, tmp_path / "step", precompute_logps=False, **common), tmp_path / "step")
    assert not (tmp_path / "step" / "cache").exists()  # nothing precomputed

    pre, step = log_history(tmp_path / "pre" / "out"), log_history(tmp_path / "step" / "out")
    for key in ("loss", "wspo/fit_mse", "wspo/weak_logratio", "eval_loss", "eval_wspo/fit_mse"):
        a = [entry[key] for entry in pre if key in entry]
        b = [entry[key] for entry in step if key in entry]
        assert a and a == pytest.approx(b, rel=1e-4, abs=1e-7), key

    loss, fit = pre[0]["loss"], pre[0]["wspo/fit_mse"]
    assert loss > fit  # the SFT term (pref_ftx) is added


def test_pairwise_data_lora_both_responses(assets, tmp_path):
    config = wspo_config(
        assets,
        tmp_path,
        dataset="tiny_pairs",
        wspo_response="both",
        finetuning_type="lora",
        lora_target="all",
        lora_rank=4,
        max_samples=16,
        max_steps=2,
    )
    proc = run_train(config, tmp_path)
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file()
    assert "Num examples = 32" in proc.stdout + proc.stderr  # 16 pairs -> 32 (prompt, response) examples
    first = train_logs(out)[0]
    assert first["wspo/strong_logratio"] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero

    # With LoRA, the precompute's reference is the base model and the per-step one the adapter-disabled policy.
    run_train({**config, "precompute_logps": False, "output_dir": str(tmp_path / "step")}, tmp_path / "s")
    assert [e["loss"] for e in train_logs(tmp_path / "step")] == pytest.approx(
        [e["loss"] for e in train_logs(out)], rel=1e-4
    )


@pytest.mark.parametrize("response", ["chosen", "rejected"])
def test_pairwise_response_choice(assets, tmp_path, run_in_process, response):
    config = wspo_config(assets, tmp_path, dataset="tiny_pairs", wspo_response=response, max_samples=8, max_steps=1)
    run_in_process(config).check()
    (manifest,) = list((tmp_path / "cache").glob("*/manifest.json"))
    info = json.loads(manifest.read_text())
    assert info["examples"] == 8 and info["extra"]["wspo_response"] == response


def test_cache_reuse_and_invalidation(assets, tmp_path, run_in_process):
    r"""Five trainings in this process (LLaMA-Factory's ``run_exp``): the cache is keyed by data and weights."""
    cache = tmp_path / "cache"

    def entries() -> list[Path]:  # one directory per key, beside the index of file hashes
        return sorted(path for path in cache.iterdir() if path.is_dir())

    config = wspo_config(assets, tmp_path, max_steps=1, max_samples=16, logps_cache_dir=str(cache))
    first = run_in_process(config).check()
    assert "Reusing precomputed" not in first.log
    (entry,) = entries()
    mtime = (entry / "manifest.json").stat().st_mtime_ns

    again = run_in_process(config).check()
    assert "Reusing precomputed" in again.log
    assert entries() == [entry] and (entry / "manifest.json").stat().st_mtime_ns == mtime

    run_in_process({**config, "cutoff_len": 24}).check()  # the data changes
    assert len(entries()) == 2

    # The weak aligned model is retrained in place: same path, new weights.
    weak_aligned = tmp_path / "weak_aligned"
    tiny_assets.build_model(weak_aligned, assets / "tokenizer", hidden_size=32, num_layers=1, seed=1)
    run_in_process({**config, "weak_aligned_model": str(weak_aligned)}).check()
    assert len(entries()) == 3
    tiny_assets.build_model(weak_aligned, assets / "tokenizer", hidden_size=32, num_layers=1, seed=7)
    changed = run_in_process({**config, "weak_aligned_model": str(weak_aligned)}).check()
    assert "Reusing precomputed" not in changed.log
    assert len(entries()) == 4
    assert not list(cache.glob("*/.tmp-*"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("precompute", [True, pytest.param(False, marks=pytest.mark.host_compat)])
def test_deepspeed_zero3_two_processes(assets, tmp_path, precompute):
    config = wspo_config(
        assets,
        tmp_path,
        deepspeed=str(DS_Z3_CONFIG),
        precompute_logps=precompute,
        max_steps=2,
        per_device_train_batch_size=2,
    )
    proc = run_train(config, tmp_path, nproc=2)
    text = proc.stdout + proc.stderr
    assert "world size: 2" in text
    logs = train_logs(tmp_path / "out")
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)
    assert logs[0]["wspo/strong_logratio"] == pytest.approx(0.0, abs=1e-6)
    assert logs[0]["loss"] == pytest.approx(_independent_first_loss(assets, 4, 0.1), rel=1e-4)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    if precompute:
        shards = sorted(path.name for path in (tmp_path / "cache").glob("*/shard-*"))
        assert shards == ["shard-00000-of-00002.safetensors", "shard-00001-of-00002.safetensors"]
