"""Generate responses for a set of prompts with vLLM when it is installed, transformers otherwise.

    # a JSON / JSONL file (AlpacaEval's 805 instructions, UltraFeedback prompts, ...)
    python scripts/generate.py --model saves/qwen2-7b-wspo --template qwen --input alpaca_eval.json \\
        --output saves/eval/wspo.jsonl --temperature 0 --max_new_tokens 4096
    # a data set of a dataset_info.json (its responses become the labels)
    python scripts/generate.py --model saves/xsum/qwen2-7b-wspo --template qwen --dataset xsum_test \\
        --dataset_dir yaml_recipes/data --cutoff_len 1024 --max_new_tokens 128 --temperature 0 \\
        --output saves/xsum/eval/qwen2-7b-wspo.jsonl
    # several samples per prompt (WPO's hybrid data)
    python scripts/generate.py --model meta-llama/Meta-Llama-3-8B-Instruct --template llama3 \\
        --input prompts.jsonl --prompt_key prompt --num_samples 5 --temperature 0.7 --top_p 0.95 \\
        --output saves/hybrid/samples.jsonl

Prompts are formatted by LLaMA-Factory's chat template, as in training (``llamafactory_wspo.inference``).
Input records: ``--prompt_key`` names the prompt; by default ``instruction`` (joined with a non-empty ``input``
by a newline, as LLaMA-Factory's alpaca format does) or else ``prompt``. A prompt may also be a list of
``{"role", "content"}`` messages. ``--label_key`` (default ``output`` when present) is copied as the label.

Output: one JSON line per prompt, in input order, written atomically::

    {"instruction": ..., "prompt": <templated prompt text>, "predict": <str, or a list of --num_samples str>,
     "label": <str or null>}

which ``scripts/evaluate_xsum.py``, ``scripts/to_alpaca_eval.py`` and ``scripts/build_hybrid_data.py`` read.
"""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _cli import parse_args


if TYPE_CHECKING:
    from llamafactory_wspo.inference import SamplingConfig


Message = dict[str, str]


