"""One no-grad pass that computes, fingerprints, shards and caches per-token log-probs.

The frozen models' contribution to a WSPO loss never changes during training, so it is computed
once, before the policy is loaded:

1. every training/evaluation example is identified by a hash of its token ids and labels
   (:func:`example_uid`), never by its position;
2. rank 0 alone fingerprints everything the values depend on (the examples, the frozen models' weights
   and loader options, the stage's settings), which names a cache directory, checks the cache there
   (each shard's checksum, finite values) and decides: reuse it, compute it, or stop with an error (too
   little disk space); every rank follows that broadcast decision;
3. to compute, each rank takes its share of the unique examples, runs the frozen models one at a time
   (sorted by length, batched, no grad, with a progress bar) and writes its shard atomically (synced,
   then renamed); rank 0 writes the manifest, with each shard's checksum, once every shard is in place;
4. every rank reads all shards into a :class:`LogpsStore`, which the collator queries by uid. A damaged
   cache (a missing, truncated or altered shard, an unreadable manifest) is computed again, with one
   warning naming the file.
"""

import copy
import errno
import gc
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .identity import FileHashes
from .logging import get_logger
from .losses import IGNORE_INDEX
from .projection import WEAK_COLUMNS, WEAK_PROJECTION
from .scoring import score_tokens


if TYPE_CHECKING:
    from .frozen import FrozenModel


logger = get_logger(__name__)


CACHE_FORMAT = 2
MANIFEST = "manifest.json"
FILE_HASHES = "file_hashes.json"  # content hashes of local model files, remembered across runs (see identity.py)
STALE_TMP_SECONDS = 3600.0  # a temporary file older than this was left by a killed run
# The per-token columns that the cache stores and the collators put beside ``labels``.
REF_LOGPS = "ref_logps"  # log pi_ref(y_t): the reference (WSPO and WPO)
WEAK_SHIFT = "weak_shift"  # w_t = log pi_w*(y_t) - log pi_w0(y_t): the weak model's alignment (WSPO)
KL_PREFIX = "kl_"  # the KL rows of a KTO batch carry their columns under this prefix


def example_uid(input_ids: Sequence[int], labels: Sequence[int], *weak: Sequence[int]) -> int:
    r"""A content hash of one tokenized example, as a signed 64-bit integer (``weak``: the weak side's columns of
    cross-tokenizer WSPO, so that a cached row is keyed by the strong and the weak ids together)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(array("q", input_ids).tobytes())
    digest.update(b"|")
    digest.update(array("q", labels).tobytes())
    for column in weak:
        digest.update(b"|")
        digest.update(array("q", column).tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def row_uid(row: Mapping[str, Sequence[int]], prefix: str = "") -> int:
    r""":func:`example_uid` of a row's ``{prefix}input_ids`` and ``{prefix}labels`` and of its weak columns, if any."""
    weak = [row[f"{prefix}{name}"] for name in WEAK_COLUMNS if f"{prefix}{name}" in row]
    return example_uid(row[f"{prefix}input_ids"], row[f"{prefix}labels"], *weak)


def num_response_tokens(labels: Sequence[int]) -> int:
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


def _fsync_replace(tmp: str, path: str) -> None:
    r"""Make ``tmp`` durable, then move it to ``path`` (atomic on one file system)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())

    os.replace(tmp, path)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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

    def save(self, path: str) -> tuple[str, int]:
        r"""Write atomically (a temporary file in the same directory, synced, then renamed); its SHA-256 and size."""
        from safetensors.torch import save_file

        tensors = {"uids": self.uids, "offsets": self.offsets}
        tensors.update({f"column.{name}": column.contiguous() for name, column in self.columns.items()})
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp)
            digest, size = _sha256(tmp), os.path.getsize(tmp)
            _fsync_replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

        return digest, size

    @classmethod
    def load(cls, path: str) -> "LogpsStore":
        from safetensors.torch import load_file

        tensors = load_file(path)
        columns = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.startswith("column.")}
        return cls(tensors["uids"], tensors["offsets"], columns)


def fingerprint(uids: Sequence[int], identities: dict[str, Any], extra: dict[str, Any]) -> str:
    r"""The cache key: the examples (by uid), the frozen models' identities and the stage's settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "extra": extra}, sort_keys=True, default=str).encode())
    digest.update(json.dumps(identities, sort_keys=True, default=str).encode())
    digest.update(array("q", uids).tobytes())
    return digest.hexdigest()[:32]


