"""Faults and hostile input: nothing lost, nothing silently wrong, no code run unasked (issue 14).

Each test injects its fault for real (a damaged file, a lagging rank, a model folder that carries code) and
checks what the user gets: one clear error before any model loads, or a warning and a correct result.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers.tiny_lm import TinyFrozen, collate, examples
from helpers.train import BIN, ROOT, base_env, free_port, train_logs, wpo_config, wspo_config

from llamafactory_wspo.logps import precompute
from llamafactory_wspo.logps import store as cache_store
from llamafactory_wspo.logps.fingerprint import FileHashes, weights_identity


@pytest.fixture
def plugin_log():
    r"""The messages of the plugin's loggers during the test."""
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("llamafactory.wspo")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _precompute(cache: Path, model: TinyFrozen | None = None, num: int = 12):
    return precompute.precompute_logps(
        [Dataset.from_dict(examples(num))],
        [model or TinyFrozen()],
        lambda logps: {cache_store.REF_LOGPS: logps["ref"]},
        collate,
        str(cache),
        {},
        batch_size=4,
        show_progress=False,
    )


def _values(store) -> dict[int, torch.Tensor]:
    return {
        int(uid): store.columns[cache_store.REF_LOGPS][store.offsets[i] : store.offsets[i + 1]]
        for i, uid in enumerate(store.uids)
    }


# 9. the start-up line ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["removed", "half-removed"])
def test_startup_line_of_a_removed_package_is_one_warning(tmp_path, state):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(ROOT / "llamafactory_wspo.pth", site)
    if state == "half-removed":  # the package folder is left, its modules are gone
        (site / "llamafactory_wspo").mkdir()
        (site / "llamafactory_wspo" / "__init__.py").write_text("")

    code = f"import site; site.addsitedir({str(site)!r}); print('started')"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    proc = subprocess.run(  # not from the checkout, whose package `-c` would find in the working directory
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "started"
    assert "Traceback" not in proc.stderr and "Error processing line" not in proc.stderr, proc.stderr
    assert proc.stderr.count("llamafactory-wspo is inactive") == 1, proc.stderr


# 2. every rank takes rank 0's path ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ranks_follow_rank_zero_when_another_run_finishes_the_cache(tmp_path):
    finished = tmp_path / "finished"
    _precompute(finished)  # the other run's complete cache of the same examples and models
    cache = tmp_path / "cache"
    cache.mkdir()
    env = base_env(PYTHONPATH=str(ROOT / "tests"), MASTER_PORT=str(free_port()))
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "helpers.precompute_ranks", str(cache), str(finished)],
        cwd=ROOT / "tests",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results == [{"examples": 12, "rank": 0}, {"examples": 12, "rank": 1}]


# 4. cache identity ------------------------------------------------------------------------------------------


def test_local_weights_are_identified_by_content_and_hashed_once(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 64)
    index = tmp_path / "cache" / "file_hashes.json"
    hashes = FileHashes(str(index))
    first = weights_identity(str(model), None, None, hashes)
    hashes.save()

    remembered = FileHashes(str(index))
    assert weights_identity(str(model), None, None, remembered) == first and not remembered.changed

    # Other bytes, same size and modification time: a new identity all the same.
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert weights_identity(str(model), None, None, FileHashes(str(index))) != first


def _fake_hub_snapshot(hub: Path, repo: str, commit: str, blob: str) -> None:
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / blob).write_text(f"weights {blob}")
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(root / "blobs" / blob)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def test_hub_weights_are_identified_by_resolved_revision(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub = tmp_path / "hub"
    _fake_hub_snapshot(hub, "org/tiny", "a" * 40, "1" * 64)
    hashes = FileHashes(None)
    first = weights_identity("org/tiny", None, None, hashes, cache_dir=str(hub))
    assert first["hub"] == {"commit": "a" * 40, "files": [("model.safetensors", "1" * 64)]}

    _fake_hub_snapshot(hub, "org/tiny", "b" * 40, "2" * 64)  # `main` moves upstream and is downloaded
    assert weights_identity("org/tiny", None, None, hashes, cache_dir=str(hub))["hub"]["commit"] == "b" * 40

    with pytest.raises(ValueError, match="Cannot identify the weights of org/absent"):  # never a blind key
        weights_identity("org/absent", None, None, hashes, cache_dir=str(hub))


# 5. damaged cache files -------------------------------------------------------------------------------------


def _damage(shard: Path, how: str) -> None:
    data = shard.read_bytes()
    if how == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        shard.write_bytes(b"")
    elif how == "missing":
        shard.unlink()
    elif how == "flipped":  # same size: only the checksum can tell
        data = bytearray(data)
        data[-3] ^= 0x55
        shard.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "empty", "missing", "flipped", "manifest"])
def test_damaged_cache_is_computed_again_with_one_warning(tmp_path, plugin_log, how):
    cache = tmp_path / "cache"
    expected = _values(_precompute(cache))
    (target,) = [path for path in cache.iterdir() if path.is_dir()]
    (shard,) = target.glob("shard-*")
    if how == "manifest":
        manifest = target / cache_store.MANIFEST
        manifest.write_text(manifest.read_text()[:40])
        damaged = manifest
    else:
        _damage(shard, how)
        damaged = shard

    model = TinyFrozen()
    store = _precompute(cache, model)
    warnings = [line for line in plugin_log if "log-prob cache is damaged" in line]
    assert model.loads == 1  # computed again
    assert len(warnings) == 1 and str(damaged) in warnings[0], plugin_log
    got = _values(store)
    assert got.keys() == expected.keys() and all(torch.equal(got[uid], expected[uid]) for uid in got)

    again = TinyFrozen()
    _precompute(cache, again)
    assert again.loads == 0  # and the repaired cache is used


