"""One no-grad pass that computes, fingerprints, shards and caches per-token log-probs.

The frozen models' contribution to a WSPO or WPO loss never changes during training, so it is computed
once, before the policy is loaded:

1. every training/evaluation example is identified by a hash of its token ids and labels
   (:func:`.store.example_uid`), never by its position;
2. with several ranks, every rank first checks that it sees rank 0's ``logps_cache_dir`` (a shared file
   system); rank 0 alone then removes the temporary files that killed runs left (each writer holds a lock
   on its own), fingerprints everything the values depend on (the examples, the frozen models' weights
   and loader options, the stage's settings), which names a cache directory, checks the cache there
   (each shard's checksum, finite values) and decides: reuse it, compute it, or stop with an error (too
   little disk space); every rank follows that broadcast decision;
3. to compute, each rank takes its share of the unique examples, runs the frozen models one at a time
   (sorted by length, batched, no grad, with a progress bar) and writes its shard atomically (a locked
   temporary file, synced, then renamed); rank 0 writes the manifest, with each shard's checksum, once
   every shard is in place; a write that fails (a full disk) stops every rank with one line;
4. every rank reads all shards into a :class:`LogpsStore`, which the collator queries by uid. A damaged
   cache (a missing, truncated or altered shard, an unreadable manifest) is computed again, with one
   warning naming the file.
"""

import errno
import json
import math
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..logging import get_logger
from ..projection import WEAK_COLUMNS, WEAK_PROJECTION
from ..scoring import score_tokens
from .files import RANK_CHECK_PREFIX, format_size, locked_temporary, remove_left_temporary_files, write_atomically
from .fingerprint import FileHashes
from .sharding import all_gather, broadcast, frozen_for_pass, rank_and_world
from .shift_stats import STATISTICS_KEY, cache_statistics, merge_summaries, pass_summaries
from .store import (
    CACHE_FORMAT,
    FILE_HASHES,
    MANIFEST,
    MANIFEST_VERSION,
    LogpsStore,
    cache_key,
    num_response_tokens,
    read_cache,
    read_manifest,
    row_uid,
    shard_name,
)


if TYPE_CHECKING:
    from ..frozen import FrozenModel


logger = get_logger(__name__)


class ExampleIndex:
    r"""The unique examples of several data sets, keyed by uid, read in batches and fetched on demand."""

    def __init__(self, datasets: Sequence[Any], read_batch_size: int = 1024) -> None:
        weak = [name for name in WEAK_COLUMNS if datasets and all(name in d.column_names for d in datasets)]
        # Packed rows (LLaMA-Factory's packed SFT rows, or packed pairs) are scored as training sees them: each
        # example attends to its own tokens only (the segment numbers of ``attention_mask`` with ``neat_packing``),
        # with its positions restarting at 0 (``position_ids``).
        self.packed = bool(datasets) and all("position_ids" in d.column_names for d in datasets)
        packed = ["attention_mask", "position_ids"] if self.packed else []
        self.datasets = [dataset.select_columns(["input_ids", "labels", *packed, *weak]) for dataset in datasets]
        self.locations: dict[int, tuple[int, int, int]] = {}  # uid -> (data set, row, length)
        self.num_tokens = 0  # response tokens of the unique examples: the stored values
        for which, dataset in enumerate(self.datasets):
            for start in range(0, len(dataset), read_batch_size):
                batch = dataset[start : start + read_batch_size]
                for offset in range(len(batch["input_ids"])):
                    row = {name: values[offset] for name, values in batch.items()}
                    uid = row_uid(row)
                    if uid not in self.locations:
                        self.locations[uid] = (which, start + offset, len(row["input_ids"]))
                        self.num_tokens += num_response_tokens(row["labels"])

    @property
    def uids(self) -> list[int]:
        return list(self.locations)

    def length(self, uid: int) -> int:
        return self.locations[uid][2]

    def feature(self, uid: int, prefix: str = "") -> dict[str, list[int]]:
        which, row, _ = self.locations[uid]
        example = self.datasets[which][row]
        input_ids = example[f"{prefix}input_ids"]
        feature = {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": example[f"{prefix}labels"],
        }
        if self.packed:  # never with a prefix: cross-tokenizer WSPO refuses packing
            feature.update(attention_mask=example["attention_mask"], position_ids=example["position_ids"])

        return feature

    def row_columns(self, uid: int) -> dict[str, torch.Tensor]:
        r"""What ``combine`` needs of a row besides the log-probs: its ``weak_projection``, if it has one."""
        which, row, _ = self.locations[uid]
        if WEAK_PROJECTION not in self.datasets[which].column_names:
            return {}

        return {WEAK_PROJECTION: torch.tensor(self.datasets[which][row][WEAK_PROJECTION], dtype=torch.int64)}

    def scored_by(self, model_spec: "FrozenModel") -> "ExampleIndex | _PrefixedExamples":
        r"""These examples as ``model_spec`` scores them: its ``input_prefix`` columns (the weak rendering)."""
        prefix = getattr(model_spec, "input_prefix", "")
        return _PrefixedExamples(self, prefix) if prefix else self


