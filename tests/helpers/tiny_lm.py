"""A frozen "model" small enough to precompute with in a test: an embedding table read as logits."""

from types import SimpleNamespace
from typing import Any

import torch


VOCAB = 40


class TinyLM(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=generator))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any):
        return SimpleNamespace(logits=self.table[input_ids])


class TinyFrozen:
    r"""What ``precompute_logps`` needs of a frozen model: a name, a loader and an identity."""

    def __init__(self, name: str = "ref", seed: int = 0) -> None:
        self.name, self.seed, self.loads = name, seed, 0

    def load(self) -> TinyLM:
        self.loads += 1
        return TinyLM(self.seed)

    def identity(self, hashes) -> dict[str, Any]:
        return {"tiny": self.seed}


def examples(num: int = 12, seed: int = 0) -> dict[str, list[list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    out = {"input_ids": [], "labels": []}
    for i in range(num):
        prompt, response = 2 + i % 3, 1 + i % 4
        ids = torch.randint(1, VOCAB, (prompt + response,), generator=generator).tolist()
        out["input_ids"].append(ids)
        out["labels"].append([-100] * prompt + ids[prompt:])
    return out


def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    length = max(len(feature["input_ids"]) for feature in features)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([feature[key] + [value] * (length - len(feature[key])) for feature in features])

    return {
        "input_ids": pad("input_ids", 0),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", -100),
    }
