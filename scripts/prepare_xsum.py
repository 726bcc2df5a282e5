"""Convert XSUM into LLaMA-Factory's alpaca format: one JSON file per split and their ``dataset_info.json`` entries.

    python scripts/prepare_xsum.py                                   # EdinburghNLP/xsum from the hub -> data/xsum/
    python scripts/prepare_xsum.py --output_dir yaml_recipes/data/xsum \
        --dataset_info yaml_recipes/data/dataset_info.json           # where the recipes in yaml_recipes/xsum/ look
    python scripts/prepare_xsum.py --dataset path/to/xsum_dir        # local files named train/validation/test.*
    python scripts/prepare_xsum.py --dataset test.parquet --splits test

Every row becomes ``{"instruction": INSTRUCTION, "input": <document>, "output": <summary>, "id": <id>}``, written to
``<output_dir>/<split>.json``; the entries ``xsum_<split>`` (columns prompt/query/response) are merged into
``dataset_info.json`` without touching other entries. Rows with an empty document or summary are dropped (and
counted). Files are written atomically (temporary file + rename).
"""

import argparse
import json
import os
import re
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from _cli import parse_args


INSTRUCTION = "Summarize the following news article in one sentence."
DEFAULT_DATASET = "EdinburghNLP/xsum"
DEFAULT_SPLITS = ("train", "validation", "test")
DATASET_PREFIX = "xsum_"
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
PARQUET_REVISION = "refs/convert/parquet"  # the hub's automatic parquet conversion of a script-based data set


def truncate_words(text: str, max_words: int | None) -> str:
    r"""The first ``max_words`` whitespace-separated words of ``text``, keeping its own whitespace (newlines)."""
    if max_words is None:
        return text
    if max_words < 1:
        raise ValueError(f"max_document_words must be at least 1, got {max_words}.")

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
    r"""The requested splits of ``dataset``: a hub id, a local directory or one local data file.

    A directory saved by ``datasets.save_to_disk`` is read with ``load_from_disk``; any other directory with
    ``datasets.load_dataset`` (which names the splits after the files, e.g. ``train.parquet``, ``validation.json``,
    ``test.jsonl``). One file (.json, .jsonl, .parquet, .csv) holds exactly one split, named by ``--splits``.
    """
    import datasets

    path = Path(dataset).expanduser()
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise SystemExit(
                f"--dataset {dataset}: cannot read files of type {path.suffix!r}; use one of "
                f"{', '.join(sorted(FILE_BUILDERS))}, a directory, or a hub id."
            )
        if len(splits) != 1:
            raise SystemExit(
                f"--dataset {dataset} is one file, so it holds one split: name it with --splits (e.g. `--splits test`)."
            )
        loaded = datasets.load_dataset(builder, data_files={splits[0]: str(path)})
    elif path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    elif _looks_like_path(dataset):
        raise SystemExit(f"--dataset {dataset}: no such file or directory. Give an existing path or a hub id.")
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
            raise SystemExit(f"--dataset {dataset} holds one split: name it with --splits (one name).")
        loaded = datasets.DatasetDict({splits[0]: loaded})

    missing = [split for split in splits if split not in loaded]
    if missing:
        raise SystemExit(
            f"--splits: {dataset} has no split {', '.join(missing)}; it has {', '.join(loaded) or 'none'}. "
            "Choose among those with --splits."
        )
    for split in splits:
        columns = loaded[split].column_names
        if "document" not in columns or "summary" not in columns:
            raise SystemExit(
                f"--dataset {dataset}: split {split} needs the XSUM columns `document` and `summary` "
                f"(and optionally `id`); it has {', '.join(columns)}."
            )

    return {split: loaded[split] for split in splits}


def _json_lines(rows: Sequence[dict[str, str]]) -> Iterator[str]:
    r"""A JSON array with one row per line."""
    yield "["
    for index, row in enumerate(rows):
        yield "\n" + json.dumps(row, ensure_ascii=False) + ("," if index + 1 < len(rows) else "")
    yield "\n]\n"


def write_atomic(path: Path, chunks: Iterable[str]) -> None:
    r"""Write ``chunks`` to a temporary file next to ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def merge_dataset_info(info_path: Path, split_files: dict[str, Path]) -> dict[str, Any]:
    r"""Add or replace the ``xsum_<split>`` entries of ``info_path`` (created if missing); keep every other entry."""
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SystemExit(f"--dataset_info {info_path} is not valid JSON ({err}); fix or remove it.") from err
        if not isinstance(info, dict):
            raise SystemExit(f"--dataset_info {info_path} must hold a JSON object; fix or remove it.")

    for split, file in split_files.items():
        file_name = Path(os.path.relpath(file.resolve(), info_path.parent.resolve())).as_posix()
        info[f"{DATASET_PREFIX}{split}"] = {"file_name": file_name, "columns": dict(COLUMNS)}

    write_atomic(info_path, [json.dumps(info, indent=2, ensure_ascii=False), "\n"])
    return info


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help="hub id, local directory (save_to_disk, or files named after the splits), or one .json/.jsonl/.parquet/"
        ".csv file (then --splits names its one split); columns `document`, `summary` and optionally `id`",
    )
    parser.add_argument("--revision", default=None, help="hub revision of --dataset (branch, tag or commit)")
    parser.add_argument("--output_dir", default="data/xsum", help="where <split>.json are written")
    parser.add_argument(
        "--dataset_info",
        default=None,
        help="dataset_info.json to merge the xsum_<split> entries into (file names relative to it); "
        "default: <output_dir>/dataset_info.json",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(DEFAULT_SPLITS),
        help="splits to convert (space- or comma-separated); each gives <split>.json and the entry xsum_<split>",
    )
    parser.add_argument(
        "--max_samples", type=_positive_int, default=None, help="keep at most this many rows per split"
    )
    parser.add_argument(
        "--max_document_words",
        type=_positive_int,
        default=None,
        help="truncate each document to this many whitespace-separated words (default: no truncation)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)
    splits = list(dict.fromkeys(s for item in args.splits for s in item.split(",") if s))
    if not splits:
        raise SystemExit("--splits: give at least one split name, e.g. `--splits train validation test`.")

    output_dir = Path(args.output_dir)
    info_path = Path(args.dataset_info) if args.dataset_info else output_dir / "dataset_info.json"
    loaded = load_xsum(args.dataset, splits, revision=args.revision)
    split_files, counts = {}, {}
    for split in splits:
        rows, dropped = convert_rows(loaded[split], args.max_samples, args.max_document_words)
        split_files[split] = output_dir / f"{split}.json"
        write_atomic(split_files[split], _json_lines(rows))
        counts[split] = len(rows)
        note = f" ({dropped} with an empty document or summary dropped)" if dropped else ""
        print(f"{split}: {len(rows)} rows -> {split_files[split]}{note}")

    merge_dataset_info(info_path, split_files)
    print(f"Entries {', '.join(DATASET_PREFIX + s for s in splits)} -> {info_path}")
    return counts


if __name__ == "__main__":
    main(sys.argv[1:])
