"""Tiny weak models whose tokenizer differs from the strong one's, for cross-tokenizer WSPO tests."""

import json
import shutil
from pathlib import Path

from helpers.tiny_tokenizers import build_weak_family


WEAK_TEMPLATE = "llama3"  # the weak family's chat template (the tiny strong models use qwen)


def build_cross_assets(assets: Path, out: Path) -> Path:
    r"""``out/tokenizer``, ``out/weak``, ``out/weak_aligned``: a byte-level BPE family on the tiny task; and
    ``out/slow``: a model directory whose tokenizer is a slow (Python) one, without offset mappings."""
    build_weak_family(out, assets / "data", kind="byte_bpe")
    slow = out / "slow"
    slow.mkdir(parents=True, exist_ok=True)
    letters = {c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    (slow / "vocab.json").write_text(json.dumps({"<unk>": 0, **letters}), encoding="utf-8")
    (slow / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {"tokenizer_class": "CTRLTokenizer", "unk_token": "<unk>"}
    (slow / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    shutil.copy(out / "weak" / "config.json", slow / "config.json")
    return out
