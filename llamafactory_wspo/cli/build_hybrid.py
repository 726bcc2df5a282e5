r"""``llamafactory-wspo build-hybrid``: WPO's hybrid preference data (sample, judge, pair), resumable at full scale."""

import asyncio
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .args import CliError, option, parse_args, run_command
from .files import (
    append_records,
    open_resumable,
    read_dataset_info,
    read_jsonl_prefix,
    read_records,
    write_atomic,
    write_json_atomic,
)
from .generate import (
    OPTIONS_SUFFIX,
    PromptItem,
    check_local_model,
    check_output_options,
    generate_to_file,
    make_generator,
    output_options,
    sampling_config,
)


PROG = "llamafactory-wspo build-hybrid"
DESCRIPTION = r"""Build WPO's hybrid preference data: policy samples and an outside model's output, judged and paired.

  # policy samples (5 per prompt at the WPO paper's temperature 0.7, top-p 0.95), a judge endpoint, the pairs
  llamafactory-wspo build-hybrid pairs=llamafactory/ultrafeedback_binarized \
      model_name_or_path=meta-llama/Meta-Llama-3-8B-Instruct template=llama3 num_samples=5 temperature=0.7 top_p=0.95 \
      outside_file=saves/hybrid/outside.jsonl scorer='openai:http://127.0.0.1:8001/v1#judge' \
      output_dir=yaml_recipes/data name=ultrafeedback_hybrid_llama3
  # samples generated beforehand (`llamafactory-wspo generate` output), a local reward model as the scorer
  llamafactory-wspo build-hybrid pairs=pairs.jsonl samples_file=samples.jsonl scorer=rm:path/to/rm \
      scorer_template=llama3 chosen_min=0.5 margin=0.2 output_dir=data name=hybrid

The rule (WPO paper, hybrid setting): for each prompt of `pairs` the candidates are its policy samples plus the
outside model's output (`outside_file`, optional), each scored; the best-scored candidate is chosen if its score is
at least `chosen_min`, and a candidate scoring at most chosen - `margin` is drawn at random as rejected (seeded by
`seed` and the prompt's index). A prompt without such a pair keeps its `pairs` pair (source "ultrafeedback").

Scorers: `openai:<base url>#<model>`, an OpenAI-compatible chat endpoint (vLLM's server, ...) grading on the paper's
1-6 additive scale (it must end with `Score: N`; OPENAI_API_KEY is sent when set), or `rm:<path>`, a reward model
with one output (on every GPU when there are GPUs, else the CPU; set chosen_min and margin to its scale).

At scale: each prompt's row is appended to <output_dir>/<name>.jsonl as soon as its candidates are scored; running
the same command again resumes, never scoring a stored prompt again (a kill loses at most the prompts in flight).
With model_name_or_path the samples are generated first into samples_file (default <output_dir>/<name>.samples.jsonl,
resumable with the same sampling options only, as in `generate`; vLLM when installed, else transformers; prompt i
samples with seed + i). Judge calls run judge_concurrency at a time; timeouts, connection errors, 429 and 5xx are
retried judge_max_retries times with exponential back-off and jitter; a prompt is stored only when every one of its
candidates has a score. A prompt with a reply without a score on the 1-6 scale (an HTML page, an error object, no
`Score: N` line, 6.5, 5/10) is left unjudged for the next run; once a call has failed every retry (the judge is down)
no new prompt is started. While any prompt is left unjudged the run ends with exit code 1 and one line saying how
many and why; the dataset_info.json entry <name> is written once every prompt is judged.
"""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
RESERVED_NAMES = {"dataset_info"}
SCORER_HELP = "openai:<base url>#<judge model> (e.g. openai:http://127.0.0.1:8001/v1#judge) or rm:<reward model path>"


