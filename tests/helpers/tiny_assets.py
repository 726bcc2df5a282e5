"""Tiny, fully local assets for tests, the quickstart and the benchmark: a word-level tokenizer, random Qwen2
models, data sets.

Everything is deterministic given the seed and needs no network::

    from helpers.tiny_assets import build_all, build_model, build_tokenizer, write_datasets

The command line is ``python scripts/tiny_assets.py`` (``all``, ``tokenizer``, ``model``, ``data``).

The task of the data sets: a prompt asks for a list of words of one category (animals, colours, ...);
SFT responses list ``min_len`` to ``max_len`` words of that category, and the pairwise set prefers short
lists (chosen: at most ``short_max`` words, rejected: at least ``long_min`` words) for the same prompt.
"""

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple


PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN, UNK_TOKEN)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animals": (
        "cat", "dog", "horse", "cow", "sheep", "goat", "pig", "duck", "goose", "hen",
        "fox", "wolf", "bear", "deer", "mouse", "rat", "owl", "eagle", "frog", "snake",
    ),
    "colors": (
        "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white",
        "gray", "gold", "silver", "violet", "indigo", "teal", "cyan", "magenta", "beige", "navy",
    ),
    "fruits": (
        "apple", "pear", "plum", "peach", "cherry", "grape", "lemon", "lime", "mango", "melon",
        "kiwi", "banana", "fig", "date", "papaya", "guava", "apricot", "coconut", "olive", "quince",
    ),
    "tools": (
        "hammer", "saw", "drill", "wrench", "chisel", "pliers", "axe", "shovel", "rake", "hoe",
        "file", "level", "clamp", "vise", "ruler", "knife", "scissors", "needle", "brush", "ladder",
    ),
    "countries": (
        "france", "spain", "italy", "germany", "poland", "norway", "sweden", "finland", "greece", "egypt",
        "kenya", "peru", "chile", "brazil", "mexico", "canada", "japan", "china", "india", "nepal",
    ),
    "numbers": (
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
        "twenty",
    ),
}  # fmt: skip
INSTRUCTIONS = ("list some {}", "name a few {}", "give me {}", "write down some {}", "tell me {}")
CONTEXTS = (
    "for", "a", "an", "the", "my", "our", "story", "poem", "game", "quiz", "lesson", "song", "class", "party",
    "book", "trip", "map", "letter", "note", "puzzle", "about", "with", "of", "little", "big", "new", "old",
)  # fmt: skip
# Words of LLaMA-Factory's chat templates (role names, Qwen's default system prompt), so that nothing maps to <unk>.
TEMPLATE_WORDS = (
    "system", "user", "assistant", "you", "are", "qwen", ",", "created", "by", "alibaba", "cloud", ".",
    "helpful", "tool_response", "<", ">", "/",
)  # fmt: skip
DEFAULT_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [w for ws in CATEGORIES.values() for w in ws]
        + list(CATEGORIES)
        + [w for text in INSTRUCTIONS for w in text.replace("{}", "").split()]
        + list(CONTEXTS)
        + list(TEMPLATE_WORDS)
    )
)
# Another vocabulary (other words, another size), for models whose tokenizer must not match the default one.
ALT_WORDS: tuple[str, ...] = tuple(f"w{i:03d}" for i in range(120)) + TEMPLATE_WORDS


def build_tokenizer(out_dir: str | Path, words: Iterable[str] = DEFAULT_WORDS, seed: int = 0):
    """Train a lower-casing word-level tokenizer on a synthetic corpus of ``words`` and save it to ``out_dir``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(w.lower() for w in words))
    rng = random.Random(seed)
    corpus = [" ".join(rng.choices(words, k=16)) for _ in range(4 * len(words))] + words  # every word at least once

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    fast.save_pretrained(str(out_dir))
    return fast


def build_model(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    hidden_size: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
):
    """Save a randomly initialised ``Qwen2ForCausalLM`` sized to the tokenizer in ``tokenizer_dir``, with it."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return model


