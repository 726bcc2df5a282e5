"""A two-process ZeRO-3 run that leaves a collective in flight on DeepSpeed's group when it ends.

Run by ``torchrun --nproc_per_node 2 -m helpers.teardown_ranks RECIPE OUT`` from ``tests/test_teardown.py``:
LLaMA-Factory's ``run_exp`` trains the recipe (a plugin stage) with one callback. At the end of training rank 1
starts an asynchronous all-gather on DeepSpeed's data-parallel group with a Python completion callback, and
keeps the work, its tensors and its future only in a reference cycle; rank 0 enters the same all-gather late:
from an exit handler, once rank 1's interpreter is finalising, and only if its group still exists. A group that
survives the plugin's teardown thus completes its collective on a Gloo worker thread during finalisation,
which must take the GIL to run the callback: that aborts the rank. Each rank writes ``OUT/rank<N>.json``: the
Gloo threads it had after ``run_exp`` returned, and whether its group was still alive.
"""

import atexit
import json
import os
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from transformers import TrainerCallback


# First in this module's namespace, so the interpreter clears it (and runs its finaliser) before anything else.
_HOLD_FINALISATION = None
_WAIT_S = 60


def gloo_threads() -> list[str]:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:  # the thread has ended meanwhile
            continue
    return sorted(name for name in names if "gloo" in name)


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


class _HoldFinalisation:
    r"""Rank 1: while the interpreter finalises, let rank 0 complete the collective, if the group still exists.

    It runs when this module's namespace is cleared, so it uses only what it holds itself.
    """

    def __init__(self, group: weakref.ref, out: Path) -> None:
        self.group = group
        self.finalising, self.completed = str(out / "rank1-finalising"), str(out / "rank0-completed")
        self.open, self.exists, self.monotonic, self.sleep = open, os.path.exists, time.monotonic, time.sleep
        self.wait_s = _WAIT_S

    def __del__(self) -> None:
        if self.group() is None:  # destroyed by the teardown: nothing can complete during finalisation
            return
        with self.open(self.finalising, "w"):
            pass
        deadline = self.monotonic() + self.wait_s
        while not self.exists(self.completed) and self.monotonic() < deadline:
            self.sleep(0.02)
        self.sleep(1.0)  # the worker thread runs the completion callback now


def _complete_late(group: weakref.ref, out: Path) -> None:
    r"""Rank 0, at exit: enter the all-gather rank 1 left in flight, once rank 1 is finalising."""
    live = group()
    if live is None:
        return
    _wait_for(out / "rank1-finalising")
    live.allgather([[torch.zeros(4), torch.zeros(4)]], [torch.zeros(4)]).wait()
    (out / "rank0-completed").touch()


class LeaveCollectiveInFlight(TrainerCallback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.group: weakref.ref | None = None

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        group = optimizer.optimizer.dp_process_group  # ZeRO-3's data-parallel group, DeepSpeed's own
        assert group is not None and group is not dist.group.WORLD
        self.group = weakref.ref(group)
        if dist.get_rank() == 1:
            outputs = [torch.zeros(4), torch.zeros(4)]
            work = dist.all_gather(outputs, torch.ones(4), group=group, async_op=True)
            future = work.get_future().then(lambda completed: None)  # runs on a Gloo worker thread
            cycle = [work, outputs, future]
            cycle.append(cycle)  # only a garbage collection frees it
            global _HOLD_FINALISATION
            _HOLD_FINALISATION = _HoldFinalisation(self.group, self.out)
        else:
            atexit.register(_complete_late, self.group, self.out)


def main() -> None:
    recipe, out = Path(sys.argv[1]), Path(sys.argv[2])
    from llamafactory.train.tuner import run_exp

    callback = LeaveCollectiveInFlight(out)
    run_exp(yaml.safe_load(recipe.read_text(encoding="utf-8")), callbacks=[callback])
    rank = int(os.environ["RANK"])
    result = {
        "gloo_threads": gloo_threads(),
        "group_alive": callback.group is not None and callback.group() is not None,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
