r"""``llamafactory-wspo prepare-xsum``: XSUM in LLaMA-Factory's alpaca format, one file per split, with entries."""

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .args import CliError, option, parse_args, run_command
from .files import read_dataset_info, write_atomic, write_json_atomic


PROG = "llamafactory-wspo prepare-xsum"
DESCRIPTION = r"""Convert XSUM into LLaMA-Factory's alpaca format: one JSON file per split and dataset_info.json entries.

  llamafactory-wspo prepare-xsum                                  # EdinburghNLP/xsum from the hub -> data/xsum/
  llamafactory-wspo prepare-xsum output_dir=yaml_recipes/data/xsum \
      dataset_info=yaml_recipes/data/dataset_info.json max_document_words=600   # where the XSUM recipes look
  llamafactory-wspo prepare-xsum dataset=path/to/xsum_dir         # local files named train/validation/test.*
  llamafactory-wspo prepare-xsum dataset=test.parquet splits=test

Every row becomes {"instruction": "Summarize the following news article in one sentence.", "input": <document>,
"output": <summary>, "id": <id>}, written to <output_dir>/<split>.json; the entries xsum_<split> are merged into
dataset_info.json without touching other entries. Rows with an empty document or summary are dropped (and
counted). Files are written atomically.
"""

INSTRUCTION = "Summarize the following news article in one sentence."
DEFAULT_DATASET = "EdinburghNLP/xsum"
DATASET_PREFIX = "xsum_"
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
PARQUET_REVISION = "refs/convert/parquet"  # the hub's automatic parquet conversion of a script-based data set