def build_reward_model(out_dir: str | Path, tokenizer_dir: str | Path, hidden_size: int = 32, seed: int = 0):
    """Save a randomly initialised ``Qwen2ForSequenceClassification`` with one output (a reward model)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return model


def _prompt(rng: random.Random, category: str) -> str:
    context = " ".join(rng.choices(CONTEXTS, k=rng.randint(0, 4)))
    return " ".join([rng.choice(INSTRUCTIONS).format(category), context]).strip()


def _answer(rng: random.Random, category: str, length: int) -> str:
    return " ".join(rng.sample(CATEGORIES[category], k=length))


def _sft_rows(rng: random.Random, num: int, min_len: int, max_len: int) -> list[dict[str, str]]:
    rows = []
    for _ in range(num):
        category = rng.choice(list(CATEGORIES))
        length = rng.randint(min_len, max_len)
        rows.append({"instruction": _prompt(rng, category), "input": "", "output": _answer(rng, category, length)})

    return rows


def _pair_rows(
    rng: random.Random, num: int, min_len: int, max_len: int, short_max: int, long_min: int
) -> list[dict[str, str]]:
    rows = []
    for _ in range(num):
        category = rng.choice(list(CATEGORIES))
        chosen = _answer(rng, category, rng.randint(min_len, short_max))
        rejected = _answer(rng, category, rng.randint(long_min, max_len))
        rows.append({"instruction": _prompt(rng, category), "input": "", "chosen": chosen, "rejected": rejected})

    return rows


def write_datasets(
    data_dir: str | Path,
    seed: int = 0,
    num_train: int = 256,
    num_eval: int = 64,
    min_len: int = 2,
    max_len: int = 20,
    short_max: int = 5,
    long_min: int = 12,
) -> dict[str, dict]:
    """Write ``tiny_sft``, ``tiny_pairs`` (ranking) and their ``*_eval`` sets plus ``dataset_info.json``."""
    if not 1 <= min_len <= short_max < long_min <= max_len <= min(len(ws) for ws in CATEGORIES.values()):
        raise ValueError("Need 1 <= min_len <= short_max < long_min <= max_len <= words per category.")

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pair_lens = (min_len, max_len, short_max, long_min)
    sft_columns = {"prompt": "instruction", "query": "input", "response": "output"}
    pair_columns = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
    splits = {
        "tiny_sft": (_sft_rows(rng, num_train, min_len, max_len), {"columns": sft_columns}),
        "tiny_pairs": (_pair_rows(rng, num_train, *pair_lens), {"ranking": True, "columns": pair_columns}),
        "tiny_sft_eval": (_sft_rows(rng, num_eval, min_len, max_len), {"columns": sft_columns}),
        "tiny_pairs_eval": (_pair_rows(rng, num_eval, *pair_lens), {"ranking": True, "columns": pair_columns}),
    }
    # KTO format: the pairs' responses as unpaired outputs, desirable (chosen) or undesirable (rejected).
    kto_rows = [
        {"instruction": row["instruction"], "input": row["input"], "output": row[side], "label": side == "chosen"}
        for row in splits["tiny_pairs"][0]
        for side in ("chosen", "rejected")
    ]
    splits["tiny_kto"] = (kto_rows, {"columns": {**sft_columns, "kto_tag": "label"}})
    info = {}
    for name, (rows, entry) in splits.items():
        (data_dir / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        info[name] = {"file_name": f"{name}.json", **entry}

    (data_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


class ModelSpec(NamedTuple):
    """A model that :func:`build_all` builds: its directory name, sizes, and whether it uses :data:`ALT_WORDS`."""

    name: str
    hidden_size: int
    num_layers: int
    alt_vocab: bool = False

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``NAME:HIDDEN:LAYERS`` or ``NAME:HIDDEN:LAYERS:alt``."""
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[3:] not in ([], ["alt"]) or not all(p.isdigit() for p in parts[1:3]):
            raise ValueError(f"expected NAME:HIDDEN:LAYERS[:alt], got {text!r}")

        return cls(parts[0], int(parts[1]), int(parts[2]), len(parts) == 4)


DEFAULT_MODELS = (ModelSpec("weak", 32, 1), ModelSpec("strong", 64, 2), ModelSpec("alt_vocab", 32, 1, True))


def build_all(
    out_dir: str | Path, seed: int = 0, models: Sequence[ModelSpec] = DEFAULT_MODELS, **data_kwargs: int
) -> None:
    """Build ``tokenizer/`` (and ``alt_tokenizer/`` if needed), one directory per model, and ``data/``."""
    out_dir = Path(out_dir)
    build_tokenizer(out_dir / "tokenizer", seed=seed)
    if any(spec.alt_vocab for spec in models):
        build_tokenizer(out_dir / "alt_tokenizer", words=ALT_WORDS, seed=seed)

    for spec in models:
        tokenizer_dir = out_dir / ("alt_tokenizer" if spec.alt_vocab else "tokenizer")
        build_model(
            out_dir / spec.name, tokenizer_dir, hidden_size=spec.hidden_size, num_layers=spec.num_layers, seed=seed
        )

    write_datasets(out_dir / "data", seed=seed, **data_kwargs)
