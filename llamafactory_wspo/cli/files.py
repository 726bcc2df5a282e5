r"""Reading inputs and writing outputs that survive a kill: JSON/JSONL records, append-as-you-go JSONL, atomic files.

A long step (generation, judging) appends each finished record to a JSONL file and flushes it to disk at once; a
killed run leaves complete lines, plus at most one partial last line, which :func:`open_resumable` cuts off before
the next run appends. Whole files that are replaced in one go (``dataset_info.json``, metrics) are written to a
temporary file beside the target and renamed over it.
"""

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from .args import CliError


def read_records(path: str | Path, option: str) -> list[dict[str, Any]]:
    r"""Records of a ``.json`` file (a list of objects) or a ``.jsonl`` file (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"{option} {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"{option} {path}: not valid JSON ({err})") from None
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise CliError(f"{option} {path}: expected a JSON list of objects or JSON lines of objects")
    return records


def read_jsonl_prefix(path: Path) -> tuple[list[dict[str, Any]], int]:
    r"""The complete records at the start of a JSONL file and the byte length they take.

    A last line without its newline, or one that is not a JSON object, is what a killed writer left: it is not
    counted (the length stops before it). A bad line followed by good ones is damage, not a kill: an error.
    """
    records: list[dict[str, Any]] = []
    length = 0
    if not path.is_file():
        return records, length
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):  # the piece after the last newline is incomplete
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines) - 1 and not lines[-1]:  # the last complete line: a torn write, redo it
                break
            raise CliError(
                f"{path}, line {number}: not a JSON object; the file is damaged: remove that line or the file"
            )
        records.append(record)
        length += len(line) + 1
    return records, length


def open_resumable(path: Path, length: int) -> IO[str]:
    r"""``path`` for appending after its first ``length`` bytes (what a killed run left beyond is cut off)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    handle.truncate(length)
    handle.seek(length)
    return handle


def append_records(handle: IO[str], records: Iterable[dict[str, Any]]) -> None:
    r"""Append JSON lines and push them to the disk before returning."""
    handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    handle.flush()
    os.fsync(handle.fileno())


def write_atomic(path: Path, text: str) -> None:
    r"""Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def read_dataset_info(path: Path, option: str) -> dict[str, Any]:
    r"""A ``dataset_info.json`` (empty when missing), checked to be a JSON object."""
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CliError(f"{option}: {path} is not valid JSON ({err}); fix or remove it") from None
    if not isinstance(info, dict):
        raise CliError(f"{option}: {path} must hold a JSON object of data sets; fix or remove it")
    return info
