"""What identifies a frozen model's weights, for the key of the log-prob cache.

* A local directory: the content hash (SHA-256) of every file in it. Hashes are remembered in a small index
  by path, size, modification and change time, inode and device, so a 15 GB model is read once, not at every
  run; any change to a file (even one that keeps its size and modification time) changes its change time.
* A hub id: the revision resolved to a commit and the hashes that the hub already keeps for each file (SHA-256
  of the LFS objects, the git blob id of the others): asked from the hub when it is reachable, read from the
  local snapshot of that revision otherwise (``HF_HUB_OFFLINE=1``). A hub id that can be resolved neither way
  is an error, never a key that any revision would match.
"""

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from .files import write_atomically


class FileHashes:
    r"""SHA-256 of files, remembered in ``path`` (a JSON index) by path, size, mtime, ctime, inode and device."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    self.entries = json.load(f)
            except (OSError, ValueError):  # a damaged index only costs re-hashing
                self.entries = {}

    def digest(self, file: str) -> str:
        full = os.path.realpath(file)
        stat = os.stat(full)
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
        entry = self.entries.get(full)
        if entry is not None and entry.get("stat") == stamp:
            return entry["sha256"]

        with open(full, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()

        self.entries[full] = {"stat": stamp, "sha256": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        r"""Write the index atomically; a read-only cache directory only means hashing again next time."""
        if not (self.path and self.changed):
            return

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_atomically(self.path, json.dumps(self.entries).encode())
            self.changed = False
        except OSError:
            pass


def _hub_files(repo_id: str, revision: str | None, cache_dir: str | None, token: str | None) -> dict[str, Any]:
    r"""The commit that ``revision`` resolves to and the hub's hash of each file of it."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
        files = [(s.rfilename, s.lfs.sha256 if s.lfs else s.blob_id) for s in info.siblings or []]
        return {"commit": info.sha, "files": sorted(files)}
    except Exception as online_error:  # offline, or the hub is unreachable: the local snapshot of that revision
        try:
            folder = snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, token=token, local_files_only=True
            )
        except Exception:
            raise ValueError(
                f"Cannot identify the weights of {repo_id} (revision {revision or 'main'}) for the log-prob cache: "
                f"the hub cannot be asked ({type(online_error).__name__}) and no local snapshot of that revision "
                "exists. Download the model first, or pass a local directory."
            ) from online_error

        files = []
        for root, _, names in os.walk(folder):
            for name in names:
                full = os.path.join(root, name)
                # snapshot files link to blobs named by the hub's hash of their content
                files.append((os.path.relpath(full, folder), os.path.basename(os.path.realpath(full))))

        return {"commit": os.path.basename(os.path.normpath(folder)), "files": sorted(files)}


def weights_identity(
    name_or_path: str,
    revision: str | None,
    adapters: Sequence[str] | None,
    hashes: FileHashes,
    cache_dir: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    r"""The content of a model's files (and of its adapters'), local or on the hub (see the module docstring)."""
    identity: dict[str, Any] = {"name_or_path": name_or_path}
    if os.path.isdir(name_or_path):
        files = []
        for root, dirs, names in os.walk(name_or_path):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                files.append((os.path.relpath(full, name_or_path), hashes.digest(full)))

        identity["files"] = files
    else:
        identity["hub"] = _hub_files(name_or_path, revision, cache_dir, token)

    identity["adapters"] = [
        weights_identity(adapter, None, None, hashes, cache_dir, token) for adapter in adapters or []
    ]
    return identity
