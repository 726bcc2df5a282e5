"""The log-prob cache on disk: its column names, the key, the manifest, the shards and their checksums.

A cache is a folder named by its key (:func:`cache_key`) under ``logps_cache_dir``. It holds one safetensors shard
per rank (``shard-RRRRR-of-WWWWW.safetensors``: the uids, the offsets and one flat tensor per column) and
``manifest.json`` (the format, the shards with their SHA-256 and size, the examples, the frozen models' identities,
the pass's timings and the weak shift's statistics). The data pipeline and the collators read the column names and
:class:`LogpsStore` from here; the pass that writes a cache is :mod:`.precompute`.
"""

import hashlib
import json
import os
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..losses import IGNORE_INDEX
from ..projection import WEAK_COLUMNS
from .files import sha256_file, write_atomically


CACHE_FORMAT = 2
MANIFEST = "manifest.json"
# The manifest's own layout, apart from the values (so not in the key): 1 = no `manifest_version` field (shards,
# checksums, models, passes); 2 adds `weak_shift_statistics` (see logps/shift_stats.py).
MANIFEST_VERSION = 2
FILE_HASHES = "file_hashes.json"  # content hashes of local model files, remembered across runs (see fingerprint.py)
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
        self.statistics: dict[str, Any] = {}  # of the weak shift, set by `precompute_logps` (logps/shift_stats.py)

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
        r"""Write atomically (:func:`write_atomically`); the file's SHA-256 and size.

        The bytes are made in memory and written through a locked temporary file of ours: ``save_file`` of
        safetensors writes through a temporary file of its own (``.tmpXXXXXX``, unlocked), which a clean-up could not
        tell from one that a killed run left."""
        from safetensors.torch import save

        tensors = {"uids": self.uids, "offsets": self.offsets}
        tensors.update({f"column.{name}": column.contiguous() for name, column in self.columns.items()})
        data = save(tensors)
        write_atomically(path, data)
        return hashlib.sha256(data).hexdigest(), len(data)

    @classmethod
    def load(cls, path: str) -> "LogpsStore":
        from safetensors.torch import load_file

        tensors = load_file(path)
        columns = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.startswith("column.")}
        return cls(tensors["uids"], tensors["offsets"], columns)


def cache_key(uids: Sequence[int], identities: dict[str, Any], extra: dict[str, Any]) -> str:
    r"""The cache key: the examples (by uid), the frozen models' identities and the stage's settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "extra": extra}, sort_keys=True, default=str).encode())
    digest.update(json.dumps(identities, sort_keys=True, default=str).encode())
    digest.update(array("q", uids).tobytes())
    return digest.hexdigest()[:32]


def manifest_version(manifest: Mapping[str, Any]) -> int:
    r"""The layout version of a cache manifest (:data:`MANIFEST_VERSION`); 1 for one written before the field."""
    return int(manifest.get("manifest_version", 1))


def read_manifest(target: str) -> dict[str, Any]:
    r"""The cache manifest at ``target`` (``{}`` if it cannot be read: the cache check reports that)."""
    try:
        with open(os.path.join(target, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return {}

    return manifest if isinstance(manifest, dict) else {}


def shard_name(rank: int, world: int) -> str:
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

        if os.path.getsize(path) != shard["bytes"] or verify and sha256_file(path) != shard["sha256"]:
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