def test_full_disk_is_one_error_before_any_model_loads(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(precompute.shutil, "disk_usage", lambda path: usage._replace(free=1024))
    model = TinyFrozen()
    with pytest.raises(ValueError, match=r"Not enough disk space for the log-prob cache at .*cache: it needs about"):
        _precompute(cache, model)
    assert model.loads == 0


def test_non_finite_log_probs_stop_the_pass(tmp_path):
    class Broken(TinyFrozen):
        def load(self):
            model = super().load()
            with torch.no_grad():
                model.table[3, 5] = float("nan")
            return model

    with pytest.raises(ValueError, match="non-finite log-probs"):
        _precompute(tmp_path / "cache", Broken())
    assert not list((tmp_path / "cache").glob("*/manifest.json"))


def test_cache_size_is_reported(tmp_path, plugin_log):
    _precompute(tmp_path / "cache")
    _precompute(tmp_path / "cache")
    saved, reused = [line for line in plugin_log if re.search(r"log-probs .* \(\d+\.\d KiB\)\.$", line)]
    assert saved.startswith("Precomputed log-probs of 12 examples saved at") and reused.startswith("Reusing")


# 6., 7. data that the frozen models cannot score ---------------------------------------------------------------


def test_weak_embedding_smaller_than_the_data_ids(assets, tmp_path, run_in_process):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(assets / "weak")
    config.vocab_size = 20  # the tokenizer has more ids: the data holds ids past this embedding
    small = tmp_path / "small_weak"
    AutoModelForCausalLM.from_config(config).save_pretrained(small)
    for name in os.listdir(assets / "weak"):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(assets / "weak" / name, small)

    run = run_in_process(wspo_config(assets, tmp_path, weak_base_model=str(small)))
    assert isinstance(run.error, ValueError), run.error_text()
    assert f"`weak_base_model` ({small}) has an embedding of 20 rows" in str(run.error)
    assert not run.loaded_models and not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def _words(text: str, count: int) -> str:
    words = text.split()
    return " ".join((words * count)[:count])


def _long_prompt_data(assets: Path, tmp_path: Path) -> Path:
    r"""8 rows whose 2000-word prompt leaves no room for their 12-word responses under ``cutoff_len: 16``
    (LLaMA-Factory then keeps 16 * 12 // 2012 = 0 response tokens), and 8 rows with a 2-word response."""
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    info = json.loads((data / "dataset_info.json").read_text())
    long_prompt = " animals" * 2000
    sft = json.loads((data / "tiny_sft.json").read_text())[:8]
    rows = [
        {**row, "instruction": row["instruction"] + long_prompt, "output": _words(row["output"], 12)} for row in sft
    ]
    rows += [{**row, "output": _words(row["output"], 2)} for row in sft]
    (data / "long_sft.json").write_text(json.dumps(rows))
    info["long_sft"] = {**info["tiny_sft"], "file_name": "long_sft.json"}
    pairs = json.loads((data / "tiny_pairs.json").read_text())[:8]
    rows = [
        {
            **row,
            "instruction": row["instruction"] + long_prompt,
            **{key: _words(row[key], 12) for key in ("chosen", "rejected")},
        }
        for row in pairs
    ]
    rows += [{**row, **{key: _words(row[key], 2) for key in ("chosen", "rejected")}} for row in pairs]
    (data / "long_pairs.json").write_text(json.dumps(rows))
    info["long_pairs"] = {**info["tiny_pairs"], "file_name": "long_pairs.json"}
    (data / "dataset_info.json").write_text(json.dumps(info))
    return data


@pytest.mark.parametrize("stage", ["wspo", "wpo"])
def test_examples_without_response_tokens_are_dropped(assets, tmp_path, run_in_process, stage):
    data = _long_prompt_data(assets, tmp_path)
    make, dataset = (wspo_config, "long_sft") if stage == "wspo" else (wpo_config, "long_pairs")
    config = make(assets, tmp_path, dataset=dataset, dataset_dir=str(data), cutoff_len=16, max_steps=1)
    run = run_in_process(config).check()
    assert "Dropped 8 of 16 examples: `cutoff_len: 16` left no response token in them." in run.log
    assert len(train_logs(tmp_path / "out")) == 1

    only_long = make(assets, tmp_path / "b", dataset=dataset, dataset_dir=str(data), cutoff_len=16, max_samples=8)
    run = run_in_process(only_long)
    assert isinstance(run.error, ValueError) and "`cutoff_len: 16` leaves no response token" in str(run.error)
    assert not run.loaded_models


# 1. remote code ---------------------------------------------------------------------------------------------


def test_generation_runs_no_remote_code_unless_asked(assets, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(assets / "strong", model)
    marker = tmp_path / "remote-code-ran"
    (model / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import Qwen2Config, Qwen2ForCausalLM\n"
        "class CustomConfig(Qwen2Config):\n    pass\n"
        "class CustomModel(Qwen2ForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))

    def generator(**kwargs) -> None:  # in a subprocess: loading remote code registers classes process-wide
        code = (
            "from llamafactory_wspo.inference import Generator; "
            f"Generator({str(model)!r}, 'qwen', backend='transformers', **{kwargs!r})"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    generator()
    assert not marker.exists()
    generator(trust_remote_code=True)
    assert marker.exists()  # the folder's code does run when the user asks for it