def read_records(path: Path) -> list[dict[str, Any]]:
    r"""Records of a ``.json`` file (a list of objects) or a ``.jsonl`` file (one object per line)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise ValueError(f"--input {path}: expected a JSON list of objects or JSON lines of objects.")
    return records


def record_to_prompt(record: dict[str, Any], prompt_key: str | None, index: int) -> list[Message]:
    r"""The prompt messages of one input record (rules in the module docstring)."""
    if prompt_key is None:
        prompt_key = "instruction" if "instruction" in record else "prompt"
    if prompt_key not in record:
        raise ValueError(
            f"--input record {index} has no `{prompt_key}` field (fields: {sorted(record)}); name the prompt's "
            "field with --prompt_key."
        )
    value = record[prompt_key]
    if isinstance(value, list):
        messages = [{"role": message["role"], "content": message["content"]} for message in value]
        if not messages or messages[-1]["role"] != "user":
            raise ValueError(f"--input record {index}: a message-list prompt must end with a user message.")
        return messages
    if not isinstance(value, str):
        raise ValueError(f"--input record {index}: `{prompt_key}` must be a string or a list of messages.")
    if prompt_key == "instruction" and record.get("input"):
        value = f"{value}\n{record['input']}"
    return [{"role": "user", "content": value}]


def load_file_prompts(
    path: Path, prompt_key: str | None, label_key: str | None
) -> list[tuple[list[Message], str | None, Any]]:
    r"""``(messages, system, label)`` per record of a JSON / JSONL file."""
    records = read_records(path)
    if label_key is None and records and "output" in records[0]:
        label_key = "output"
    items = []
    for index, record in enumerate(records):
        label = record.get(label_key) if label_key else None
        items.append((record_to_prompt(record, prompt_key, index), record.get("system") or None, label))
    return items


def load_dataset_prompts(
    name: str, dataset_dir: str, model: str, max_samples: int | None
) -> list[tuple[list[Message], str | None, Any]]:
    r"""``(messages, system, label)`` per example of a data set of ``dataset_dir/dataset_info.json``.

    Loaded and aligned by LLaMA-Factory's own data loader (any format its ``dataset_info.json`` describes:
    alpaca, sharegpt, local files or hub ids); the label is the first response (the chosen one of a preference
    data set). Uses the loader's
    ``_get_merged_dataset`` of LLaMA-Factory 0.9.5 (the release this package pins).
    """
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    model_args = ModelArguments(model_name_or_path=model)
    data_args = DataArguments(dataset=name, dataset_dir=dataset_dir, max_samples=max_samples)
    training_args = Seq2SeqTrainingArguments(output_dir=tempfile.gettempdir(), report_to=[])
    ranking = all(attr.ranking for attr in get_dataset_list(data_args.dataset, dataset_dir))
    stage = "rm" if ranking else "sft"  # a preference data set: its prompts, and its chosen responses as labels
    dataset = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, stage=stage)
    items = []
    for example in dataset:
        messages = [{"role": message["role"], "content": message["content"]} for message in example["_prompt"]]
        responses = example.get("_response") or []
        label = responses[0]["content"] if responses else None
        items.append((messages, example.get("_system") or None, label))
    return items


def write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    r"""Write JSON lines to a temporary file beside ``path`` and move it into place: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Model path or hub id (the base model when --adapter).")
    parser.add_argument("--adapter", default=None, help="LoRA adapter directory (optional).")
    parser.add_argument("--template", required=True, help="LLaMA-Factory chat template, e.g. qwen, llama3, mistral.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="Prompts: a .json list or a .jsonl file of objects.")
    source.add_argument("--dataset", help="Prompts: a data set named in --dataset_dir/dataset_info.json.")
    parser.add_argument("--dataset_dir", default="data", help="Folder of dataset_info.json for --dataset.")
    parser.add_argument("--prompt_key", default=None, help="Field of the prompt in --input records.")
    parser.add_argument("--label_key", default=None, help="Field copied as the label (default: output).")
    parser.add_argument("--system", default=None, help="System prompt for every prompt (overrides the data's).")
    parser.add_argument("--output", type=Path, required=True, help="JSONL file to write.")
    parser.add_argument("--num_samples", type=int, default=1, help="Completions per prompt.")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding.")
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling threshold.")
    parser.add_argument("--max_new_tokens", type=int, default=512, help="Longest completion, in tokens.")
    parser.add_argument("--cutoff_len", type=int, default=None, help="Longest prompt, in tokens (keeps its end).")
    parser.add_argument("--max_samples", type=int, default=None, help="Use only the first N prompts.")
    parser.add_argument("--batch_size", type=int, default=8, help="Prompts per batch (transformers back-end).")
    parser.add_argument("--seed", type=int, default=42, help="Sampling seed.")
    parser.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Run Python code that the model folder or hub repository carries (off by default; only for models you "
        "trust).",
    )
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto")
    return parser


def check_args(args: argparse.Namespace) -> None:
    r"""Every check that needs no model, before any model loads."""
    from llamafactory_wspo.inference import resolve_backend

    sampling_config(args).check()
    resolve_backend(args.backend)
    if args.input is not None and not args.input.is_file():
        raise ValueError(f"--input {args.input}: no such file.")
    if args.dataset is not None and not (Path(args.dataset_dir) / "dataset_info.json").is_file():
        raise ValueError(f"--dataset_dir {args.dataset_dir}: no dataset_info.json there; name the data sets' folder.")
    if args.input is not None and args.output.resolve() == args.input.resolve():
        raise ValueError("--output must differ from --input.")
    for flag in ("cutoff_len", "max_samples", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}.")


def sampling_config(args: argparse.Namespace) -> "SamplingConfig":
    from llamafactory_wspo.inference import SamplingConfig

    return SamplingConfig(
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    try:
        check_args(args)
        if args.input is not None:
            items = load_file_prompts(args.input, args.prompt_key, args.label_key)
            if args.max_samples is not None:
                items = items[: args.max_samples]
        else:
            items = load_dataset_prompts(args.dataset, args.dataset_dir, args.model, args.max_samples)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from llamafactory_wspo.inference import Generator

    max_model_len = args.cutoff_len + args.max_new_tokens if args.cutoff_len else None
    generator = Generator(
        args.model,
        args.template,
        args.adapter,
        args.backend,
        args.dtype,
        max_model_len,
        args.batch_size,
        trust_remote_code=args.trust_remote_code,
    )
    prompts = [generator.encode(messages, args.system or system, args.cutoff_len) for messages, system, _ in items]
    completions = generator.generate(prompts, sampling_config(args))
    rows = []
    for (messages, _, label), prompt_ids, samples in zip(items, prompts, completions):
        rows.append(
            {
                "instruction": messages[-1]["content"],
                "prompt": generator.tokenizer.decode(prompt_ids, skip_special_tokens=False),
                "predict": samples[0] if args.num_samples == 1 else samples,
                "label": label,
            }
        )
    write_jsonl_atomic(args.output, rows)
    print(f"wrote {len(rows)} prompts x {args.num_samples} samples ({generator.backend}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
