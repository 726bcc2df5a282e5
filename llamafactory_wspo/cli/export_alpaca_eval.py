r"""``llamafactory-wspo export-alpaca-eval``: ``generate`` output -> AlpacaEval's model-outputs JSON."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .args import CliError, option, parse_args, run_command
from .files import write_json_atomic


PROG = "llamafactory-wspo export-alpaca-eval"
DESCRIPTION = r"""Turn `llamafactory-wspo generate` output into AlpacaEval's model-outputs JSON.

  llamafactory-wspo export-alpaca-eval saves/eval/wspo.jsonl saves/eval/wspo_alpaca_eval.json \
      model_id=qwen2-7b-instruct-wspo
  alpaca_eval evaluate --model_outputs saves/eval/wspo_alpaca_eval.json

Writes a JSON list of {"instruction", "output", "generator"} objects in the input's order, `generator` being the
model's name (`model_id`, as `generate benchmark=...` names it; default: the input file's stem) (AlpacaEval matches
outputs to its reference outputs by `instruction`, so generate from AlpacaEval's own instructions). A line with
several samples takes the one at `sample_index`.
"""


@dataclass
class ExportArguments:
    input_file: str = option(help="JSONL written by `llamafactory-wspo generate`.")
    output_file: str = option(help="AlpacaEval model-outputs JSON to write.")
    model_id: str | None = option(
        None, help="Model name, AlpacaEval's `generator` field (default: the input file's stem)."
    )
    generator: str | None = option(None, help="The same as model_id (AlpacaEval's name for it).")
    sample_index: int | None = option(None, help="Which sample of lines holding several (0 = the first).")

    def check(self) -> None:
        if not Path(self.input_file).is_file():
            raise CliError(f"INPUT_FILE {self.input_file}: no such file")
        if self.model_id and self.generator and self.model_id != self.generator:
            raise CliError(f"--generator {self.generator} and --model_id {self.model_id}: give one model name")
        for name in ("model_id", "generator"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise CliError(f"--{name} must not be empty: AlpacaEval names the model by it")


def convert(rows: Sequence[dict[str, Any]], generator: str, sample_index: int | None = None) -> list[dict[str, str]]:
    r"""AlpacaEval records of generation rows."""
    outputs = []
    for number, row in enumerate(rows, start=1):
        for key in ("instruction", "predict"):
            if key not in row:
                raise CliError(
                    f"line {number} has no `{key}` field: expected the output of `llamafactory-wspo generate`"
                )
        predict = row["predict"]
        if isinstance(predict, list):
            if sample_index is None:
                raise CliError(f"line {number} holds {len(predict)} samples: choose one with --sample_index (e.g. 0)")
            if not -len(predict) <= sample_index < len(predict):
                raise CliError(f"--sample_index {sample_index}: line {number} holds {len(predict)} samples")
            predict = predict[sample_index]
        outputs.append({"instruction": row["instruction"], "output": predict, "generator": generator})
    return outputs


def run(args: ExportArguments) -> int:
    path = Path(args.input_file)
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise CliError(f"INPUT_FILE {path}: not JSON lines ({err})") from None
    outputs = convert(rows, args.model_id or args.generator or path.stem, args.sample_index)
    write_json_atomic(Path(args.output_file), outputs)
    print(f"wrote {len(outputs)} outputs of {outputs[0]['generator'] if outputs else '-'} to {args.output_file}")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command(
        PROG,
        lambda: run(parse_args(ExportArguments, argv, PROG, DESCRIPTION, positionals=("input_file", "output_file"))),
    )


ARGUMENTS = ExportArguments  # the options of this subcommand
