r"""``llamafactory-wspo generate``: responses to a set of prompts, vLLM when installed, transformers otherwise."""

import dataclasses
import difflib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import benchmarks
from .args import CliError, option, parse_args, run_command
from .files import append_records, open_resumable, read_jsonl_prefix, read_records, write_json_atomic


if TYPE_CHECKING:
    from ..inference import Generator, SamplingConfig


PROG = "llamafactory-wspo generate"
DESCRIPTION = r"""Generate responses to prompts with a model formatted by LLaMA-Factory's chat template.

  # a JSON / JSONL file (AlpacaEval's 805 instructions, ...), greedy
  llamafactory-wspo generate model_name_or_path=saves/qwen2-7b-wspo template=qwen \
      input_file=alpaca_eval.json output_file=saves/eval/wspo.jsonl max_new_tokens=4096
  # a data set of a dataset_info.json (its responses become the labels)
  llamafactory-wspo generate model_name_or_path=saves/xsum/qwen2-7b-wspo template=qwen dataset=xsum_test \
      dataset_dir=yaml_recipes/data cutoff_len=1024 max_new_tokens=128 output_file=saves/xsum/eval/wspo.jsonl
  # five samples per prompt at the WPO paper's settings
  llamafactory-wspo generate gen.yaml num_samples=5 temperature=0.7 top_p=0.95

Input records: `prompt_key` names the prompt's field; by default `instruction` (joined with a non-empty `input` by
a newline, as LLaMA-Factory's alpaca format does) or else `prompt`; a prompt may be a list of {"role", "content"}
messages. `label_key` (default `output` when present) is copied as the label.

Output: one JSON line per prompt, in input order: {"instruction", "prompt" (templated text), "predict" (a string, or
a list of num_samples strings), "label"}. Each batch is appended as soon as it is done, so a killed run keeps what
it finished; running the same command again resumes after the last complete line. Each prompt samples with its
own seed (seed + its index), so a resumed run writes what an uninterrupted one would. What determines the output
(the model's and adapter's path and files, template, system, cutoff_len, back-end, dtype, num_samples, temperature,
top_p, max_new_tokens, seed) is recorded in <output_file>.options.json before the first row; a run with other values
stops with one line naming them instead of resuming (overwrite=true or another output_file starts afresh).

On several GPUs, one process per GPU, each with its shard (num_shards=8 shard_index=0..7, CUDA_VISIBLE_DEVICES=i)
and its own output_file; a prompt's samples do not depend on the sharding.

Benchmarks: `benchmark` reads a benchmark's question file as published and writes the answer file its judge reads.
  llamafactory-wspo generate model_name_or_path=saves/qwen2-7b-wspo template=qwen benchmark=mt_bench \
      input_file=question.jsonl output_file=model_answer/qwen2-7b-wspo.jsonl model_id=qwen2-7b-wspo
  mt_bench       FastChat llm_judge: {question_id, category, turns} -> {question_id, answer_id, model_id,
                 choices: [{index: 0, turns: [answer_1, answer_2]}], tstamp}. Turn 2 is generated from the
                 conversation holding the model's own turn-1 answer; turn 1 of a batch first, then turn 2.
                 Temperature per category as FastChat (writing, roleplay 0.7; extraction, math, coding, reasoning 0;
                 stem, humanities 0.1; others 0.7); max_new_tokens 1024.
  arena_hard     Arena-Hard v0.1: {question_id, category, cluster, turns: [{content}]} -> {question_id, answer_id,
                 model_id, choices: [{index: 0, turns: [{content}]}], tstamp, conv_metadata}; temperature 0,
                 max_new_tokens 4096; token_len in tiktoken's cl100k_base.
  arena_hard_v2  Arena-Hard v2.0: {uid, category, subcategory, prompt} -> {uid, ans_id, model, messages: [{role: user,
                 content}, {role: assistant, content: {answer}}], tstamp, metadata}; temperature 0,
                 max_new_tokens 4096; token_len in tiktoken's o200k_base.
An explicit temperature or max_new_tokens applies to every question. The model's template and its default system
prompt are used (system= overrides it). Arena-Hard's token_len needs tiktoken's encoding file, which tiktoken
downloads once into its cache (TIKTOKEN_CACHE_DIR); without it (offline) the model's own tokenizer counts instead,
said in a log line and recorded as `token_len` in the options record. The judges name a model by its answer file's
name: keep output_file's stem equal to model_id (model_id defaults to it).
"""

