"""One no-grad pass that computes, fingerprints, shards and caches per-token log-probs.

The frozen models' contribution to a WSPO loss never changes during training, so it is computed
once, before the policy is loaded:

1. every training/evaluation example is identified by a hash of its token ids and labels
   (:func:`example_uid`), never by its position;
2. a fingerprint of everything the values depend on names a cache directory; if a complete cache
   is there it is reused;
3. otherwise each rank takes its share of the unique examples, runs the frozen models one at a time
   (sorted by length, batched, no grad, with a progress bar) and writes its shard atomically;
   rank 0 writes the manifest once every shard is in place;
4. every rank reads all shards into a :class:`LogpsStore`, which the collator queries by uid.
"""

import gc
import hashlib
import json
import os
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .logging import get_logger
from .losses import IGNORE_INDEX, per_token_logps


if TYPE_CHECKING:
    from .frozen import FrozenModel


logger = get_logger(__name__)


CACHE_FORMAT = 1
MANIFEST = "manifest.json"
# The per-token columns that the cache stores and the collators put beside ``labels``.
REF_LOGPS = "ref_logps"  # log pi_ref(y_t): the reference (WSPO and WPO)
WEAK_SHIFT = "weak_shift"  # w_t = log pi_w*(y_t) - log pi_w0(y_t): the weak model's alignment (WSPO)
KL_PREFIX = "kl_"  # the KL rows of a KTO batch carry their columns under this prefix


def example_uid(input_ids: Sequence[int], labels: Sequence[int]) -> int:
    r"""A content hash of one tokenized example, as a signed 64-bit integer."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(array("q", input_ids).tobytes())
    digest.update(b"|")
    digest.update(array("q", labels).tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def num_response_tokens(labels: Sequence[int]) -> int:
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


class LogpsStore:
    r"""Per-token values of many examples, looked up by :func:`example_uid`.

    ``columns[name]`` is a flat 1-D tensor; the values of example ``uids[i]`` are
    ``columns[name][offsets[i]:offsets[i + 1]]``, one per response token, in order.
    """

    def __init__(self, uids: torch.Tensor, offsets: torch.Tensor, columns: dict[str, torch.Tensor]) -> None:
        self.uids = uids
        self.offsets = offsets
        self.columns = columns
        self._index = {int(uid): i for i, uid in enumerate(uids.tolist())}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, uid: int) -> bool:
        return uid in self._index

    @classmethod
    def from_rows(cls, rows: dict[int, dict[str, torch.Tensor]], names: Sequence[str]) -> "LogpsStore":
        uids = list(rows)
        lengths = [rows[uid][names[0]].numel() for uid in uids]
        offsets = torch.zeros(len(uids) + 1, dtype=torch.int64)
        if uids:
            offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)

        columns = {}
        for name in names:
            values = [rows[uid][name].reshape(-1) for uid in uids]
            columns[name] = torch.cat(values) if values else torch.zeros(0)

        return cls(torch.tensor(uids, dtype=torch.int64), offsets, columns)

    @classmethod
    def concat(cls, stores: Iterable["LogpsStore"]) -> "LogpsStore":
        stores = list(stores)
        names = list(stores[0].columns)
        uids = torch.cat([store.uids for store in stores])
        lengths = torch.cat([store.offsets.diff() for store in stores])
        offsets = torch.zeros(len(uids) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        columns = {name: torch.cat([store.columns[name] for store in stores]) for name in names}
        return cls(uids, offsets, columns)

    def gather(self, uids: Sequence[int], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Scatter the stored values of ``uids`` onto the response positions of ``mask`` (``batch x (length-1)``)."""
        pieces = {name: [] for name in self.columns}
        for row, uid in enumerate(uids):
            index = self._index.get(uid)
            if index is None:
                raise KeyError(
                    "An example of this batch has no precomputed log-probs. The data changed after the precompute "
                    "pass; delete the cache or set `precompute_logps: false`."
                )

            start, end = self.offsets[index].item(), self.offsets[index + 1].item()
            if end - start != int(mask[row].sum()):
                raise ValueError(f"Precomputed values of example {uid} do not match its response length.")

            for name, column in self.columns.items():
                pieces[name].append(column[start:end])

        out = {}
        for name, column in self.columns.items():
            values = torch.zeros(mask.shape, dtype=column.dtype)
            values[mask.cpu()] = torch.cat(pieces[name]) if pieces[name] else torch.zeros(0, dtype=column.dtype)
            out[name] = values

        return out

    def save(self, path: str) -> None:
        r"""Write atomically: a temporary file in the same directory, then ``os.replace``."""
        from safetensors.torch import save_file

        tensors = {"uids": self.uids, "offsets": self.offsets}
        tensors.update({f"column.{name}": column.contiguous() for name, column in self.columns.items()})
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str) -> "LogpsStore":
        from safetensors.torch import load_file

        tensors = load_file(path)
        columns = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.startswith("column.")}
        return cls(tensors["uids"], tensors["offsets"], columns)


