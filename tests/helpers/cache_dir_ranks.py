"""Two ranks of a gloo group run the precompute pass, first each on a cache directory of its own, then on one.

Started as two plain processes by ``tests/test_cache_store.py`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in the environment); ``argv``: the folder for the results, then the cache directory of each rank
for the first pass (``own0``, ``own1``) and the shared one (``shared``). Each rank writes ``rank<N>.json`` there:

- ``own``: the error of the first pass (type and message), how many times its frozen model loaded, and its seconds;
- ``shared``: the computing pass and the reuse after it (examples, model loads) and the files that the reuse hashed.
"""

import hashlib
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from datasets import Dataset

from helpers.tiny_lm import TinyFrozen, collate, examples


def _precompute(cache_dir: Path, model: TinyFrozen):
    from llamafactory_wspo.logps import precompute

    return precompute.precompute_logps(
        [Dataset.from_dict(examples())], [model], lambda logps: {"ref_logps": logps["ref"]}, collate,
        str(cache_dir), {}, batch_size=4, show_progress=False,
    )  # fmt: skip


def main() -> None:
    out, own, shared = Path(sys.argv[1]), [Path(sys.argv[2]), Path(sys.argv[3])], Path(sys.argv[4])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    result = {"rank": rank}
    import llamafactory_wspo.logps.precompute  # noqa: F401 (imported before the clock starts, as in a run)

    dist.barrier()

    def report() -> None:  # a file, not stdout: the ranks' outputs interleave
        (out / f"rank{rank}.json").write_text(json.dumps(result))

    model, started = TinyFrozen(), time.perf_counter()
    try:
        _precompute(own[rank], model)
        error = None
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    result["own"] = {"error": error, "loads": model.loads, "seconds": time.perf_counter() - started}
    report()
    if error is None or not error.startswith("ValueError"):  # the group may be broken: no second pass
        os._exit(0)

    computing = TinyFrozen()
    computed = _precompute(shared, computing)
    hashed: list[str] = []
    file_digest = hashlib.file_digest

    def counting(fileobj, digest, *args, **kwargs):  # observes: every file that the reuse hashes, by name
        hashed.append(os.path.basename(fileobj.name))
        return file_digest(fileobj, digest, *args, **kwargs)

    hashlib.file_digest = counting
    reusing = TinyFrozen()
    try:
        reused = _precompute(shared, reusing)
    finally:
        hashlib.file_digest = file_digest
    result["shared"] = {
        "examples": len(computed),
        "loads": computing.loads,
        "reused_examples": len(reused),
        "reused_loads": reusing.loads,
        "hashed": sorted(hashed),
    }
    report()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