def _hf_deepspeed_config() -> dict[str, Any] | None:
    r"""The DeepSpeed config of this run when it uses ZeRO-3 (as ``TrainingArguments`` resolved it), else ``None``."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    return config if config is not None and config.is_zero3() else None


def _inference_config(ds_config: Any, model: "torch.nn.Module") -> dict[str, Any]:
    r"""The run's ZeRO-3 config for a frozen model: no optimiser or scheduler, and the ``auto`` values that depend on
    the model resolved as the Trainer resolves them (``HfTrainerDeepSpeedConfig.trainer_config_finalize``)."""
    config = copy.deepcopy(ds_config.config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    text = model.config.get_text_config()
    hidden = max(text.hidden_sizes) if getattr(text, "hidden_sizes", None) else text.hidden_size
    zero = config.setdefault("zero_optimization", {})
    for key, value in (
        ("reduce_bucket_size", hidden * hidden),
        ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
        ("stage3_param_persistence_threshold", 10 * hidden),
    ):
        if zero.get(key, "auto") == "auto":
            zero[key] = value

    left = [path for path, value in _walk(config) if value == "auto"]
    if left:
        raise ValueError(
            f"The DeepSpeed config leaves {', '.join(left)} as `auto` for the precompute pass: set a value, or "
            "`precompute_logps: false`."
        )

    return config


def _walk(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@contextmanager
def frozen_for_pass(model_spec: "FrozenModel", world: int) -> Iterator["torch.nn.Module"]:
    r"""A frozen model loaded for the precompute pass, in evaluation mode, freed afterwards.

    Under ZeRO-3 with several ranks it is loaded partitioned (``zero.Init``) and run by a DeepSpeed engine, as the
    per-step mode runs it: each rank holds only its share of the weights, so any model that trains also
    precomputes. Otherwise each rank loads it whole.
    """
    ds_config = _hf_deepspeed_config() if world > 1 else None
    if ds_config is None:
        from transformers.integrations import deepspeed as hf_deepspeed

        ref = hf_deepspeed._hf_deepspeed_config_weak_ref
        config = ref() if ref is not None else None
        if config is not None:  # ZeRO-1/2 (or one rank): no partitioned loading
            hf_deepspeed.unset_hf_deepspeed_config()
        try:
            model = model_spec.load()
        finally:
            if config is not None:
                hf_deepspeed.set_hf_deepspeed_config(config)
        engine = None
    else:
        import deepspeed

        loaded = model_spec.load()  # partitioned as it loads
        held = sum(param.ds_tensor.numel() for param in loaded.parameters())
        total = sum(param.ds_numel for param in loaded.parameters())
        logger.info_rank0(
            f"Precomputing {model_spec.name} log-probs sharded by ZeRO-3: this rank holds {held} of its {total} "
            "parameters."
        )
        engine, *_ = deepspeed.initialize(model=loaded, config=_inference_config(ds_config, loaded))
        model = engine

    model.eval()
    try:
        yield model
    finally:
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()
        del model, engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


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
        weak = [name for name in WEAK_COLUMNS if datasets and all(name in d.column_names for d in datasets)]
        self.datasets = [dataset.select_columns(["input_ids", "labels", *weak]) for dataset in datasets]
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
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": example[f"{prefix}labels"]}

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
    order = sorted(uids, key=examples.length, reverse=True)  # neighbours of similar length: little padding
    out: dict[int, torch.Tensor] = {}
    stats = {"seconds": 0.0, "forward_seconds": 0.0, "tokens": 0, "batches": 0}
    started = time.perf_counter()
    for start in tqdm(range(0, num_batches * batch_size, batch_size), desc=desc, disable=not show_progress):
        chunk = order[start : start + batch_size]
        batch = collate([examples.feature(uid) for uid in chunk or examples.uids[:1]])
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
        stats["tokens"] += (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        )
        stats["batches"] += 1

    stats["seconds"] = time.perf_counter() - started
    return out, stats


def _broadcast(value: Any) -> Any:
    r"""Rank 0's ``value`` on every rank (the value itself without ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    return value