@dataclass
class PrepareXsumArguments:
    dataset: str = option(
        DEFAULT_DATASET,
        help="Hub id, local directory (save_to_disk, or files named after the splits), or one .json/.jsonl/.parquet/"
        ".csv file (then `splits` names its one split); columns `document`, `summary` and optionally `id`.",
    )
    revision: str | None = option(None, help="Hub revision of `dataset` (branch, tag or commit).")
    output_dir: str = option("data/xsum", help="Where <split>.json are written.")
    dataset_info: str | None = option(
        None,
        help="dataset_info.json to merge the xsum_<split> entries into (file names relative to it); "
        "default: <output_dir>/dataset_info.json.",
    )
    splits: list[str] = option(
        help="Splits to convert (space- or comma-separated); each gives <split>.json and the entry xsum_<split>.",
        default_factory=lambda: ["train", "validation", "test"],
    )
    max_samples: int | None = option(None, help="Keep at most this many rows per split.")
    max_document_words: int | None = option(
        None, help="Truncate each document to this many whitespace-separated words (default: no truncation)."
    )

    def check(self) -> None:
        self.splits = list(dict.fromkeys(name for item in self.splits for name in item.split(",") if name))
        if not self.splits:
            raise CliError("--splits: give at least one split name, e.g. `--splits train validation test`")
        for name in ("max_samples", "max_document_words"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CliError(f"--{name} must be at least 1, got {value}")
        info = Path(self.dataset_info) if self.dataset_info else Path(self.output_dir) / "dataset_info.json"
        read_dataset_info(info, "--dataset_info")


def truncate_words(text: str, max_words: int | None) -> str:
    r"""The first ``max_words`` whitespace-separated words of ``text``, keeping its own whitespace (newlines)."""
    if max_words is None:
        return text
    for index, match in enumerate(re.finditer(r"\S+", text)):
        if index + 1 == max_words:
            return text[: match.end()]
    return text


def convert_rows(
    rows: Iterable[dict[str, Any]], max_samples: int | None = None, max_document_words: int | None = None
) -> tuple[list[dict[str, str]], int]:
    r"""Alpaca rows from XSUM rows (``document``, ``summary``, optional ``id``), and the number of rows dropped.

    A row whose document or summary is empty (after stripping whitespace) is dropped. ``max_samples`` counts the
    rows kept; a missing ``id`` becomes the row's index in the split.
    """
    converted, dropped = [], 0
    for index, row in enumerate(rows):
        if max_samples is not None and len(converted) >= max_samples:
            break
        document = truncate_words((row.get("document") or "").strip(), max_document_words)
        summary = (row.get("summary") or "").strip()
        if not document or not summary:
            dropped += 1
            continue
        row_id = row.get("id")
        converted.append(
            {
                "instruction": INSTRUCTION,
                "input": document,
                "output": summary,
                "id": str(index if row_id is None else row_id),
            }
        )
    return converted, dropped


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in FILE_BUILDERS


def load_xsum(dataset: str, splits: Sequence[str], revision: str | None = None) -> dict[str, Iterable[dict]]:
    r"""The requested splits of ``dataset``: a hub id, a local directory or one local data file."""
    import datasets

    path = Path(dataset).expanduser()
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise CliError(
                f"--dataset {dataset}: cannot read files of type {path.suffix!r}; use one of "
                f"{', '.join(sorted(FILE_BUILDERS))}, a directory, or a hub id"
            )
        if len(splits) != 1:
            raise CliError(
                f"--dataset {dataset} is one file, so it holds one split: name it with --splits (e.g. `splits=test`)"
            )
        loaded = datasets.load_dataset(builder, data_files={splits[0]: str(path)})
    elif path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    elif _looks_like_path(dataset):
        raise CliError(f"--dataset {dataset}: no such file or directory; give an existing path or a hub id")
    else:
        try:
            loaded = datasets.load_dataset(dataset, revision=revision)
        except RuntimeError as err:  # datasets >= 4 refuses loading scripts; the hub keeps a parquet conversion
            if revision is not None or "scripts are no longer supported" not in str(err):
                raise
            print(f"{dataset} has a loading script; reading its parquet conversion ({PARQUET_REVISION}).")
            loaded = datasets.load_dataset(dataset, revision=PARQUET_REVISION)

    if isinstance(loaded, datasets.Dataset):  # load_from_disk of a single split
        if len(splits) != 1:
            raise CliError(f"--dataset {dataset} holds one split: name it with --splits (one name)")
        loaded = datasets.DatasetDict({splits[0]: loaded})

    missing = [split for split in splits if split not in loaded]
    if missing:
        raise CliError(
            f"--splits: {dataset} has no split {', '.join(missing)}; it has {', '.join(loaded) or 'none'}: "
            "choose among those"
        )
    for split in splits:
        columns = loaded[split].column_names
        if "document" not in columns or "summary" not in columns:
            raise CliError(
                f"--dataset {dataset}: split {split} needs the XSUM columns `document` and `summary` "
                f"(and optionally `id`); it has {', '.join(columns)}"
            )
    return {split: loaded[split] for split in splits}


def _json_lines(rows: Sequence[dict[str, str]]) -> Iterator[str]:
    r"""A JSON array with one row per line."""
    yield "["
    for index, row in enumerate(rows):
        yield "\n" + json.dumps(row, ensure_ascii=False) + ("," if index + 1 < len(rows) else "")
    yield "\n]\n"


def merge_dataset_info(info_path: Path, split_files: dict[str, Path]) -> dict[str, Any]:
    r"""Add or replace the ``xsum_<split>`` entries of ``info_path`` (created if missing); keep every other entry."""
    info = read_dataset_info(info_path, "--dataset_info")
    for split, file in split_files.items():
        file_name = Path(os.path.relpath(file.resolve(), info_path.parent.resolve())).as_posix()
        info[f"{DATASET_PREFIX}{split}"] = {"file_name": file_name, "columns": dict(COLUMNS)}
    write_json_atomic(info_path, info)
    return info


def run(args: PrepareXsumArguments) -> int:
    output_dir = Path(args.output_dir)
    info_path = Path(args.dataset_info) if args.dataset_info else output_dir / "dataset_info.json"
    loaded = load_xsum(args.dataset, args.splits, revision=args.revision)
    split_files = {}
    for split in args.splits:
        rows, dropped = convert_rows(loaded[split], args.max_samples, args.max_document_words)
        split_files[split] = output_dir / f"{split}.json"
        write_atomic(split_files[split], "".join(_json_lines(rows)))
        note = f" ({dropped} with an empty document or summary dropped)" if dropped else ""
        print(f"{split}: {len(rows)} rows -> {split_files[split]}{note}")
    merge_dataset_info(info_path, split_files)
    print(f"entries {', '.join(DATASET_PREFIX + split for split in args.splits)} -> {info_path}")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command(PROG, lambda: run(parse_args(PrepareXsumArguments, argv, PROG, DESCRIPTION)))


ARGUMENTS = PrepareXsumArguments  # the options of this subcommand
