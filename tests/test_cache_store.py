"""The precompute cache's files under faults (issue 21): ranks that do not share `logps_cache_dir`, temporary files
that killed runs left, a disk that fills during the pass, and shards hashed once.

Each fault is real: two processes in a gloo group, another process holding a writer's lock, a tmpfs that fills.
"""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from datasets import Dataset
from helpers.tiny_lm import TinyFrozen, collate, examples
from helpers.train import ROOT, base_env, free_port

from llamafactory_wspo.logps import files, precompute
from llamafactory_wspo.logps import store as cache_store


def _precompute(cache: Path, model: TinyFrozen | None = None):
    return precompute.precompute_logps(
        [Dataset.from_dict(examples())],
        [model or TinyFrozen()],
        lambda logps: {cache_store.REF_LOGPS: logps["ref"]},
        collate,
        str(cache),
        {},
        batch_size=4,
        show_progress=False,
    )


def _target(cache: Path) -> Path:
    (target,) = [path for path in cache.iterdir() if path.is_dir()]
    return target


# Defect 5: a cache directory that the ranks do not share -------------------------------------------------------


def test_ranks_without_one_shared_cache_dir_stop_at_once_and_a_shared_one_is_hashed_once(tmp_path):
    own, shared = [tmp_path / "own0", tmp_path / "own1"], tmp_path / "shared"  # as a per-node ~/.cache would be
    env = base_env(
        PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )
    env["WORLD_SIZE"] = "2"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "helpers.cache_dir_ranks", str(tmp_path), *map(str, own), str(shared)],
            cwd=ROOT / "tests",
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(output[-3000:] for output in outputs)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    # Each rank on its own directory: the same one line on both, at once, before any model loads.
    errors = [rank["own"]["error"] for rank in ranks]
    assert errors[0] == errors[1], errors
    line = errors[0]
    assert line.startswith("ValueError: `logps_cache_dir` is not shared by all ranks: rank 1 (host "), line
    assert f"does not see in {own[1]} the file that rank 0 (host " in line and f"wrote in {own[0]}." in line
    assert "a file system that every node shares" in line and "\n" not in line
    assert [rank["own"]["loads"] for rank in ranks] == [0, 0]
    assert max(rank["own"]["seconds"] for rank in ranks) < 10
    assert list(own[0].iterdir()) == []  # rank 0's marker is gone

    # One shared directory: computed, then reused with each of the two shards hashed once (by rank 0) in all.
    passes = {"examples": 12, "loads": 1, "reused_examples": 12, "reused_loads": 0}
    assert ranks[0]["shared"] == {
        **passes,
        "hashed": ["shard-00000-of-00002.safetensors", "shard-00001-of-00002.safetensors"],
    }
    assert ranks[1]["shared"] == {**passes, "hashed": []}


# Defect 12: a reused cache is hashed once -----------------------------------------------------------------------


def test_each_shard_is_hashed_once_by_a_reuse_and_never_read_back_by_the_pass(tmp_path, monkeypatch):
    hashed: list[str] = []
    file_digest = hashlib.file_digest

    def counting(fileobj, digest, *args, **kwargs):  # observes every file hashed, by name
        hashed.append(Path(fileobj.name).name)
        return file_digest(fileobj, digest, *args, **kwargs)

    monkeypatch.setattr(hashlib, "file_digest", counting)
    cache = tmp_path / "cache"
    _precompute(cache)
    assert hashed == []  # the pass hashes the bytes it writes, in memory
    reusing = TinyFrozen()
    _precompute(cache, reusing)
    assert reusing.loads == 0 and hashed == ["shard-00000-of-00001.safetensors"]


# Defect 6: temporary files -------------------------------------------------------------------------------------


