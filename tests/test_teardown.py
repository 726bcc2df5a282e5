"""The end of a multi-process run: every process group destroyed, and its Gloo threads joined, before exit."""

import gc
import json
import subprocess
import weakref

import pytest
import torch.distributed as dist
import yaml
from helpers.teardown_ranks import gloo_threads
from helpers.train import BIN, DS_Z3_CONFIG, ROOT, base_env, free_port, wpo_config

from llamafactory_wspo.train.teardown import teardown_distributed


def test_teardown_frees_deepspeeds_groups_and_joins_their_threads(monkeypatch):
    groups = pytest.importorskip("deepspeed.utils.groups")
    before = gloo_threads()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(groups, "_WORLD_GROUP", dist.new_group([0]))  # where DeepSpeed keeps its world clone
        kept = dist.new_group([0])  # the test's own reference: no teardown can free it
        refs = [weakref.ref(dist.group.WORLD), weakref.ref(groups._WORLD_GROUP)]
        assert len(gloo_threads()) > len(before)  # each group runs its worker threads

        warnings: list[str] = []
        teardown_distributed(warn=warnings.append)
        assert not dist.is_initialized()
        assert [ref() for ref in refs] == [None, None] and groups._WORLD_GROUP is None
        assert warnings == [
            "1 of 3 process groups are still referenced after the teardown; their threads run until the "
            "interpreter exits."
        ]
        del kept
        gc.collect()
        assert gloo_threads() == before
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_a_collective_left_in_flight_does_not_abort_a_two_process_run(assets, tmp_path):
    r"""A ZeRO-3 run whose last collective is still in flight when the stage returns exits 0 on every rank.

    ``helpers/teardown_ranks.py`` leaves an all-gather on DeepSpeed's group that completes only while rank 1's
    interpreter finalises, if the group is still alive then, and its completion callback needs the GIL: before
    the teardown destroyed every group, rank 1 died of SIGABRT ("terminate called without an active
    exception") after the model was saved.
    """
    config = wpo_config(
        assets, tmp_path, deepspeed=str(DS_Z3_CONFIG), max_steps=1, per_device_train_batch_size=2, ddp_timeout=120
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "ranks"
    out.mkdir()
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "helpers.teardown_ranks", str(recipe), str(out)],
        cwd=ROOT / "tests",
        env=base_env(PYTHONPATH=str(ROOT / "tests"), MASTER_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "terminate called" not in log, log[-6000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    results = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results == [{"gloo_threads": [], "group_alive": False}] * 2  # torn down before the interpreter exits
    assert not (out / "rank1-finalising").exists()
