"""Turn ``scripts/generate.py`` output into AlpacaEval's model-outputs JSON.

    python scripts/to_alpaca_eval.py saves/eval/wspo.jsonl saves/eval/wspo_alpaca_eval.json --generator qwen2-7b-wspo
    alpaca_eval evaluate --model_outputs saves/eval/wspo_alpaca_eval.json

Writes a JSON list of ``{"instruction", "output", "generator"}`` objects in the input's order (AlpacaEval
matches outputs to its reference outputs by ``instruction``, so generate from AlpacaEval's own instructions).
``--generator`` defaults to the input file's stem. A line with several samples (``--num_samples`` > 1) takes
the one at ``--sample_index``.
"""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _cli import parse_args


def convert(rows: Sequence[dict[str, Any]], generator: str, sample_index: int | None = None) -> list[dict[str, str]]:
    r"""AlpacaEval records of generation rows (see the module docstring)."""
    outputs = []
    for number, row in enumerate(rows, start=1):
        for key in ("instruction", "predict"):
            if key not in row:
                raise ValueError(f"line {number} has no `{key}` field: expected the output of scripts/generate.py.")
        predict = row["predict"]
        if isinstance(predict, list):
            if sample_index is None:
                raise ValueError(
                    f"line {number} holds {len(predict)} samples; choose one with --sample_index (e.g. 0)."
                )
            predict = predict[sample_index]
        outputs.append({"instruction": row["instruction"], "output": predict, "generator": generator})
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="JSONL written by scripts/generate.py.")
    parser.add_argument("output", type=Path, help="AlpacaEval model-outputs JSON to write.")
    parser.add_argument("--generator", default=None, help="Model name shown by AlpacaEval (default: input stem).")
    parser.add_argument("--sample_index", type=int, default=None, help="Which sample of multi-sample lines.")
    args = parse_args(parser, argv)

    try:
        if not args.input.is_file():
            raise ValueError(f"input {args.input}: no such file.")
        rows = [json.loads(line) for line in args.input.read_text(encoding="utf-8").splitlines() if line.strip()]
        outputs = convert(rows, args.generator or args.input.stem, args.sample_index)
    except (ValueError, IndexError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    args.output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.output.parent, prefix=f".{args.output.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(outputs, handle, ensure_ascii=False, indent=2)
    os.replace(tmp, args.output)
    print(f"wrote {len(outputs)} outputs of {outputs[0]['generator'] if outputs else '-'} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