@contextmanager
def _held(path: Path):
    r"""Another process holds the lock of ``path``, as a run that is writing it does."""
    code = (
        "import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); input()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "held\n"
        yield
    finally:
        proc.communicate("\n", timeout=30)


def test_temporary_files_that_nobody_holds_are_removed_by_a_run_that_reuses_the_cache(tmp_path):
    cache = tmp_path / "cache"
    _precompute(cache)
    target = _target(cache)
    killed_key = cache / ("0" * 32)  # the folder of another key, whose run was killed as it wrote
    killed_key.mkdir()
    left = [
        target / ".tmp-k1ll3d.safetensors",  # ours: a shard, and a manifest
        target / ".tmp-k1ll3d.json",
        target / ".tmpA1b2C3",  # safetensors' own, as `save_file` names it
        killed_key / ".tmpZ9y8X7",
        cache / ".tmp-ranks-k1ll3d",  # a marker of the shared-directory check
    ]
    for path in left:
        path.write_bytes(b"\0" * 4096)
    live = target / ".tmp-w0rk1ng.safetensors"
    live.write_bytes(b"\0" * 4096)
    kept = [cache / cache_store.FILE_HASHES, target / "notes.txt"]  # not temporary files: never touched
    for path in kept:
        path.write_text("{}")

    with _held(live):
        reusing = TinyFrozen()
        _precompute(cache, reusing)
        assert reusing.loads == 0  # a reuse, which computes nothing, and cleans all the same
        assert [path.name for path in left if path.exists()] == []
        assert live.exists() and all(path.exists() for path in kept)  # a running writer's file stays

    _precompute(cache)  # its writer is gone: now it was left
    assert not live.exists() and all(path.exists() for path in kept)


def test_a_writers_temporary_file_is_locked_while_it_writes(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    seen = []
    fsync = os.fsync

    def fsync_then_clean(fd):  # when a writer's bytes are in its temporary file, before the rename
        fsync(fd)
        before = sorted(path.name for path in cache.glob("*/.tmp*"))
        files.remove_left_temporary_files(str(cache))  # another run's clean-up, through its own open file
        seen.append((before, sorted(path.name for path in cache.glob("*/.tmp*"))))

    monkeypatch.setattr(os, "fsync", fsync_then_clean)
    _precompute(cache)
    assert len(seen) == 2  # the shard, then the manifest
    for (before, after), suffix in zip(seen, (".safetensors", ".json")):
        # one temporary file, ours (safetensors writes none of its own), and the clean-up left it alone
        assert len(before) == 1 and before[0].startswith(".tmp-") and before[0].endswith(suffix), before
        assert after == before
    monkeypatch.undo()
    assert not list(cache.glob("*/.tmp*"))
    reusing = TinyFrozen()
    _precompute(cache, reusing)
    assert reusing.loads == 0


def test_where_files_cannot_be_locked_only_old_temporary_files_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "fcntl", None)  # a platform without `flock` (a file system without it: the same)
    cache = tmp_path / "cache"
    _precompute(cache)
    old, young = _target(cache) / ".tmp-old.safetensors", _target(cache) / ".tmp-young.safetensors"
    for path in (old, young):
        path.write_bytes(b"\0")
    then = old.stat().st_mtime - 2 * files.STALE_TMP_SECONDS
    os.utime(old, (then, then))
    _precompute(cache)
    assert not old.exists() and young.exists()


# Defect 7: the disk fills ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, text",
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1023 bytes"),
        (1024, "1.0 KiB"),
        (16 * 1024 + 300, "16.3 KiB"),
        (2**20 - 1, "1.0 MiB"),
        (int(1.5 * 2**20), "1.5 MiB"),
        (3 * 2**30, "3.0 GiB"),
        (5 * 2**40, "5.0 TiB"),
    ],
)
def test_format_size(size, text):
    assert files.format_size(size) == text


def test_too_little_space_before_the_pass_shows_small_sizes_in_kib(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(precompute.shutil, "disk_usage", lambda path: usage._replace(free=3 * 1024))
    model = TinyFrozen()
    with pytest.raises(ValueError, match=r"at .*cache: it needs about \d+\.\d KiB, 3\.0 KiB free\. Free some space"):
        _precompute(tmp_path / "cache", model)
    assert model.loads == 0


def test_a_write_that_fails_otherwise_is_one_line_naming_the_file_and_the_space():
    failure = precompute._write_failure(
        OSError(errno.EFBIG, "File too large"), "/c/key/shard-00000-of-00001.safetensors", "/c", 3 * 2**20
    )
    assert failure == {
        "errno": errno.EFBIG,
        "error": "Cannot write the log-prob cache at /c (/c/key/shard-00000-of-00001.safetensors: File too large); "
        "it needs about 3.0 MiB. Point `logps_cache_dir` at a writable directory with that much room.",
    }


@pytest.fixture
def small_disk(tmp_path):
    r"""A 256 KiB tmpfs: a disk that fills for real (mounting needs root; elsewhere the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


class FillsTheDisk(TinyFrozen):
    r"""A frozen model whose loading leaves ``room`` bytes free on the cache's disk, as another job filling it would
    (after the check of free space before the pass)."""

    def __init__(self, disk: Path, room: int) -> None:
        super().__init__()
        self.disk, self.room = disk, room

    def load(self):
        (self.disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(self.disk).free - self.room))
        return super().load()


@pytest.mark.parametrize("failing", ["shard", "manifest"])
def test_a_disk_that_fills_during_the_pass_is_one_line_and_leaves_nothing(small_disk, failing):
    cache = small_disk / "cache"
    room = {"shard": 0, "manifest": 4096}[failing]  # one page of tmpfs: the shard fits, the manifest does not
    with pytest.raises(OSError) as info:
        _precompute(cache, FillsTheDisk(small_disk, room))
    assert info.value.errno == errno.ENOSPC
    line = str(info.value)
    assert f"Not enough disk space for the log-prob cache at {cache}: it needs about " in line, line
    assert " KiB, 0 bytes free. Free some space, or point `logps_cache_dir` at a larger disk." in line, line
    assert "\n" not in line
    assert list(_target(cache).iterdir()) == []  # no temporary file, no shard without its manifest

    (small_disk / "filler").unlink()
    model = TinyFrozen()
    assert len(_precompute(cache, model)) == 12 and model.loads == 1