class _PrefixedExamples:
    r"""The examples of an :class:`ExampleIndex` read from the ``prefix`` columns (``weak_input_ids``, ...)."""

    def __init__(self, examples: ExampleIndex, prefix: str) -> None:
        self.examples, self.prefix = examples, prefix

    @property
    def uids(self) -> list[int]:
        return self.examples.uids

    def length(self, uid: int) -> int:
        return self.examples.length(uid)

    def feature(self, uid: int) -> dict[str, list[int]]:
        return self.examples.feature(uid, self.prefix)


@torch.no_grad()
def _score(
    model: "torch.nn.Module",
    examples: ExampleIndex,
    uids: list[int],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    desc: str,
    show_progress: bool,
    response_only: bool,
    num_batches: int,
) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    r"""Per-token log-probs of ``uids`` under ``model`` in ``num_batches`` forward calls (a short share repeats an
    example, whose values are not kept), and the pass's timing (the whole pass; the forward calls with their
    scoring alone, without collating and copying)."""
    device = next(model.parameters()).device
    if getattr(collate, "block_diag_attn", False):  # packed rows: the 4D mask in this model's dtype
        collate.compute_dtype = next(model.parameters()).dtype
    order = sorted(uids, key=examples.length, reverse=True)  # neighbours of similar length: little padding
    out: dict[int, torch.Tensor] = {}
    stats = {"seconds": 0.0, "forward_seconds": 0.0, "tokens": 0, "batches": 0}
    started = time.perf_counter()
    for start in tqdm(range(0, num_batches * batch_size, batch_size), desc=desc, disable=not show_progress):
        chunk = order[start : start + batch_size]
        features = [examples.feature(uid) for uid in chunk or examples.uids[:1]]
        batch = collate(features)
        batch = {key: value.to(device) for key, value in batch.items() if torch.is_tensor(value)}
        forward_started = time.perf_counter()
        logps, _, mask, _ = score_tokens(model, batch, response_only=response_only)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats["forward_seconds"] += time.perf_counter() - forward_started
        logps, mask = logps.cpu(), mask.cpu()
        if not bool(torch.isfinite(logps[mask]).all()):
            raise ValueError(f"{desc}: the model gives non-finite log-probs; check its weights and `infer_dtype`.")

        for row, uid in enumerate(chunk):
            out[uid] = logps[row][mask[row]]
        stats["tokens"] += sum(sum(1 for value in feature["attention_mask"] if value) for feature in features)
        stats["batches"] += 1

    stats["seconds"] = time.perf_counter() - started
    return out, stats


def _check_free_space(cache_dir: str, needed: int) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if free < needed:
        raise ValueError(_space_message(cache_dir, needed, free))


def _space_message(cache_dir: str, needed: int, free: int | None = None) -> str:
    have = f", {format_size(free)} free" if free is not None else ""
    return (
        f"Not enough disk space for the log-prob cache at {cache_dir}: it needs about {format_size(needed)}{have}. "
        "Free some space, or point `logps_cache_dir` at a larger disk."
    )


