"""Two ranks precompute one cache while another run finishes the same cache between their checks.

Run by ``torchrun --nproc_per_node 2`` from ``tests/test_reliability.py``: ``argv`` is the cache directory and
a complete cache of the same examples and models (the other run's). Rank 1's view of the file system lags: its
first look at the manifest waits until the other run's cache is in place. Each rank writes ``rank<N>.json`` beside
the cache directory.
"""

import json
import os
import shutil
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist
from datasets import Dataset

from helpers.tiny_lm import TinyFrozen, collate, examples


def main() -> None:
    cache_dir, finished = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    from llamafactory_wspo.logps import precompute
    from llamafactory_wspo.logps import store as cache_store

    checked = os.path.join(cache_dir, "rank0-checked")
    if rank == 1:  # the other run: it completes the cache once rank 0 has looked

        def other_run() -> None:
            while not os.path.exists(checked):
                time.sleep(0.05)
            for key in next(os.walk(finished))[1]:  # as a run writes: shards first, the manifest last, atomically
                os.makedirs(os.path.join(cache_dir, key), exist_ok=True)
                for name in sorted(os.listdir(os.path.join(finished, key)), key=lambda n: n == cache_store.MANIFEST):
                    tmp = os.path.join(cache_dir, key, ".tmp-copy")
                    shutil.copyfile(os.path.join(finished, key, name), tmp)
                    os.replace(tmp, os.path.join(cache_dir, key, name))
            open(checked + ".done", "w").close()

        threading.Thread(target=other_run, daemon=True).start()

    real_isfile = os.path.isfile

    def isfile(path):
        if path.endswith(cache_store.MANIFEST):
            if rank == 0:
                result = real_isfile(path)
                open(checked, "w").close()
                return result
            while not real_isfile(checked + ".done"):  # rank 1 looks later than rank 0
                time.sleep(0.05)
        return real_isfile(path)

    precompute.os.path.isfile = isfile
    store = precompute.precompute_logps(
        [Dataset.from_dict(examples())], [TinyFrozen()], lambda logps: {"ref_logps": logps["ref"]}, collate,
        cache_dir, {}, batch_size=4, show_progress=False,
    )  # fmt: skip
    with open(os.path.join(os.path.dirname(cache_dir), f"rank{rank}.json"), "w") as f:  # not stdout: ranks interleave
        json.dump({"rank": rank, "examples": len(store)}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
