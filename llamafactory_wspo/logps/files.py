"""Files of the log-prob cache that several ranks and several runs share: locked temporary files, atomic writes,
and the clean-up of what killed runs left.

Each writer holds an advisory lock (``flock``) on its own temporary file while it writes, so one that nobody holds was
left by a killed run and is removed (with safetensors' own ``.tmpXXXXXX``, which earlier versions left); where the
file system cannot lock, only those older than :data:`STALE_TMP_SECONDS` are.
"""

import errno
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


try:
    import fcntl
except ImportError:  # not POSIX: temporary files are not locked, and left ones are removed by age
    fcntl = None


TMP_PREFIX = ".tmp"
RANK_CHECK_PREFIX = ".tmp-ranks-"  # the marker of the shared-directory check, in `logps_cache_dir` itself
STALE_TMP_SECONDS = 3600.0


def format_size(num_bytes: float) -> str:
    r"""A size for people: whole bytes below 1 KiB, then KiB, MiB, GiB or TiB with one decimal."""
    if num_bytes < 1024:
        return f"{int(num_bytes)} byte{'' if int(num_bytes) == 1 else 's'}"

    for unit in ("KiB", "MiB", "GiB"):
        num_bytes /= 1024
        if round(num_bytes, 1) < 1024:
            return f"{num_bytes:.1f} {unit}"

    return f"{num_bytes / 1024:.1f} TiB"


def sha256_file(path: str) -> str:
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
def locked_temporary(directory: str, prefix: str = ".tmp-", suffix: str = "") -> Iterator[tuple[int, str]]:
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


def write_atomically(path: str, data: bytes | memoryview) -> None:
    r"""Write ``data`` to ``path`` atomically: into a locked temporary file beside it, synced, then renamed (atomic on
    one file system). A failure leaves neither ``path`` nor the temporary file."""
    with locked_temporary(os.path.dirname(path), suffix=os.path.splitext(path)[1]) as (fd, tmp):
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