@dataclass
class BuildHybridArguments:
    pairs: str = option(help="Fallback pairs: a hub data set id or a local .json/.jsonl file (instruction/prompt, "
                        "chosen, rejected).")  # fmt: skip
    output_dir: str = option(help="Folder of the data set <name>.jsonl and of dataset_info.json.")
    name: str = option(help="Data set name: the file <name>.jsonl and the dataset_info.json entry <name>.")
    scorer: str = option(help=SCORER_HELP + ".")
    pairs_split: str = option("train", help="Split of a hub `pairs` data set.")
    max_prompts: int | None = option(None, help="Use only the first N prompts of `pairs`.")
    samples_file: str | None = option(
        None,
        help="Policy samples (`generate` output; several: a glob pattern such as saves/samples.*.jsonl); with "
        "model_name_or_path, the file where they are generated.",
    )
    outside_file: str | None = option(
        None, help="The outside model's outputs (`generate` output, optional; several: a glob pattern)."
    )
    model_name_or_path: str | None = option(None, help="Policy to sample here (instead of a given samples_file).")
    template: str | None = option(None, help="LLaMA-Factory chat template of the policy.")
    num_samples: int = option(5, help="Policy samples per prompt (the WPO paper: 5).")
    temperature: float = option(0.7, help="Sampling temperature of the policy (the WPO paper: 0.7).")
    top_p: float = option(0.95, help="Nucleus threshold of the policy's sampling (the WPO paper: 0.95).")
    max_new_tokens: int = option(2048, help="Longest policy sample, in tokens.")
    cutoff_len: int | None = option(None, help="Longest prompt for sampling, in tokens (keeps its end).")
    batch_size: int | None = option(None, help="Prompts per generation call (default: 8 huggingface, 256 vllm).")
    infer_backend: Literal["auto", "huggingface", "vllm"] = option("auto", help="auto: vLLM when installed.")
    infer_dtype: Literal["auto", "float16", "bfloat16", "float32"] = option("auto", help="Dtype of the policy.")
    vllm_gpu_util: float = option(0.9, help="vLLM: share of GPU memory to use.")
    vllm_tensor_parallel_size: int = option(1, help="vLLM: GPUs per model replica.")
    trust_remote_code: bool = option(False, help="Run code that model folders carry (only models you trust).")
    scorer_template: str | None = option(None, help="LLaMA-Factory template formatting texts for an rm: scorer.")
    judge_concurrency: int = option(32, help="Judge requests in flight at most.")
    judge_timeout: float = option(300.0, help="Seconds before a judge request is abandoned (and retried).")
    judge_max_retries: int = option(6, help="Retries of a judge request after a timeout, connection error, 429, 5xx.")
    judge_backoff: float = option(1.0, help="First retry delay in seconds; doubles each retry (jittered, <= 60 s).")
    judge_max_tokens: int = option(512, help="Longest judge answer, in tokens.")
    rm_batch_size: int = option(16, help="Texts per forward pass of an rm: scorer.")
    rm_cutoff_len: int = option(4096, help="Longest text for an rm: scorer, in tokens (keeps its end).")
    chosen_min: float = option(5.0, help="Lowest score a chosen output may have (the paper: 5 of 6).")
    margin: float = option(1.0, help="Least score gap between chosen and rejected (the paper: 1).")
    seed: int = option(42, help="Seed of the random choices (per prompt) and of the policy's sampling.")

    def check(self) -> None:
        parse_scorer(self.scorer)
        if not NAME_PATTERN.match(self.name) or self.name in RESERVED_NAMES:
            raise CliError(f"--name {self.name!r}: use letters, digits, '_', '-' or '.', and not `dataset_info`")
        if self.model_name_or_path is None and self.samples_file is None:
            raise CliError("give --samples_file (generated samples) or --model_name_or_path (sample here)")
        if self.model_name_or_path is not None:
            if not self.template:
                raise CliError("--model_name_or_path needs --template, the LLaMA-Factory chat template of the policy")
            check_local_model("--model_name_or_path", self.model_name_or_path)
            from ..inference import resolve_backend

            try:
                sampling_config(self).check()
                resolve_backend(self.infer_backend)
            except ValueError as err:
                raise CliError(str(err)) from None
        elif not sample_files(self.samples_file):
            raise CliError(f"--samples_file {self.samples_file}: no such file (or give --model_name_or_path)")
        if self.outside_file is not None and not sample_files(self.outside_file):
            raise CliError(f"--outside_file {self.outside_file}: no such file")
        for name in ("judge_concurrency", "rm_batch_size", "rm_cutoff_len", "judge_max_tokens"):
            if getattr(self, name) < 1:
                raise CliError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.judge_timeout <= 0 or self.judge_max_retries < 0 or self.judge_backoff < 0:
            raise CliError("--judge_timeout must be > 0, --judge_max_retries and --judge_backoff >= 0")
        if self.margin <= 0:
            raise CliError(f"--margin must be > 0, got {self.margin}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise CliError(f"--max_prompts must be >= 1, got {self.max_prompts}")
        check_name_is_free(Path(self.output_dir), self.name)

    @property
    def output_file(self) -> Path:
        return Path(self.output_dir) / f"{self.name}.jsonl"

    @property
    def samples_path(self) -> Path:
        return Path(self.samples_file) if self.samples_file else Path(self.output_dir) / f"{self.name}.samples.jsonl"


def sample_files(pattern: str) -> list[Path]:
    r"""The files of ``samples_file``: one path, or every file matching a glob pattern."""
    import glob

    if any(char in pattern for char in "*?["):  # not the options records that `generate` writes beside its output
        paths = (Path(path) for path in glob.glob(pattern) if not path.endswith(OPTIONS_SUFFIX))
        return sorted(path for path in paths if path.is_file())
    return [Path(pattern)] if Path(pattern).is_file() else []


def dataset_entry(name: str) -> dict[str, Any]:
    return {
        "file_name": f"{name}.jsonl",
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    }


def check_name_is_free(output_dir: Path, name: str) -> None:
    r"""Refuse a name that ``dataset_info.json`` gives another data set, or a file another entry names."""
    info_path = output_dir / "dataset_info.json"
    info = read_dataset_info(info_path, "--output_dir")
    ours = dataset_entry(name)
    if name in info and info[name] != ours:
        raise CliError(
            f"--name {name}: {info_path} has another data set of that name ({json_brief(info[name])}); choose another "
            "name or output_dir"
        )
    for other, entry in info.items():
        if other != name and isinstance(entry, dict) and entry.get("file_name") == ours["file_name"]:
            raise CliError(f"--name {name}: the data set `{other}` of {info_path} reads {ours['file_name']}; choose "
                           "another name")  # fmt: skip


def json_brief(entry: Any) -> str:
    text = json.dumps(entry)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_scorer(spec: str) -> tuple[str, str, str | None]:
    r"""``("rm", path, None)`` or ``("openai", base_url, model)``, checked before anything loads."""
    kind, _, rest = spec.partition(":")
    if kind == "rm" and rest:
        return "rm", rest, None
    if kind == "openai" and "#" in rest:
        url, _, model = rest.rpartition("#")
        if url.startswith(("http://", "https://")) and model:
            return "openai", url, model
    raise CliError(f"--scorer {spec!r}: expected {SCORER_HELP}")


@dataclass(frozen=True)
class Candidate:
    text: str
    origin: str  # "policy" or "outside"
    score: float | None = None


def response_text(value: Any) -> str:
    r"""A response given as a string or as a message list (its last message's content)."""
    if isinstance(value, list):
        return str(value[-1]["content"]) if value else ""
    return str(value)


def load_pairs(source: str, split: str, max_prompts: int | None) -> list[dict[str, str]]:
    r"""``{"instruction", "chosen", "rejected"}`` per record of ``pairs``."""
    path = Path(source)
    if path.suffix in (".json", ".jsonl") or path.exists():
        records = read_records(path, "--pairs")
    else:
        from datasets import load_dataset

        records = load_dataset(source, split=split)
    pairs = []
    for index, record in enumerate(records):
        if max_prompts is not None and index >= max_prompts:
            break
        prompt = record.get("instruction", record.get("prompt"))
        if prompt is None or "chosen" not in record or "rejected" not in record:
            raise CliError(f"--pairs record {index}: expected `instruction` (or `prompt`), `chosen` and `rejected`")
        if record.get("input"):
            prompt = f"{prompt}\n{record['input']}"
        pairs.append(
            {
                "instruction": prompt,
                "chosen": response_text(record["chosen"]),
                "rejected": response_text(record["rejected"]),
            }
        )
    return pairs


def load_outputs(path: Path, option_name: str) -> dict[str, list[str]]:
    r"""Outputs per instruction of a samples / outside file (``generate`` output, or records with ``output``)."""
    outputs: dict[str, list[str]] = {}
    for index, record in enumerate(read_records(path, option_name)):
        value = record.get("predict", record.get("output"))
        if "instruction" not in record or value is None:
            raise CliError(f"{option_name} {path} record {index}: expected `instruction` and `predict` (or `output`)")
        texts = value if isinstance(value, list) else [value]
        outputs.setdefault(record["instruction"], []).extend(str(text) for text in texts)
    return outputs


def choose_pair(
    candidates: Sequence[Candidate], chosen_min: float, margin: float, rng: random.Random
) -> tuple[Candidate, Candidate] | None:
    r"""The hybrid rule: best candidate if it scores >= ``chosen_min``, a random one scoring <= best - ``margin``."""
    scored = [candidate for candidate in candidates if candidate.score is not None]
    if not scored:
        return None
    best = max(candidate.score for candidate in scored)
    if best < chosen_min:
        return None
    chosen = rng.choice([candidate for candidate in scored if candidate.score == best])
    pool = [candidate for candidate in scored if candidate.score <= best - margin]
    if not pool:
        return None
    return chosen, rng.choice(pool)


def prompt_rng(seed: int, index: int) -> random.Random:
    r"""The random choices of prompt ``index``: the same whatever order prompts finish in, or which run did them."""
    return random.Random(f"{seed}/{index}")


def make_row(
    index: int,
    pair: dict[str, str],
    candidates: Sequence[Candidate],
    scores: Sequence[float],
    chosen_min: float,
    margin: float,
    seed: int,
) -> dict[str, Any]:
    r"""The data set row of one prompt whose candidates are all scored: a hybrid pair by the rule, or else the
    prompt's own pair (source "ultrafeedback")."""
    scored = [Candidate(candidate.text, candidate.origin, score) for candidate, score in zip(candidates, scores)]
    picked = choose_pair(scored, chosen_min, margin, prompt_rng(seed, index))
    row: dict[str, Any] = {"instruction": pair["instruction"], "input": ""}
    if picked is None:
        row.update(chosen=pair["chosen"], rejected=pair["rejected"], source="ultrafeedback")
        row.update(chosen_score=None, rejected_score=None, chosen_origin=None)
    else:
        chosen, rejected = picked
        row.update(chosen=chosen.text, rejected=rejected.text, source="hybrid")
        row.update(chosen_score=chosen.score, rejected_score=rejected.score, chosen_origin=chosen.origin)
    row.update(prompt_index=index)
    return row


def stored_prompts(path: Path, pairs: Sequence[dict[str, str]]) -> tuple[set[int], int]:
    r"""Indexes of the prompts ``path`` already holds (checked against ``pairs``), and the bytes they take."""
    rows, length = read_jsonl_prefix(path)
    done: set[int] = set()
    for number, row in enumerate(rows, start=1):
        index = row.get("prompt_index")
        if (
            not isinstance(index, int)
            or not 0 <= index < len(pairs)
            or row.get("instruction") != pairs[index]["instruction"]
        ):
            raise CliError(
                f"{path}, line {number}: not a row of these --pairs (another data set, or other --pairs / "
                "--max_prompts): choose another --name or --output_dir"
            )
        done.add(index)
    return done, length


def forget_unjudged_rows(path: Path) -> int:
    r"""Drop the rows that an earlier version stored with judgments without a score (``failed_judgments`` > 0,
    their candidates left out), so that they are judged again; the file is replaced atomically."""
    rows, _ = read_jsonl_prefix(path)
    kept = [row for row in rows if not row.get("failed_judgments")]
    if len(kept) < len(rows):
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
    return len(rows) - len(kept)


class Progress:
    r"""The progress bar of the scoring: done / total, rate, ETA, and the prompts left unjudged so far (by cause:
    ``unreadable``, a reply without a score; ``unavailable``, no answer after every retry), with the first error
    of each cause."""

    def __init__(self, total: int, done: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, unit="prompt", desc=desc, dynamic_ncols=True)
        self.failed: Counter[str] = Counter()
        self.first_error: dict[str, str] = {}

    def update(self, row: dict[str, Any]) -> None:
        self.bar.update(1)

    def fail(self, cause: str, error: BaseException) -> None:
        self.failed[cause] += 1
        self.first_error.setdefault(cause, str(error))
        self.bar.set_postfix(unjudged=sum(self.failed.values()), refresh=False)

    def close(self) -> None:
        self.bar.close()


async def judge_prompts(args: BuildHybridArguments, pairs, candidates, todo, handle, progress) -> Any:
    from .judge import Judge, JudgeMisconfigured, JudgeUnavailable, JudgeUnreadable

    _, url, model = parse_scorer(args.scorer)
    judge = Judge(
        url,
        model,
        args.judge_concurrency,
        args.judge_timeout,
        args.judge_max_retries,
        args.judge_backoff,
        args.judge_max_tokens,
        args.seed,
    )
    pending = iter(todo)
    judge_down = False

    async def judge_one(index: int) -> None:
        nonlocal judge_down
        instruction = pairs[index]["instruction"]
        results = await asyncio.gather(
            *(judge.score(instruction, candidate.text) for candidate in candidates[index]), return_exceptions=True
        )
        for result in results:
            if isinstance(result, JudgeMisconfigured):
                raise CliError(str(result))
            if isinstance(result, BaseException) and not isinstance(result, (JudgeUnavailable, JudgeUnreadable)):
                raise result
        # a prompt is stored only with every candidate scored: a missing score is no fall-back, the next run retries
        for cause, kind in (("unavailable", JudgeUnavailable), ("unreadable", JudgeUnreadable)):
            failure = next((result for result in results if isinstance(result, kind)), None)
            if failure is not None:
                judge_down = judge_down or cause == "unavailable"
                progress.fail(cause, failure)
                return
        row = make_row(index, pairs[index], candidates[index], results, args.chosen_min, args.margin, args.seed)
        append_records(handle, [row])
        progress.update(row)

    async def worker() -> None:
        for index in pending:  # one shared iterator: each prompt goes to one worker
            if judge_down:  # every retry of a call failed: the prompts not started yet are left for the next run
                break
            await judge_one(index)

    async with judge:
        await asyncio.gather(*(worker() for _ in range(min(args.judge_concurrency, len(todo)))))
    return judge.stats


def score_with_reward_model(args: BuildHybridArguments, pairs, candidates, todo, handle, progress) -> str:
    from .reward_model import RewardModelScorer

    _, path, _ = parse_scorer(args.scorer)
    scorer = RewardModelScorer(
        path, args.scorer_template, args.rm_batch_size, args.rm_cutoff_len, args.trust_remote_code
    )
    chunk_size = max(1, 32 * args.rm_batch_size // max(1, args.num_samples + 1))
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        items = [(pairs[index]["instruction"], candidate.text) for index in chunk for candidate in candidates[index]]
        scores = iter(scorer(items))
        rows = []
        for index in chunk:
            prompt_scores = [next(scores) for _ in candidates[index]]
            rows.append(
                make_row(
                    index, pairs[index], candidates[index], prompt_scores, args.chosen_min, args.margin, args.seed
                )
            )
        append_records(handle, rows)
        for row in rows:
            progress.update(row)
    return scorer.describe()


def policy_prompts(pairs: Sequence[dict[str, str]]) -> list[PromptItem]:
    return [
        PromptItem([{"role": "user", "content": pair["instruction"]}], index=index) for index, pair in enumerate(pairs)
    ]


def sample_policy(args: BuildHybridArguments, pairs: Sequence[dict[str, str]]) -> None:
    r"""Generate the policy samples into ``samples_path`` (resuming what is there), then free the model."""
    import gc

    items = policy_prompts(pairs)
    max_model_len = args.cutoff_len + args.max_new_tokens if args.cutoff_len else None
    generator = make_generator(args, max_model_len)
    generate_to_file(
        generator,
        items,
        args.samples_path,
        sampling_config(args),
        generator.batch_size,
        None,
        args.cutoff_len,
        "sample",
    )
    del generator
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def run(args: BuildHybridArguments) -> int:
    pairs = load_pairs(args.pairs, args.pairs_split, args.max_prompts)
    output = args.output_file
    done, length = stored_prompts(output, pairs)
    if args.model_name_or_path is not None:  # samples of other options or prompts are refused before the model loads
        items = policy_prompts(pairs)
        check_output_options(
            args.samples_path, output_options(args), PROG, items, args.num_samples, "another --samples_file"
        )
    forgotten = forget_unjudged_rows(output)
    if forgotten:
        print(
            f"{output}: prompts that an earlier version stored with judgments without a score, judged again: {forgotten}"
        )
        done, length = stored_prompts(output, pairs)
    if args.model_name_or_path is not None:
        sample_policy(args, pairs)
    samples: dict[str, list[str]] = {}
    for path in [args.samples_path] if args.model_name_or_path else sample_files(args.samples_file):
        for instruction, texts in load_outputs(path, "--samples_file").items():
            samples.setdefault(instruction, []).extend(texts)
    outside: dict[str, list[str]] = {}
    for path in sample_files(args.outside_file) if args.outside_file else []:
        for instruction, texts in load_outputs(path, "--outside_file").items():
            outside.setdefault(instruction, []).extend(texts)
    candidates = [
        [Candidate(text, "policy") for text in samples.get(pair["instruction"], [])]
        + [Candidate(text, "outside") for text in outside.get(pair["instruction"], [])]
        for pair in pairs
    ]
    todo = [index for index in range(len(pairs)) if index not in done]
    if done:
        print(f"{output}: {len(done)} of {len(pairs)} prompts already done, resuming")

    kind = parse_scorer(args.scorer)[0]
    progress = Progress(len(pairs), len(done), "judge" if kind == "openai" else "score")
    with open_resumable(output, length) as handle:
        try:
            if kind == "openai":
                stats = asyncio.run(judge_prompts(args, pairs, candidates, todo, handle, progress))
                used = f"judge: {stats.calls} calls, {stats.retries} retries, {stats.unreadable} without a score"
            else:
                used = score_with_reward_model(args, pairs, candidates, todo, handle, progress)
        finally:
            progress.close()

    rows, _ = read_jsonl_prefix(output)
    sources = Counter(row["source"] for row in rows)
    origins = Counter(row["chosen_origin"] for row in rows if row["source"] == "hybrid")
    print(
        f"{output}: {len(rows)} of {len(pairs)} prompts: {sources['hybrid']} hybrid (chosen from policy "
        f"{origins['policy']}, outside {origins['outside']}), {sources['ultrafeedback']} kept their pair; {used}"
    )
    if len(rows) < len(pairs):
        print(
            f"{PROG}: error: {unjudged_message(args, len(pairs) - len(rows), len(pairs), progress)}", file=sys.stderr
        )
        return 1

    info_path = Path(args.output_dir) / "dataset_info.json"
    info = read_dataset_info(info_path, "--output_dir")
    if info.get(args.name) != dataset_entry(args.name):
        check_name_is_free(Path(args.output_dir), args.name)  # again: another process may have written meanwhile
        info[args.name] = dataset_entry(args.name)
        write_json_atomic(info_path, info)
    print(f"data set `{args.name}` -> {info_path}")
    return 0


def unjudged_message(args: BuildHybridArguments, left: int, total: int, progress: Progress) -> str:
    r"""One line: how many prompts are left unjudged, why (the first error of each cause), and what to do."""
    causes = []
    if progress.failed["unavailable"]:
        causes.append(
            f"{progress.failed['unavailable']} without an answer, and no new prompt started after the first: "
            f"{progress.first_error['unavailable']}"
        )
    if progress.failed["unreadable"]:
        causes.append(f"{progress.failed['unreadable']} without a score: {progress.first_error['unreadable']}")
    why = f" ({'; '.join(causes)})" if causes else ""
    return (
        f"{left} of {total} prompts are left unjudged{why}. Run the same command again to judge exactly those once "
        f"the judge answers with scores; the dataset_info.json entry `{args.name}` is written when every prompt is "
        "judged"
    )


def main(argv: Sequence[str]) -> int:
    return run_command(PROG, lambda: run(parse_args(BuildHybridArguments, argv, PROG, DESCRIPTION)))


ARGUMENTS = BuildHybridArguments  # the options of this subcommand