def _write_failure(err: OSError, path: str, cache_dir: str, needed: int) -> dict[str, Any]:
    r"""One line for a cache file that could not be written (``path``), to raise on every rank."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(cache_dir).free
        except OSError:
            free = None
        message = _space_message(cache_dir, needed, free)
    else:
        message = (
            f"Cannot write the log-prob cache at {cache_dir} ({path}: {err.strerror or err}); it needs about "
            f"{format_size(needed)}. Point `logps_cache_dir` at a writable directory with that much room."
        )

    return {"errno": err.errno, "error": message}


def _cache_size(target: str) -> str:
    return format_size(sum(os.path.getsize(os.path.join(target, name)) for name in os.listdir(target)))


def _plan(
    examples: ExampleIndex,
    models: Sequence["FrozenModel"],
    combine: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    cache_dir: str,
    extra: dict[str, Any],
) -> tuple[dict[str, Any], LogpsStore | None]:
    r"""Rank 0's decision, which every rank then follows: the cache key, and whether to reuse, compute or stop; and the
    cache, verified, when it is reused. Temporary files that killed runs left are removed first, whatever follows."""
    remove_left_temporary_files(cache_dir)
    hashes = FileHashes(os.path.join(cache_dir, FILE_HASHES))
    identities = {model.name: model.identity(hashes) for model in models}
    hashes.save()
    key = cache_key(examples.uids, identities, extra)
    target = os.path.join(cache_dir, key)
    store, damage = read_cache(target, examples.uids)
    if store is not None:
        return {"action": "reuse", "key": key}, store

    if damage:
        logger.warning_rank0(f"The log-prob cache is damaged ({damage}): computing it again.")

    one = combine({model.name: torch.zeros(1) for model in models})
    bytes_per_token = sum(value.element_size() for value in one.values())
    needed = examples.num_tokens * bytes_per_token + len(examples.uids) * 16 + 2**16
    _check_free_space(cache_dir, needed)
    os.makedirs(target, exist_ok=True)
    return {"action": "compute", "key": key, "identities": identities, "needed": needed}, None


def _sees(path: str, token: str, wait: float = 1.0) -> bool:
    r"""Whether the file ``path`` holds ``token`` (waiting up to ``wait`` seconds for a file system whose view lags)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read() == token
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        except (OSError, ValueError):
            return False


def check_shared_cache_dir(cache_dir: str) -> None:
    r"""Stop on every rank unless every rank sees rank 0's ``cache_dir``: the pass writes one cache from all ranks.

    Rank 0 writes a marker holding a random token there (a locked temporary file); the broadcast of its name is the
    barrier after which every rank reads it; all ranks then gather what they saw, so all stop with the same line or
    none does. A rank 0 that cannot write there skips the check: the plan reports that directory, or reuses a cache
    that is only read.
    """
    rank, world = rank_and_world()
    if world == 1:
        return

    with ExitStack() as stack:
        marker = None
        if rank == 0:
            try:
                os.makedirs(cache_dir, exist_ok=True)
                fd, path = stack.enter_context(locked_temporary(cache_dir, prefix=RANK_CHECK_PREFIX))
                token = secrets.token_hex(16)
                os.write(fd, token.encode())
                os.fsync(fd)
                marker = (os.path.basename(path), token)
            except OSError:
                marker = None

        marker = broadcast(marker)
        if marker is None:
            return

        seen = _sees(os.path.join(cache_dir, marker[0]), marker[1])
        views = all_gather({"seen": seen, "host": socket.gethostname(), "dir": cache_dir})
    # (rank 0's marker is removed once every rank has read it)

    blind = [index for index, view in enumerate(views) if not view["seen"]]
    if blind:
        first, origin = views[blind[0]], views[0]
        others = f" (nor do {len(blind) - 1} other ranks)" if len(blind) > 1 else ""
        raise ValueError(
            f"`logps_cache_dir` is not shared by all ranks: rank {blind[0]} (host {first['host']}) does not see in "
            f"{first['dir']} the file that rank 0 (host {origin['host']}) wrote in {origin['dir']}{others}. The "
            "precompute pass writes one cache from every rank: set `logps_cache_dir` (or $LLAMAFACTORY_WSPO_CACHE) "
            "to a directory on a file system that every node shares."
        )