def _all_gather(value: Any) -> list[Any]:
    r"""Every rank's ``value``, in rank order."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(values, value)
        return values

    return [value]


def _shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}.safetensors"


def read_cache(target: str, uids: Sequence[int]) -> tuple[LogpsStore | None, str | None]:
    r"""The cache at ``target`` if it is complete and intact, else ``(None, why)`` naming the damaged file."""
    manifest_path = os.path.join(target, MANIFEST)
    if not os.path.isfile(manifest_path):
        return None, None

    try:
        with open(manifest_path, encoding="utf-8") as f:
            shards = json.load(f)["shards"]
        names = [shard["name"] for shard in shards]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{manifest_path} is unreadable ({type(err).__name__})"

    stores = []
    for shard in shards:
        path = os.path.join(target, shard["name"])
        if not os.path.isfile(path):
            return None, f"{path} is missing"

        if os.path.getsize(path) != shard["bytes"] or _sha256(path) != shard["sha256"]:
            return None, f"{path} does not match its checksum"

        try:
            store = LogpsStore.load(path)
        except Exception as err:
            return None, f"{path} cannot be read ({type(err).__name__})"

        if not all(bool(torch.isfinite(column).all()) for column in store.columns.values()):
            return None, f"{path} holds non-finite values"

        stores.append(store)

    store = LogpsStore.concat(stores) if stores else None
    missing = len(uids) if store is None else sum(1 for uid in uids if uid not in store)
    if missing:
        return None, f"{target} lacks {missing} of the {len(uids)} examples (shards {', '.join(names)})"

    return store, None


def _remove_stale_files(target: str, max_age: float = STALE_TMP_SECONDS) -> None:
    r"""Temporary files that a killed run left behind (a running run's are younger than ``max_age``)."""
    now = time.time()
    for name in os.listdir(target):
        path = os.path.join(target, name)
        try:
            if name.startswith(".tmp-") and now - os.path.getmtime(path) > max_age:
                os.remove(path)
        except OSError:
            pass


def _check_free_space(cache_dir: str, needed: int) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if free < needed:
        raise ValueError(_space_message(cache_dir, needed, free))


def _space_message(cache_dir: str, needed: int, free: int | None = None) -> str:
    have = f", {free / 2**20:.1f} MiB free" if free is not None else ""
    return (
        f"Not enough disk space for the log-prob cache at {cache_dir}: it needs about {needed / 2**20:.1f} MiB{have}. "
        "Free some space, or point `logps_cache_dir` at a larger disk."
    )


def _cache_size(target: str) -> str:
    size = sum(os.path.getsize(os.path.join(target, name)) for name in os.listdir(target))
    return f"{size / 2**20:.1f} MiB"


def _plan(
    examples: ExampleIndex,
    models: Sequence["FrozenModel"],
    combine: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    cache_dir: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    r"""Rank 0's decision, which every rank then follows: the cache key, and whether to reuse, compute or stop."""
    hashes = FileHashes(os.path.join(cache_dir, FILE_HASHES))
    identities = {model.name: model.identity(hashes) for model in models}
    hashes.save()
    key = fingerprint(examples.uids, identities, extra)
    target = os.path.join(cache_dir, key)
    store, damage = read_cache(target, examples.uids)
    if store is not None:
        return {"action": "reuse", "key": key}

    if damage:
        logger.warning_rank0(f"The log-prob cache is damaged ({damage}): computing it again.")

    one = combine({model.name: torch.zeros(1) for model in models})
    bytes_per_token = sum(value.element_size() for value in one.values())
    needed = examples.num_tokens * bytes_per_token + len(examples.uids) * 16 + 2**16
    _check_free_space(cache_dir, needed)
    return {"action": "compute", "key": key, "identities": identities, "needed": needed}


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
    rank can take another path than the others (and wait forever at a barrier they never reach).
    """
    examples = ExampleIndex(list(datasets))
    uids = examples.uids
    rank, world = _rank_and_world()
    plan = None
    if rank == 0:
        try:
            plan = _plan(examples, models, combine, cache_dir, extra)
        except Exception as err:  # every rank stops with rank 0's error
            plan = {"action": "error", "error": err}

    plan = _broadcast(plan)
    if plan["action"] == "error":
        raise plan["error"]

    target = os.path.join(cache_dir, plan["key"])
    if plan["action"] == "compute":
        if rank == 0:
            os.makedirs(target, exist_ok=True)
            _remove_stale_files(target)

        _barrier()
        rows, names, passes = _compute_shard(
            examples, uids[rank::world], models, combine, collate, batch_size, show_progress, response_only
        )
        try:
            digest, size = LogpsStore.from_rows(rows, names).save(os.path.join(target, _shard_name(rank, world)))
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise OSError(err.errno, _space_message(cache_dir, plan["needed"])) from err

            raise

        shards = _all_gather({"name": _shard_name(rank, world), "sha256": digest, "bytes": size})

        if rank == 0:
            manifest = {"format": CACHE_FORMAT, "fingerprint": plan["key"], "shards": shards, "examples": len(uids)}
            manifest.update({"extra": extra, "models": plan["identities"], "passes": passes})
            fd, tmp = tempfile.mkstemp(dir=target, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, default=str)

            _fsync_replace(tmp, os.path.join(target, MANIFEST))
            logger.info_rank0(
                f"Precomputed log-probs of {len(uids)} examples saved at {target} ({_cache_size(target)})."
            )

        _barrier()

    store, damage = read_cache(target, uids)
    if store is None:
        raise RuntimeError(
            f"The log-prob cache at {target} cannot be used ({damage or 'no manifest'}); delete it and run again."
        )

    if plan["action"] == "reuse":
        logger.info_rank0(f"Reusing precomputed log-probs from {target} ({_cache_size(target)}).")

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
) -> tuple[dict[int, dict[str, torch.Tensor]], list[str], dict[str, Any]]:
    r"""Score this rank's ``share`` with each frozen model in turn: the rows to store, their columns, the timings."""
    scores: dict[str, dict[int, torch.Tensor]] = {}
    passes: dict[str, Any] = {}
    _, world = _rank_and_world()
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
    return rows, names, passes
