r"""A local reward model (sequence classification, one logit) as the scorer of WPO's hybrid data.

On a machine with GPUs one replica goes to each GPU, in bfloat16 where the GPU supports it; the texts of a call are
sorted by length (little padding), cut into batches, and the batches shared among the replicas, each run by its
own thread. Without a GPU one float32 replica scores on the CPU.
"""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .args import CliError


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    r"""``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


class RewardModelScorer:
    def __init__(
        self,
        path: str,
        template: str | None,
        batch_size: int = 16,
        cutoff_len: int = 4096,
        trust_remote_code: bool = False,
        devices: Sequence[str] | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if getattr(config, "num_labels", None) != 1:
            raise CliError(f"--scorer rm:{path}: a reward model has one output, this one has {config.num_labels}")
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.template = None
        if template:
            from llamafactory.data import get_template_and_fix_tokenizer
            from llamafactory.hparams import DataArguments

            self.template = get_template_and_fix_tokenizer(self.tokenizer, DataArguments(template=template))
        elif not self.tokenizer.chat_template:
            raise CliError(f"--scorer rm:{path}: the tokenizer has no chat template; name one with --scorer_template")

        if devices is None:
            devices = [f"cuda:{index}" for index in range(torch.cuda.device_count())] or ["cpu"]
        self.devices = [torch.device(device) for device in devices]
        on_gpu = self.devices[0].type == "cuda"
        self.dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
        self.replicas = []
        for device in self.devices:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code, **_dtype_kwarg(self.dtype)
            )
            model.config.pad_token_id = self.tokenizer.pad_token_id
            self.replicas.append(model.to(device).eval())
        self.batch_size = batch_size
        self.cutoff_len = cutoff_len

    def describe(self) -> str:
        names = ", ".join(str(device) for device in self.devices)
        return f"reward model on {names} ({str(self.dtype).removeprefix('torch.')})"

    def encode(self, instruction: str, response: str) -> list[int]:
        messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
        if self.template is not None:
            prompt_ids, response_ids = self.template.encode_oneturn(self.tokenizer, messages)
            ids = prompt_ids + response_ids
        else:
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        return list(ids)[-self.cutoff_len :]

    def _score_batches(self, replica: Any, batches: list[list[tuple[int, list[int]]]]) -> list[tuple[int, float]]:
        import torch

        device = next(replica.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        out = []
        for batch in batches:
            width = max(len(ids) for _, ids in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, (_, ids) in enumerate(batch):  # right padding: the head reads the last non-pad token
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
            with torch.inference_mode():
                logits = replica(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            out += [(index, float(value)) for (index, _), value in zip(batch, logits[:, 0].float().cpu())]
        return out

    def __call__(self, items: Sequence[tuple[str, str]]) -> list[float]:
        r"""The reward of each ``(instruction, response)``, in order."""
        encoded = sorted(enumerate(self.encode(*item) for item in items), key=lambda pair: -len(pair[1]))
        batches = [encoded[start : start + self.batch_size] for start in range(0, len(encoded), self.batch_size)]
        shares = [batches[index :: len(self.replicas)] for index in range(len(self.replicas))]
        if len(self.replicas) == 1:
            results = self._score_batches(self.replicas[0], shares[0])
        else:
            with ThreadPoolExecutor(len(self.replicas)) as pool:
                parts = pool.map(self._score_batches, self.replicas, shares)
                results = [pair for part in parts for pair in part]
        scores = [0.0] * len(items)
        for index, value in results:
            scores[index] = value
        return scores