def precompute_logps(
    datasets: Sequence[Any],
    models: Sequence["FrozenModel"],
    combine: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    cache_dir: str,
    extra: dict[str, Any],
    batch_size: int,
    show_progress: bool = True,
    response_only: bool = True,
) -> LogpsStore:
    r"""Compute (or reuse) ``combine({model.name: per-token logps})`` for every example of ``datasets``.

    ``collate`` makes a batch of rows; with cross-tokenizer WSPO it is a mapping from each model's ``input_prefix``
    to the collator of that rendering (the weak one pads with the weak tokenizer).

    Rank 0 alone fingerprints, checks the cache and decides; every rank follows the broadcast decision, so no
    rank can take another path than the others (and wait forever at a barrier they never reach). Every shard is
    hashed once: when it is written, or by rank 0 when the cache is reused.
    """
    check_shared_cache_dir(cache_dir)  # first: a directory of each node's own stops every rank at once
    examples = ExampleIndex(list(datasets))
    uids = examples.uids
    rank, world = rank_and_world()
    plan, store = None, None
    if rank == 0:
        try:
            plan, store = _plan(examples, models, combine, cache_dir, extra)
        except Exception as err:  # every rank stops with rank 0's error
            plan = {"action": "error", "error": err}

    plan = broadcast(plan)
    if plan["action"] == "error":
        raise plan["error"]

    target = os.path.join(cache_dir, plan["key"])
    if plan["action"] == "compute":
        rows, names, passes, summaries = _compute_shard(
            examples, uids[rank::world], models, combine, collate, batch_size, show_progress, response_only
        )
        path = os.path.join(target, shard_name(rank, world))
        try:
            digest, size = LogpsStore.from_rows(rows, names).save(path)
            written = {"name": shard_name(rank, world), "sha256": digest, "bytes": size}
        except OSError as err:
            written = _write_failure(err, path, cache_dir, plan["needed"])

        shards = all_gather(written)  # every rank learns of a rank whose write failed, and stops with its line
        failure = next((shard for shard in shards if "error" in shard), None)
        if failure is None:
            weak_shift_statistics = merge_summaries(all_gather(summaries))
            if rank == 0:
                manifest = {"format": CACHE_FORMAT, "fingerprint": plan["key"], "shards": shards}
                manifest.update({"examples": len(uids), "extra": extra})
                manifest.update({"models": plan["identities"], "passes": passes})
                manifest.update({"manifest_version": MANIFEST_VERSION, STATISTICS_KEY: weak_shift_statistics})
                manifest_path = os.path.join(target, MANIFEST)
                try:
                    write_atomically(manifest_path, json.dumps(manifest, indent=2, default=str).encode())
                except OSError as err:
                    failure = _write_failure(err, manifest_path, cache_dir, plan["needed"])
                else:
                    logger.info_rank0(
                        f"Precomputed log-probs of {len(uids)} examples saved at {target} ({_cache_size(target)})."
                    )

            failure = broadcast(failure)  # and the barrier before any rank reads the manifest

        if failure is not None:  # a cache without its manifest is computed again: its shards only take space
            if not os.path.exists(os.path.join(target, MANIFEST)):
                with suppress(OSError):
                    os.remove(path)
            raise OSError(failure["errno"], failure["error"])

    if store is None:  # rank 0 reuses what it has just verified; the others, or a new cache, without hashing again
        store, damage = read_cache(target, uids, verify=False)
    if store is None:
        raise RuntimeError(
            f"The log-prob cache at {target} cannot be used ({damage or 'no manifest'}); delete it and run again."
        )

    if plan["action"] == "reuse":
        logger.info_rank0(f"Reusing precomputed log-probs from {target} ({_cache_size(target)}).")

    store.statistics = cache_statistics(read_manifest(target), store.columns)
    return store


def _compute_shard(
    examples: ExampleIndex,
    share: list[int],
    models: Sequence["FrozenModel"],
    combine: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    show_progress: bool,
    response_only: bool,
) -> tuple[dict[int, dict[str, torch.Tensor]], list[str], dict[str, Any], dict[str, Any]]:
    r"""Score this rank's ``share`` with each frozen model in turn: the rows to store, their columns, the timings,
    and the summaries of the weak shift (:func:`~llamafactory_wspo.logps.shift_stats.pass_summaries`)."""
    scores: dict[str, dict[int, torch.Tensor]] = {}
    passes: dict[str, Any] = {}
    _, world = rank_and_world()
    # Every rank makes the same number of forward calls (a ZeRO-3 forward gathers weights with the others).
    num_batches = math.ceil(math.ceil(len(examples.uids) / world) / batch_size)
    for model_spec in models:
        with frozen_for_pass(model_spec, world) as model:
            desc = f"Precomputing {model_spec.name} log-probs"
            scores[model_spec.name], passes[model_spec.name] = _score(
                model,
                examples.scored_by(model_spec),
                share,
                collate[getattr(model_spec, "input_prefix", "")] if isinstance(collate, Mapping) else collate,
                batch_size,
                desc,
                show_progress,
                response_only,
                num_batches,
            )
            del model  # the next model loads only once this one is freed

    columns = {uid: examples.row_columns(uid) for uid in share}  # the projection of cross-tokenizer WSPO
    rows = {uid: combine({**{name: scores[name][uid] for name in scores}, **columns[uid]}) for uid in share}
    names = list(combine({model_spec.name: torch.zeros(0) for model_spec in models}))
    return rows, names, passes, pass_summaries(rows, names, scores, columns)
