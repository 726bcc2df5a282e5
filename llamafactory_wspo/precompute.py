"""One no-grad pass that computes, fingerprints, shards and caches per-token log-probs.

The frozen models' contribution to a WSPO loss never changes during training, so it is computed
once, before the policy is loaded:

1. every training/evaluation example is identified by a hash of its token ids and labels
   (:func:`example_uid`), never by its position;
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

import copy
import errno
import gc
import hashlib
import json
import math
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .identity import FileHashes
from .logging import get_logger
from .losses import IGNORE_INDEX
from .projection import WEAK_COLUMNS, WEAK_PROJECTION
from .scoring import score_tokens
from .shift_stats import STATISTICS_KEY, cache_statistics, merge_summaries, pass_summaries, read_manifest


try:
    import fcntl
except ImportError:  # not POSIX: temporary files are not locked, and left ones are removed by age
    fcntl = None


if TYPE_CHECKING:
    from .frozen import FrozenModel


logger = get_logger(__name__)


CACHE_FORMAT = 2
MANIFEST = "manifest.json"
# The manifest's own layout, apart from the values (so not in the key): 1 = no `manifest_version` field (shards,
# checksums, models, passes); 2 adds `weak_shift_statistics` (see shift_stats.py).
MANIFEST_VERSION = 2
FILE_HASHES = "file_hashes.json"  # content hashes of local model files, remembered across runs (see identity.py)
# Temporary files: each writer holds an advisory lock (`flock`) on its own while it writes, so one that nobody holds
# was left by a killed run and is removed (with safetensors' own `.tmpXXXXXX`, which earlier versions left); where the
# file system cannot lock, only those older than STALE_TMP_SECONDS are.
TMP_PREFIX = ".tmp"
RANK_CHECK_PREFIX = ".tmp-ranks-"  # the marker of the shared-directory check, in `logps_cache_dir` itself
STALE_TMP_SECONDS = 3600.0
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


def format_size(num_bytes: float) -> str:
    r"""A size for people: whole bytes below 1 KiB, then KiB, MiB, GiB or TiB with one decimal."""
    if num_bytes < 1024:
        return f"{int(num_bytes)} byte{'' if int(num_bytes) == 1 else 's'}"

    for unit in ("KiB", "MiB", "GiB"):
        num_bytes /= 1024
        if round(num_bytes, 1) < 1024:
            return f"{num_bytes:.1f} {unit}"

    return f"{num_bytes / 1024:.1f} TiB"


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _try_lock(fd: int, block: bool) -> bool | None:
    r"""Take the exclusive advisory lock of the open file ``fd``: ``True`` if taken, ``False`` if another open file
    holds it, ``None`` if this platform or file system cannot lock."""
    if fcntl is None:
        return None

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF):
            return None  # (EBADF: NFS emulates `flock` by a write lock, which a file open only to read cannot take)
        raise

    return True


def _same_file(fd: int, path: str) -> bool:
    r"""Whether ``path`` still names the file open as ``fd`` (not removed, not replaced)."""
    try:
        named, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False

    return (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev)


@contextmanager
def _locked_temporary(directory: str, prefix: str = ".tmp-", suffix: str = "") -> Iterator[tuple[int, str]]:
    r"""A new temporary file in ``directory`` (its descriptor and path), locked while the block runs and removed after
    it unless the block renamed it."""
    for _ in range(10):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
        if _try_lock(fd, block=True) is None or _same_file(fd, tmp):
            break

        os.close(fd)  # a clean-up took it between its creation and the lock, and removed it: another name
    else:
        raise OSError(errno.EAGAIN, f"Cannot keep a temporary file in {directory}")

    try:
        yield fd, tmp
    finally:
        try:
            if _same_file(fd, tmp):  # the block failed before its rename
                os.remove(tmp)
        finally:
            os.close(fd)  # and the lock with it


def _write_atomically(path: str, data: bytes | memoryview) -> None:
    r"""Write ``data`` to ``path`` atomically: into a locked temporary file beside it, synced, then renamed (atomic on
    one file system). A failure leaves neither ``path`` nor the temporary file."""
    with _locked_temporary(os.path.dirname(path), suffix=os.path.splitext(path)[1]) as (fd, tmp):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.replace(tmp, path)


def _remove_unheld(path: str, now: float) -> None:
    r"""Remove the temporary file ``path`` unless a live writer holds its lock (where files cannot be locked: if it is
    older than :data:`STALE_TMP_SECONDS`)."""
    try:  # open to write: NFS takes an exclusive lock only on such a file
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return

    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return

        taken = _try_lock(fd, block=False)
        left = now - os.fstat(fd).st_mtime > STALE_TMP_SECONDS if taken is None else taken
        if left and _same_file(fd, path):
            os.remove(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_left_temporary_files(cache_dir: str) -> None:
    r"""Remove what killed runs left under ``cache_dir``: temporary files in its cache folders (``.tmp-*`` and
    safetensors' ``.tmpXXXXXX``) and shared-directory markers in itself. A running writer's files are locked, and
    stay; nothing else is touched."""
    now = time.time()
    try:
        entries = list(os.scandir(cache_dir))
    except OSError:
        return

    for entry in entries:
        if entry.name.startswith(RANK_CHECK_PREFIX):
            _remove_unheld(entry.path, now)
        elif entry.is_dir(follow_symlinks=False):
            try:
                names = [inner.path for inner in os.scandir(entry.path) if inner.name.startswith(TMP_PREFIX)]
            except OSError:
                continue
            for path in names:
                _remove_unheld(path, now)


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
        self.statistics: dict[str, Any] = {}  # of the weak shift, set by `precompute_logps` (shift_stats.py)

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
        r"""Write atomically (:func:`_write_atomically`); the file's SHA-256 and size.

        The bytes are made in memory and written through a locked temporary file of ours: ``save_file`` of
        safetensors writes through a temporary file of its own (``.tmpXXXXXX``, unlocked), which a clean-up could not
        tell from one that a killed run left."""
        from safetensors.torch import save

        tensors = {"uids": self.uids, "offsets": self.offsets}
        tensors.update({f"column.{name}": column.contiguous() for name, column in self.columns.items()})
        data = save(tensors)
        _write_atomically(path, data)
        return hashlib.sha256(data).hexdigest(), len(data)

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


def manifest_version(manifest: Mapping[str, Any]) -> int:
    r"""The layout version of a cache manifest (:data:`MANIFEST_VERSION`); 1 for one written before the field."""
    return int(manifest.get("manifest_version", 1))


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


def read_cache(target: str, uids: Sequence[int], verify: bool = True) -> tuple[LogpsStore | None, str | None]:
    r"""The cache at ``target`` if it is complete and intact, else ``(None, why)`` naming the damaged file.

    ``verify``: check each shard against its checksum (one more read of it); without it only its size is checked,
    for a cache that rank 0 has just verified or that this pass has just written.
    """
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

        if os.path.getsize(path) != shard["bytes"] or verify and _sha256(path) != shard["sha256"]:
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
    key = fingerprint(examples.uids, identities, extra)
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
    rank, world = _rank_and_world()
    if world == 1:
        return

    with ExitStack() as stack:
        marker = None
        if rank == 0:
            try:
                os.makedirs(cache_dir, exist_ok=True)
                fd, path = stack.enter_context(_locked_temporary(cache_dir, prefix=RANK_CHECK_PREFIX))
                token = secrets.token_hex(16)
                os.write(fd, token.encode())
                os.fsync(fd)
                marker = (os.path.basename(path), token)
            except OSError:
                marker = None

        marker = _broadcast(marker)
        if marker is None:
            return

        seen = _sees(os.path.join(cache_dir, marker[0]), marker[1])
        views = _all_gather({"seen": seen, "host": socket.gethostname(), "dir": cache_dir})
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
    rank, world = _rank_and_world()
    plan, store = None, None
    if rank == 0:
        try:
            plan, store = _plan(examples, models, combine, cache_dir, extra)
        except Exception as err:  # every rank stops with rank 0's error
            plan = {"action": "error", "error": err}

    plan = _broadcast(plan)
    if plan["action"] == "error":
        raise plan["error"]

    target = os.path.join(cache_dir, plan["key"])
    if plan["action"] == "compute":
        rows, names, passes, summaries = _compute_shard(
            examples, uids[rank::world], models, combine, collate, batch_size, show_progress, response_only
        )
        path = os.path.join(target, _shard_name(rank, world))
        try:
            digest, size = LogpsStore.from_rows(rows, names).save(path)
            written = {"name": _shard_name(rank, world), "sha256": digest, "bytes": size}
        except OSError as err:
            written = _write_failure(err, path, cache_dir, plan["needed"])

        shards = _all_gather(written)  # every rank learns of a rank whose write failed, and stops with its line
        failure = next((shard for shard in shards if "error" in shard), None)
        if failure is None:
            weak_shift_statistics = merge_summaries(_all_gather(summaries))
            if rank == 0:
                manifest = {"format": CACHE_FORMAT, "fingerprint": plan["key"], "shards": shards}
                manifest.update({"examples": len(uids), "extra": extra})
                manifest.update({"models": plan["identities"], "passes": passes})
                manifest.update({"manifest_version": MANIFEST_VERSION, STATISTICS_KEY: weak_shift_statistics})
                manifest_path = os.path.join(target, MANIFEST)
                try:
                    _write_atomically(manifest_path, json.dumps(manifest, indent=2, default=str).encode())
                except OSError as err:
                    failure = _write_failure(err, manifest_path, cache_dir, plan["needed"])
                else:
                    logger.info_rank0(
                        f"Precomputed log-probs of {len(uids)} examples saved at {target} ({_cache_size(target)})."
                    )

            failure = _broadcast(failure)  # and the barrier before any rank reads the manifest

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
    and the summaries of the weak shift (:func:`~llamafactory_wspo.shift_stats.pass_summaries`)."""
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
    return rows, names, passes, pass_summaries(rows, names, scores, columns)