def weights_identity(name_or_path: str, revision: str | None = None, adapters: Sequence[str] | None = None) -> dict:
    r"""What identifies a model's weights: for a local directory the names, sizes and modification times of its
    files and the content of its config; for a hub id the id, revision and cached snapshot."""
    identity: dict[str, Any] = {"name_or_path": name_or_path, "revision": revision}
    if os.path.isdir(name_or_path):
        files = []
        for root, _, names in os.walk(name_or_path):
            for fname in sorted(names):
                full = os.path.join(root, fname)
                stat = os.stat(full)
                files.append((os.path.relpath(full, name_or_path), stat.st_size, stat.st_mtime_ns))

        identity["path"] = os.path.abspath(name_or_path)
        identity["files"] = sorted(files)
        config = os.path.join(name_or_path, "config.json")
        if os.path.isfile(config):
            with open(config, "rb") as f:
                identity["config_sha256"] = hashlib.sha256(f.read()).hexdigest()
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
            identity["snapshot"] = os.path.dirname(cached) if isinstance(cached, str) else None
        except Exception:
            identity["snapshot"] = None

    identity["adapters"] = [weights_identity(adapter) for adapter in adapters or []]
    return identity


def fingerprint(uids: Sequence[int], models: Sequence["FrozenModel"], extra: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "extra": extra}, sort_keys=True, default=str).encode())
    for model in models:
        digest.update(json.dumps({model.name: model.identity}, sort_keys=True, default=str).encode())

    digest.update(array("q", uids).tobytes())
    return digest.hexdigest()[:32]


@contextmanager
def zero3_init_disabled():
    r"""Load a frozen model whole on each rank, without ZeRO-3 partitioning.

    The precompute pass runs before the policy exists, so each rank has its whole device memory for
    one frozen model; unpartitioned, each rank runs its own share of the data with no collective.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    if config is None:
        yield
        return

    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def model_token_logps(model: "torch.nn.Module", batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Float32 per-token log-probs of ``batch["labels"]`` under ``model`` (see :func:`per_token_logps`)."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False).logits
    return per_token_logps(logits, batch["labels"])


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()

    return 0, 1


class ExampleIndex:
    r"""The unique examples of several data sets, keyed by uid, read in batches and fetched on demand."""

    def __init__(self, datasets: Sequence[Any], read_batch_size: int = 1024) -> None:
        self.datasets = [dataset.select_columns(["input_ids", "labels"]) for dataset in datasets]
        self.locations: dict[int, tuple[int, int, int]] = {}  # uid -> (data set, row, length)
        for which, dataset in enumerate(self.datasets):
            for start in range(0, len(dataset), read_batch_size):
                batch = dataset[start : start + read_batch_size]
                for offset, (input_ids, labels) in enumerate(zip(batch["input_ids"], batch["labels"])):
                    uid = example_uid(input_ids, labels)
                    if uid not in self.locations:
                        self.locations[uid] = (which, start + offset, len(input_ids))

    @property
    def uids(self) -> list[int]:
        return list(self.locations)

    def length(self, uid: int) -> int:
        return self.locations[uid][2]

    def feature(self, uid: int) -> dict[str, list[int]]:
        which, row, length = self.locations[uid]
        example = self.datasets[which][row]
        return {"input_ids": example["input_ids"], "attention_mask": [1] * length, "labels": example["labels"]}


@torch.no_grad()
def _score(
    model: "torch.nn.Module",
    examples: ExampleIndex,
    uids: list[int],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    desc: str,
    show_progress: bool,
) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    r"""Per-token log-probs of ``uids`` under ``model``, and the pass's timing (whole pass, forward calls alone)."""
    device = next(model.parameters()).device
    order = sorted(uids, key=examples.length, reverse=True)  # neighbours of similar length: little padding
    out: dict[int, torch.Tensor] = {}
    stats = {"seconds": 0.0, "forward_seconds": 0.0, "tokens": 0, "batches": 0}
    started = time.perf_counter()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress):
        chunk = order[start : start + batch_size]
        batch = collate([examples.feature(uid) for uid in chunk])
        batch = {key: value.to(device) for key, value in batch.items() if torch.is_tensor(value)}
        forward_started = time.perf_counter()
        logits = model(**{key: value for key, value in batch.items() if key != "labels"}, use_cache=False).logits
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats["forward_seconds"] += time.perf_counter() - forward_started
        logps, mask = per_token_logps(logits, batch["labels"])
        del logits
        logps, mask = logps.cpu(), mask.cpu()
        for row, uid in enumerate(chunk):
            out[uid] = logps[row][mask[row]]
        stats["tokens"] += (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        )
        stats["batches"] += 1

    stats["seconds"] = time.perf_counter() - started
    return out, stats


