"""Under ZeRO-3 the precompute pass runs the frozen models sharded, as training does, with the same results."""

import re

import pytest
import torch
from helpers.train import DS_Z3_CONFIG, run_train, wspo_config

from llamafactory_wspo.logps.store import read_cache


def _cache(workdir):
    (target,) = [path for path in (workdir / "cache").iterdir() if path.is_dir()]
    return target


@pytest.mark.slow
def test_zero3_pass_is_sharded_and_equals_one_process(assets, tmp_path, run_in_process):
    common = dict(max_steps=1, max_samples=13, per_device_train_batch_size=2, precompute_batch_size=4)
    run_in_process(wspo_config(assets, tmp_path / "one", **common)).check()  # one process, whole models
    proc = run_train(
        wspo_config(assets, tmp_path / "two", deepspeed=str(DS_Z3_CONFIG), **common), tmp_path / "two", nproc=2
    )

    # Each frozen model was loaded partitioned: rank 0 holds about half of its parameters.
    held = re.findall(
        r"Precomputing (\w+) log-probs sharded by ZeRO-3: this rank holds (\d+) of its (\d+)",
        proc.stdout + proc.stderr,
    )
    assert sorted(name for name, _, _ in held) == ["ref", "weak_aligned", "weak_base"]
    for _, part, whole in held:
        assert 0.4 < int(part) / int(whole) < 0.6

    # The same cache key (the directory name), 13 examples split 7 + 6 (the short rank padded its calls), and the
    # same values within float tolerance.
    one, two = _cache(tmp_path / "one"), _cache(tmp_path / "two")
    assert one.name == two.name
    assert sorted(path.name for path in two.glob("shard-*")) == [
        "shard-00000-of-00002.safetensors",
        "shard-00001-of-00002.safetensors",
    ]
    uids = [int(uid) for uid in read_cache(str(one), [])[0].uids]
    store_one, store_two = read_cache(str(one), uids)[0], read_cache(str(two), uids)[0]
    assert len(uids) == 13 and store_two is not None
    for column in ("ref_logps", "weak_shift"):
        a, b = store_one.columns[column], store_two.columns[column]
        order_a = {
            uid: a[store_one.offsets[i] : store_one.offsets[i + 1]] for i, uid in enumerate(store_one.uids.tolist())
        }
        order_b = {
            uid: b[store_two.offsets[i] : store_two.offsets[i + 1]] for i, uid in enumerate(store_two.uids.tolist())
        }
        for uid in uids:
            torch.testing.assert_close(order_b[uid], order_a[uid], rtol=1e-5, atol=1e-6)