Message = dict[str, str]


@dataclass(frozen=True)
class PromptItem:
    r"""One prompt: its messages (the last from the user), its system prompt and its label."""

    messages: list[Message]
    system: str | None = None
    label: Any = None
    index: int = 0  # its position in the whole prompt list: prompt i samples with seed + i

    @property
    def instruction(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class GenerateArguments:
    model_name_or_path: str = option(help="Model path or hub id (the base model when adapter_name_or_path is set).")
    template: str = option(help="LLaMA-Factory chat template of the model, e.g. qwen, llama3, mistral.")
    output_file: str = option(
        help="JSONL file to write. An existing one is resumed: its rows are kept and the prompts after them generated."
    )
    input_file: str | None = option(None, help="Prompts: a .json list or a .jsonl file of objects.")
    dataset: str | None = option(None, help="Prompts: a data set named in dataset_dir/dataset_info.json.")
    dataset_dir: str = option("data", help="Folder of the dataset_info.json that names `dataset`.")
    prompt_key: str | None = option(None, help="Field of the prompt in input_file records (default: instruction).")
    label_key: str | None = option(None, help="Field of input_file records copied as the label (default: output).")
    system: str | None = option(None, help="System prompt for every prompt (overrides the data's).")
    max_samples: int | None = option(None, help="Use only the first N prompts.")
    cutoff_len: int | None = option(None, help="Longest prompt in tokens; a longer one keeps its end.")
    num_samples: int = option(1, help="Completions per prompt (> 1 needs temperature > 0).")
    temperature: float | None = option(
        None,
        help="Sampling temperature; 0 is greedy decoding (the default; with `benchmark`, the benchmark's own). "
        "WPO's paper samples at 0.7.",
    )
    top_p: float = option(1.0, help="Nucleus sampling threshold. WPO's paper samples with 0.95.")
    max_new_tokens: int | None = option(
        None, help="Longest completion, in tokens (default 512; with `benchmark`: mt_bench 1024, arena_hard 4096)."
    )
    seed: int = option(42, help="Sampling seed; prompt i samples with seed + i.")
    batch_size: int | None = option(
        None, help="Prompts per generation call, written when done (default: 8 on huggingface, 256 on vllm)."
    )
    infer_backend: Literal["auto", "huggingface", "vllm"] = option(
        "auto", help="auto: vLLM when it is installed, transformers (huggingface) otherwise."
    )
    infer_dtype: Literal["auto", "float16", "bfloat16", "float32"] = option("auto", help="Dtype of the weights.")
    adapter_name_or_path: str | None = option(None, help="LoRA adapter directory (optional).")
    trust_remote_code: bool = option(
        False, help="Run Python code that the model folder or hub repository carries (only for models you trust)."
    )
    vllm_gpu_util: float = option(0.9, help="vLLM: share of GPU memory to use.")
    vllm_tensor_parallel_size: int = option(1, help="vLLM: GPUs per model replica.")
    num_shards: int = option(1, help="Split the prompts into this many shards (one process per GPU, say).")
    shard_index: int = option(
        0, help="The shard this process generates: the prompts whose index modulo num_shards is shard_index."
    )
    overwrite: bool = option(False, help="Start output_file afresh instead of resuming it.")
    benchmark: Literal["mt_bench", "arena_hard", "arena_hard_v2"] | None = option(
        None,
        help="Read input_file as this benchmark's question file and write its answer file (see the description).",
    )
    model_id: str | None = option(
        None, help="With `benchmark`: the model's name in the answer file (default: output_file's stem)."
    )

    def check(self) -> None:
        from ..inference import resolve_backend

        check_template(self.template)
        if self.benchmark is not None:
            check_benchmark_options(self)
        try:
            sampling_config(self).check()
            resolve_backend(self.infer_backend)
        except ValueError as err:
            raise CliError(str(err)) from None
        if (self.input_file is None) == (self.dataset is None):
            raise CliError("give exactly one of --input_file (a JSON/JSONL file) or --dataset (a named data set)")
        if self.input_file is not None and not Path(self.input_file).is_file():
            raise CliError(f"--input_file {self.input_file}: no such file")
        if self.dataset is not None and not (Path(self.dataset_dir) / "dataset_info.json").is_file():
            raise CliError(f"--dataset_dir {self.dataset_dir}: no dataset_info.json there; name the data sets' folder")
        if self.input_file is not None and Path(self.output_file).resolve() == Path(self.input_file).resolve():
            raise CliError("--output_file must differ from --input_file")
        for name in ("cutoff_len", "max_samples", "batch_size", "vllm_tensor_parallel_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CliError(f"--{name} must be >= 1, got {value}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise CliError(f"--shard_index must lie in [0, num_shards), got {self.shard_index} of {self.num_shards}")
        if not 0 < self.vllm_gpu_util <= 1:
            raise CliError(f"--vllm_gpu_util must lie in (0, 1], got {self.vllm_gpu_util}")
        check_local_model("--model_name_or_path", self.model_name_or_path)
        if self.adapter_name_or_path:
            check_local_model("--adapter_name_or_path", self.adapter_name_or_path)


def check_template(name: str) -> None:
    r"""``name`` must be one of LLaMA-Factory's chat templates (checked before any model loads)."""
    from llamafactory.data.template import TEMPLATES

    if name in TEMPLATES:
        return
    close = difflib.get_close_matches(name, list(TEMPLATES), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise CliError(
        f"--template {name}: no such chat template; {hint}name the model family's template, e.g. qwen, llama3, "
        f"mistral ({len(TEMPLATES)} in all: `llamafactory.data.template.TEMPLATES`)"
    )


def check_benchmark_options(args: "GenerateArguments") -> None:
    r"""What a benchmark run cannot take: a data set, other fields, several samples per question."""
    if args.input_file is None:
        raise CliError(f"--benchmark {args.benchmark}: give the benchmark's question file as --input_file")
    for name in ("dataset", "prompt_key", "label_key"):
        if getattr(args, name) is not None:
            raise CliError(
                f"--{name}: not used with --benchmark {args.benchmark} (its question file is read as published)"
            )
    if args.num_samples != 1:
        raise CliError(f"--num_samples {args.num_samples}: a benchmark's answer file holds one answer per question")
    if args.model_id is not None and not args.model_id.strip():
        raise CliError("--model_id must not be empty: the judges name the model by it")


def check_local_model(option_name: str, value: str) -> None:
    r"""A path-like model name (``./x``, ``/x``, ``saves/x`` with more than one ``/``) must exist."""
    looks_local = value.startswith((".", "/", "~")) or value.count("/") > 1
    if looks_local and not Path(value).expanduser().exists():
        raise CliError(f"{option_name} {value}: no such directory; give a model folder or a hub id")


def sampling_config(args: Any) -> "SamplingConfig":
    r"""The sampling settings of a command's options; with ``benchmark``, unset ones are the benchmark's (a per-category
    temperature is applied per question by :func:`question_config`; the config holds 0 then)."""
    from ..inference import SamplingConfig

    benchmark = getattr(args, "benchmark", None)
    temperature = 0.0 if args.temperature is None else args.temperature
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = benchmarks.MAX_NEW_TOKENS[benchmark] if benchmark else 512
    return SamplingConfig(args.num_samples, temperature, args.top_p, max_new_tokens, args.seed)


def record_to_prompt(record: dict[str, Any], prompt_key: str | None, index: int) -> list[Message]:
    r"""The prompt messages of one input record (rules in the command's description)."""
    if prompt_key is None:
        prompt_key = "instruction" if "instruction" in record else "prompt"
    if prompt_key not in record:
        raise CliError(
            f"--input_file record {index} has no `{prompt_key}` field (fields: {sorted(record)}); name the prompt's "
            "field with --prompt_key"
        )
    value = record[prompt_key]
    if isinstance(value, list):
        messages = [{"role": message["role"], "content": message["content"]} for message in value]
        if not messages or messages[-1]["role"] != "user":
            raise CliError(f"--input_file record {index}: a message-list prompt must end with a user message")
        return messages
    if not isinstance(value, str):
        raise CliError(f"--input_file record {index}: `{prompt_key}` must be a string or a list of messages")
    if prompt_key == "instruction" and record.get("input"):
        value = f"{value}\n{record['input']}"
    return [{"role": "user", "content": value}]


def load_file_prompts(path: str, prompt_key: str | None, label_key: str | None) -> list[PromptItem]:
    records = read_records(path, "--input_file")
    if label_key is None and records and "output" in records[0]:
        label_key = "output"
    return [
        PromptItem(
            record_to_prompt(record, prompt_key, index),
            record.get("system") or None,
            record.get(label_key) if label_key else None,
            index,
        )
        for index, record in enumerate(records)
    ]


def load_dataset_prompts(name: str, dataset_dir: str, model: str, max_samples: int | None) -> list[PromptItem]:
    r"""The prompts of a data set of ``dataset_dir/dataset_info.json``, loaded by LLaMA-Factory's own loader.

    Any format its ``dataset_info.json`` describes (alpaca, sharegpt; local files or hub ids); the label is the
    first response (the chosen one of a preference data set).
    """
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    model_args = ModelArguments(model_name_or_path=model)
    data_args = DataArguments(dataset=name, dataset_dir=dataset_dir, max_samples=max_samples)
    training_args = Seq2SeqTrainingArguments(output_dir=tempfile.gettempdir(), report_to=[])
    try:
        ranking = all(attr.ranking for attr in get_dataset_list(data_args.dataset, dataset_dir))
    except ValueError as err:
        raise CliError(f"--dataset {name}: {err}") from None
    stage = "rm" if ranking else "sft"  # a preference data set: its prompts, and its chosen responses as labels
    dataset = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, stage=stage)
    items = []
    for index, example in enumerate(dataset):
        messages = [{"role": message["role"], "content": message["content"]} for message in example["_prompt"]]
        responses = example.get("_response") or []
        label = responses[0]["content"] if responses else None
        items.append(PromptItem(messages, example.get("_system") or None, label, index))
    return items


def resume_point(path: Path, items: Sequence[PromptItem], num_samples: int) -> tuple[int, int]:
    r"""How many prompts ``path`` already holds (checked against ``items``) and the bytes they take."""
    rows, length = read_jsonl_prefix(path)
    if len(rows) > len(items):
        raise CliError(f"{path} holds {len(rows)} rows for {len(items)} prompts: give another output file")
    for index, (row, item) in enumerate(zip(rows, items)):
        samples = row.get("predict")
        count = len(samples) if isinstance(samples, list) else 1
        if row.get("instruction") != item.instruction or count != num_samples:
            raise CliError(
                f"{path} row {index + 1} was written for other prompts or another num_samples: give another "
                "output file, or overwrite=true to start it afresh"
            )
    return len(rows), length


OPTIONS_SUFFIX = ".options.json"
OPTIONS_FORMAT = 1
# Keys that a later version adds to the record, with the value that a record written before them stands for (e.g.
# "benchmark": None). A key neither record has, or absent from both this table and an older record, reads as None.
OPTIONS_ADDED: dict[str, Any] = {"benchmark": None}
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".tiktoken", ".txt")
NOT_MODEL_FILES = frozenset(
    {"trainer_state.json", "all_results.json", "train_results.json", "eval_results.json", "predict_results.json"}
)


def options_path(output: Path) -> Path:
    r"""The record of what determines ``output``'s rows: ``<output>.options.json``."""
    return output.with_name(output.name + OPTIONS_SUFFIX)


def model_identity(name_or_path: str | None) -> dict[str, Any] | None:
    r"""A model's identity, cheap enough for every run: a local folder's resolved path and the size and
    modification time (ns) of its weight, configuration and tokenizer files (top level); a hub id by its name."""
    if not name_or_path:
        return None
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        return {"hub_id": name_or_path}
    files = {}
    for entry in sorted(folder.iterdir()):
        if entry.suffix in MODEL_FILE_SUFFIXES and entry.name not in NOT_MODEL_FILES and entry.is_file():
            stat = entry.stat()  # through links (a hub snapshot links to its blobs)
            files[entry.name] = [stat.st_size, stat.st_mtime_ns]
    return {"path": str(folder.resolve()), "files": files}


def adapters_identity(adapters: str | None) -> Any:
    r"""The identity of LLaMA-Factory's ``adapter_name_or_path`` (one adapter, or several joined by commas)."""
    if not adapters:
        return None
    identities = [model_identity(adapter.strip()) for adapter in adapters.split(",")]
    return identities[0] if len(identities) == 1 else identities


def output_options(args: Any) -> dict[str, Any]:
    r"""What determines the rows that ``generate`` (or ``build-hybrid``'s sampling) writes, keyed by option name.

    Not recorded: what leaves every row as it is (batch_size, shards, max_samples: the rows themselves are checked
    against the prompts), and under greedy decoding (temperature 0) top_p and seed, which it does not use.
    """
    from ..inference import resolve_backend

    sampling = dataclasses.asdict(sampling_config(args))
    benchmark = getattr(args, "benchmark", None)
    if benchmark and args.temperature is None:
        sampling["temperature"] = benchmarks.default_temperatures(benchmark)
    temperatures = sampling["temperature"]
    if not any(temperatures.values() if isinstance(temperatures, dict) else [temperatures]):  # greedy throughout
        sampling.update(top_p=None, seed=None)
    extra = {}
    if benchmark:
        extra = {"benchmark": benchmark, "model_id": benchmark_model_id(args)}
        if benchmark in benchmarks.TOKEN_ENCODINGS:
            extra["token_len"] = getattr(args, "token_len_source", None)
    return {
        "model_name_or_path": model_identity(args.model_name_or_path),
        "adapter_name_or_path": adapters_identity(getattr(args, "adapter_name_or_path", None)),
        "template": args.template,
        "system": getattr(args, "system", None),
        "cutoff_len": args.cutoff_len,
        "infer_backend": resolve_backend(args.infer_backend),
        "infer_dtype": args.infer_dtype,
        **sampling,
        **extra,
    }


def describe_change(name: str, old: Any, new: Any) -> str:
    r"""``--temperature (0.7 then, 1.0 now)``; for a model, what about it changed."""
    if isinstance(old, dict) and isinstance(new, dict) and old.get("path") and old.get("path") == new.get("path"):
        old_files, new_files = old.get("files", {}), new.get("files", {})
        changed = sorted(set(old_files) ^ set(new_files)) + [
            file for file in sorted(set(old_files) & set(new_files)) if old_files[file] != new_files[file]
        ]
        return f"--{name} (the files of {new['path']} changed since: {', '.join(changed[:3])})"

    def show(value: Any) -> str:
        if isinstance(value, dict):
            return value.get("path") or value.get("hub_id") or json.dumps(value)
        return "none" if value is None else str(value)

    return f"--{name} ({show(old)} then, {show(new)} now)"


def options_mismatch(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    r"""The options whose values differ between two records, described (empty when they match)."""
    changes = []
    for name in [*new, *(key for key in old if key not in new)]:
        before = old.get(name, OPTIONS_ADDED.get(name))
        after = new.get(name, OPTIONS_ADDED.get(name))
        if before != after:
            changes.append(describe_change(name, before, after))
    return changes


def check_output_options(
    output: Path,
    options: dict[str, Any],
    prog: str,
    items: Sequence[PromptItem],
    num_samples: int,
    fresh: str = "overwrite=true, another --output_file",
    check_rows: Any = None,
) -> None:
    r"""Resume ``output`` only with the options and prompts it was started with; run before any model loads.

    A file without complete rows gets a fresh record (written atomically, before the first row). One with rows is
    checked against its record (a difference is a :class:`CliError` naming each option and, from ``fresh``, how to
    start afresh), then its rows against the prompts (:func:`resume_point`); a file written before records existed
    resumes with one warning that its options cannot be checked.
    """
    record_path = options_path(output)
    if check_rows is None:
        check_rows = lambda path: resume_point(path, items, num_samples)  # noqa: E731
    rows, _ = read_jsonl_prefix(output)
    if not rows:
        write_json_atomic(record_path, {"format": OPTIONS_FORMAT, "command": prog, "options": options})
        return
    if not record_path.is_file():
        check_rows(output)
        print(
            f"{prog}: warning: {output} has no record of its options ({record_path.name}; written by an earlier "
            f"version): they cannot be checked; resuming its {len(rows)} rows with these options",
            file=sys.stderr,
        )
        return
    try:
        old = json.loads(record_path.read_text(encoding="utf-8"))["options"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CliError(
            f"{record_path} is damaged: delete it to resume {output} unchecked, or delete both to start afresh"
        ) from None
    changes = options_mismatch(old, options)
    if changes:
        raise CliError(
            f"{output} was started with other options: {'; '.join(changes)}. Give the same options to resume it, or "
            f"start afresh: {fresh}, or delete {output} and {record_path.name}"
        )
    check_rows(output)


def generate_to_file(
    generator: "Generator",
    items: Sequence[PromptItem],
    path: Path,
    config: "SamplingConfig",
    batch_size: int,
    system: str | None = None,
    cutoff_len: int | None = None,
    desc: str = "generate",
) -> int:
    r"""Generate for ``items`` into the JSONL file ``path``, resuming after the rows it holds; returns the number
    of prompts generated by this call. Rows are appended one batch at a time; a prompt samples with seed
    ``config.seed + item.index``."""
    from tqdm.auto import tqdm

    done, length = resume_point(path, items, config.num_samples)
    if done:
        print(f"{path}: {done} of {len(items)} prompts already done, resuming")
    with (
        open_resumable(path, length) as handle,
        tqdm(total=len(items), initial=done, unit="prompt", desc=desc, dynamic_ncols=True) as bar,
    ):
        for start in range(done, len(items), batch_size):
            chunk = items[start : start + batch_size]
            prompts = [generator.encode(item.messages, system or item.system, cutoff_len) for item in chunk]
            seeds = [config.seed + item.index for item in chunk]
            completions = generator.generate(prompts, config, seeds)
            rows = [
                {
                    "instruction": item.instruction,
                    "prompt": generator.tokenizer.decode(prompt_ids, skip_special_tokens=False),
                    "predict": samples[0] if config.num_samples == 1 else samples,
                    "label": item.label,
                }
                for item, prompt_ids, samples in zip(chunk, prompts, completions)
            ]
            append_records(handle, rows)
            bar.update(len(chunk))
    return len(items) - done


def default_batch_size(backend: str) -> int:
    return 256 if backend == "vllm" else 8


def make_generator(args: Any, max_model_len: int | None = None) -> "Generator":
    r"""The :class:`~llamafactory_wspo.inference.Generator` of a command's model options."""
    from ..inference import Generator, resolve_backend

    backend = resolve_backend(args.infer_backend)
    vllm_kwargs = {
        "gpu_memory_utilization": args.vllm_gpu_util,
        "tensor_parallel_size": args.vllm_tensor_parallel_size,
    }
    return Generator(
        args.model_name_or_path,
        args.template,
        getattr(args, "adapter_name_or_path", None),
        backend,
        args.infer_dtype,
        max_model_len,
        args.batch_size or default_batch_size(backend),
        vllm_kwargs=vllm_kwargs if backend == "vllm" else None,
        trust_remote_code=args.trust_remote_code,
    )


def run(args: GenerateArguments) -> int:
    if args.benchmark is not None:
        return run_benchmark(args)
    if args.input_file is not None:
        items = load_file_prompts(args.input_file, args.prompt_key, args.label_key)[: args.max_samples]
    else:
        items = load_dataset_prompts(args.dataset, args.dataset_dir, args.model_name_or_path, args.max_samples)
    items = [item for item in items if item.index % args.num_shards == args.shard_index]
    output = Path(args.output_file)
    if args.overwrite:
        output.unlink(missing_ok=True)
        options_path(output).unlink(missing_ok=True)
    # a file of other options or other prompts is refused before the model loads
    check_output_options(output, output_options(args), PROG, items, args.num_samples)

    max_model_len = args.cutoff_len + args.max_new_tokens if args.cutoff_len else None
    generator = make_generator(args, max_model_len)
    config = sampling_config(args)
    count = generate_to_file(
        generator, items, output, config, generator.batch_size, args.system, args.cutoff_len, "generate"
    )
    print(f"{output}: {len(items)} prompts x {args.num_samples} samples ({count} generated now, {generator.backend})")
    return 0


def benchmark_model_id(args: Any) -> str:
    r"""The model's name in a benchmark's answer file: ``model_id``, else ``output_file``'s stem."""
    return args.model_id or Path(args.output_file).stem


def benchmark_resume_point(
    path: Path, benchmark: str, questions: Sequence[benchmarks.Question], model_id: str
) -> tuple[int, int]:
    r"""How many questions the answer file ``path`` already holds (checked against ``questions``) and their bytes."""
    rows, length = read_jsonl_prefix(path)
    if len(rows) > len(questions):
        raise CliError(f"{path} holds {len(rows)} answers for {len(questions)} questions: give another output file")
    for number, (row, question) in enumerate(zip(rows, questions), start=1):
        if benchmarks.record_key(benchmark, row) != (question.id, model_id):
            raise CliError(
                f"{path} line {number} is not the answer of {model_id} to question {question.id!r}: it was written for "
                "other questions or another model_id; give another output file, or overwrite=true to start it afresh"
            )
    return len(rows), length


def question_config(config: "SamplingConfig", args: Any, question: benchmarks.Question) -> "SamplingConfig":
    r"""``config`` at the question's temperature (the user's, else the benchmark's for its category)."""
    temperature = benchmarks.question_temperature(args.benchmark, question.category, args.temperature)
    return dataclasses.replace(config, temperature=temperature)


def generate_turn(
    generator: "Generator",
    conversations: Sequence[list[Message]],
    configs: Sequence["SamplingConfig"],
    seeds: Sequence[int],
    system: str | None,
    cutoff_len: int | None,
) -> list[str]:
    r"""One answer to each conversation (its last message from the user), one generation call per temperature."""
    prompts = [generator.encode(messages, system, cutoff_len) for messages in conversations]
    answers: list[str] = [""] * len(prompts)
    for config in dict.fromkeys(configs):  # the distinct settings, in order of first use
        chosen = [index for index, other in enumerate(configs) if other == config]
        outputs = generator.generate([prompts[i] for i in chosen], config, [seeds[i] for i in chosen])
        for index, samples in zip(chosen, outputs):
            answers[index] = samples[0]
    return answers


def run_benchmark(args: GenerateArguments) -> int:
    r"""Answer a benchmark's questions into its answer file (formats in :mod:`.benchmarks`), resumably."""
    from tqdm.auto import tqdm

    records = read_records(args.input_file, "--input_file")
    try:
        questions = benchmarks.read_questions(args.benchmark, records)
    except ValueError as err:
        raise CliError(f"--input_file {args.input_file} (benchmark {args.benchmark}): {err}") from None
    questions = [q for q in questions[: args.max_samples] if q.index % args.num_shards == args.shard_index]
    output = Path(args.output_file)
    model_id = benchmark_model_id(args)
    if args.model_id and args.model_id != output.stem:
        print(
            f"{PROG}: warning: the judges name the model by its answer file's name ({output.stem}), not by "
            f"model_id {args.model_id}",
            file=sys.stderr,
        )
    if args.overwrite:
        output.unlink(missing_ok=True)
        options_path(output).unlink(missing_ok=True)
    encoding = benchmarks.TOKEN_ENCODINGS.get(args.benchmark)
    count_tokens = None
    if encoding is not None:  # decided before the options are checked: the record names the counter used
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        count_tokens, args.token_len_source, reason = benchmarks.token_counter(encoding, len, offline)
        if reason:
            print(f"{PROG}: token_len counted with the model's tokenizer, not tiktoken {encoding}: {reason}")
    check_output_options(
        output,
        output_options(args),
        PROG,
        questions,
        1,
        check_rows=lambda path: benchmark_resume_point(path, args.benchmark, questions, model_id),
    )

    config = sampling_config(args)
    max_model_len = args.cutoff_len + config.max_new_tokens if args.cutoff_len else None
    generator = make_generator(args, max_model_len)
    if count_tokens is len:  # the fall-back: the model's own tokenizer
        count_tokens = lambda text: len(generator.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    done, length = benchmark_resume_point(output, args.benchmark, questions, model_id)
    if done:
        print(f"{output}: {done} of {len(questions)} questions already answered, resuming")
    with (
        open_resumable(output, length) as handle,
        tqdm(total=len(questions), initial=done, unit="question", desc=args.benchmark, dynamic_ncols=True) as bar,
    ):
        for start in range(done, len(questions), generator.batch_size):
            chunk = questions[start : start + generator.batch_size]
            configs = [question_config(config, args, question) for question in chunk]
            conversations: list[list[Message]] = [[] for _ in chunk]
            answers: list[list[str]] = [[] for _ in chunk]
            for turn in range(max(len(question.turns) for question in chunk)):  # turn 1 of all, then turn 2, ...
                todo = [i for i, question in enumerate(chunk) if turn < len(question.turns)]
                for i in todo:
                    conversations[i].append({"role": "user", "content": chunk[i].turns[turn]})
                replies = generate_turn(
                    generator,
                    [conversations[i] for i in todo],
                    [configs[i] for i in todo],
                    [config.seed + chunk[i].index for i in todo],
                    args.system,
                    args.cutoff_len,
                )
                for i, reply in zip(todo, replies):
                    conversations[i].append({"role": "assistant", "content": reply})
                    answers[i].append(reply)
            rows = [
                benchmarks.answer_record(
                    args.benchmark,
                    question,
                    turns,
                    model_id,
                    uuid.uuid4().hex,
                    time.time(),
                    count_tokens(turns[-1]) if count_tokens else None,
                )
                for question, turns in zip(chunk, answers)
            ]
            append_records(handle, rows)
            bar.update(len(chunk))
    print(
        f"{output}: {len(questions)} answers of {model_id} ({len(questions) - done} generated now, {generator.backend})"
    )
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command(PROG, lambda: run(parse_args(GenerateArguments, argv, PROG, DESCRIPTION)))


ARGUMENTS = GenerateArguments  # the options of this subcommand