def precompute_logps(
    datasets: Sequence[Any],
    models: Sequence["FrozenModel"],
    combine: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    cache_dir: str,
    extra: dict[str, Any],
    batch_size: int,
    show_progress: bool = True,
) -> LogpsStore:
    r"""Compute (or reuse) ``combine({model.name: per-token logps})`` for every example of ``datasets``."""
    examples = ExampleIndex(list(datasets))
    uids = examples.uids
    key = fingerprint(uids, models, extra)
    target = os.path.join(cache_dir, key)
    manifest_path = os.path.join(target, MANIFEST)
    rank, world = _rank_and_world()

    if not os.path.isfile(manifest_path):
        os.makedirs(target, exist_ok=True)
        share = uids[rank::world]
        scores: dict[str, dict[int, torch.Tensor]] = {}
        passes: dict[str, dict[str, Any]] = {}  # this rank's timing of each model's pass, kept in the manifest
        for model_spec in models:
            with zero3_init_disabled():
                model = model_spec.load()

            model.eval()
            scores[model_spec.name], passes[model_spec.name] = _score(
                model, examples, share, collate, batch_size, f"Precomputing {model_spec.name} log-probs", show_progress
            )
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

        rows = {uid: combine({name: scores[name][uid] for name in scores}) for uid in share}
        names = list(combine({model_spec.name: torch.zeros(0) for model_spec in models}))
        shard_name = f"shard-{rank:05d}-of-{world:05d}.safetensors"
        LogpsStore.from_rows(rows, names).save(os.path.join(target, shard_name))
        _barrier()
        if rank == 0:
            shards = [f"shard-{r:05d}-of-{world:05d}.safetensors" for r in range(world)]
            manifest = {"format": CACHE_FORMAT, "fingerprint": key, "shards": shards, "examples": len(uids)}
            manifest.update({"extra": extra, "models": {m.name: m.identity for m in models}, "passes": passes})
            fd, tmp = tempfile.mkstemp(dir=target, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, default=str)

            os.replace(tmp, manifest_path)
            logger.info_rank0(f"Precomputed log-probs of {len(uids)} examples saved at {target}.")

        _barrier()
    else:
        logger.info_rank0(f"Reusing precomputed log-probs from {target}.")

    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)

    store = LogpsStore.concat(LogpsStore.load(os.path.join(target, shard)) for shard in manifest["shards"])
    missing = sum(1 for uid in uids if uid not in store)
    if missing:
        raise RuntimeError(f"The log-prob cache at {target} lacks {missing} examples; delete it and run again.")

    return store
