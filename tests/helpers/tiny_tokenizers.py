"""Tiny tokenizers of three kinds, trained offline with the ``tokenizers`` library, for cross-tokenizer tests.

* ``byte_bpe``: byte-level BPE with a GPT-2/Qwen/Llama-3 style split pattern (every byte is a token, pieces of one
  character share its offsets);
* ``sentencepiece``: SentencePiece-style BPE on ``▁``-marked text with byte fallback (``<0xNN>`` tokens for what the
  vocabulary lacks), as in Llama-2 and Mistral;
* ``word``: word-level with whitespace splitting and lower-casing (whitespace is skipped, unknown words are
  ``<unk>``).

Each gets the special tokens of LLaMA-Factory's ``qwen`` and ``llama3`` templates, so either template renders with
any kind without adding tokens. Deterministic given the seed; no network::

    from helpers.tiny_tokenizers import build_tokenizer, random_texts
    tokenizer = build_tokenizer("byte_bpe", corpus=random_texts(200, seed=0), out_dir="tok")
"""

import random
from collections.abc import Iterable
from pathlib import Path


KINDS = ("byte_bpe", "sentencepiece", "word")
UNK_TOKEN = "<unk>"
PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
# The special tokens of LLaMA-Factory's qwen and llama3 templates.
TEMPLATE_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
)  # fmt: skip
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, *TEMPLATE_TOKENS)
# The split pattern of byte-level BPE tokenizers such as Qwen2's.
BYTE_BPE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_WORDS = (
    "the", "cat", "dog", "list", "some", "animals", "colors", "red", "blue", "apple", "return", "value", "naïve",
    "café", "über", "straße", "東京", "日本語", "здравствуй", "мир", "مرحبا", "γειά", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "x", "I",
)  # fmt: skip
_SYMBOLS = ("😀", "👍🏽", "👩‍👩‍👧", "🇫🇷", "☃", "€", "…", "—", "“", "”", "«", "»", "°", "½", "™", "\u00a0", "\u200b")
_CODE = (
    "def f(x):\n    return x + 1\n",
    "for (int i = 0; i < n; ++i) { s += a[i]; }",
    'print("hello, world!")',
    "if a != b and c >= 10:\n\tpass",
    "SELECT * FROM t WHERE id = 42;",
    "x = [1, 2, 3]  # a list",
)
_SPACES = (" ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\r\n", "    ")


def random_text(rng: random.Random, max_pieces: int = 24) -> str:
    r"""A random text mixing words of several scripts, emoji and symbols, numbers, code and whitespace runs."""
    pieces = []
    for _ in range(rng.randint(1, max_pieces)):
        kind = rng.random()
        if kind < 0.45:
            pieces.append(rng.choice(_WORDS))
        elif kind < 0.6:
            pieces.append(rng.choice(_SYMBOLS))
        elif kind < 0.75:
            pieces.append(str(rng.randint(0, 10 ** rng.randint(1, 7))))
        elif kind < 0.85:
            pieces.append(rng.choice(_CODE))
        else:
            pieces.append("".join(rng.choices(".,;:!?()[]{}'\"-_/\\*&%$#@", k=rng.randint(1, 3))))
        pieces.append(rng.choice(_SPACES) if rng.random() < 0.3 else " ")

    return "".join(pieces[:-1])


def random_texts(num: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [random_text(rng) for _ in range(num)]


def _byte_bpe(corpus: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BYTE_BPE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def _sentencepiece(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    trained = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    trained.normalizer = normalizer
    trained.train_from_iterator(corpus, trainer)

    # The same vocabulary and merges with a byte token for each byte, looked up when a piece is not in it.
    vocab = trained.get_vocab()
    for token in byte_tokens:
        vocab.setdefault(token, len(vocab))
    merges = _merges(trained)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK_TOKEN, byte_fallback=True))
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


def _merges(tokenizer) -> list[tuple[str, str]]:
    import json

    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in merges]


def _word(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


_BUILDERS = {"byte_bpe": _byte_bpe, "sentencepiece": _sentencepiece, "word": _word}


def build_tokenizer(
    kind: str, corpus: Iterable[str], vocab_size: int = 400, out_dir: str | Path | None = None, model_max_length=512
):
    r"""Train a ``kind`` tokenizer (:data:`KINDS`) on ``corpus``: a ``PreTrainedTokenizerFast``, saved to ``out_dir``.

    Its BOS, EOS and padding tokens are ``<|begin_of_text|>``, ``<|end_of_text|>`` and ``<|endoftext|>``; the special
    tokens of LLaMA-Factory's ``qwen`` and ``llama3`` templates are in the vocabulary.
    """
    from transformers import PreTrainedTokenizerFast

    if kind not in _BUILDERS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}: use one of {', '.join(KINDS)}.")

    backend = _BUILDERS[kind](list(corpus), vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(TEMPLATE_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))

    return fast


def task_corpus(data_dir: str | Path) -> list[str]:
    r"""Every prompt and response of the tiny task's data sets (``tiny_assets.write_datasets``), plus its words."""
    import json

    from .tiny_assets import DEFAULT_WORDS

    texts = list(DEFAULT_WORDS)
    for name in ("tiny_sft", "tiny_pairs", "tiny_sft_eval", "tiny_pairs_eval"):
        for row in json.loads((Path(data_dir) / f"{name}.json").read_text(encoding="utf-8")):
            texts += [row[key] for key in ("instruction", "output", "chosen", "rejected") if row.get(key)]
    return texts


def build_weak_family(
    out_dir: str | Path,
    data_dir: str | Path,
    kind: str = "byte_bpe",
    vocab_size: int = 320,
    models: tuple[tuple[str, int], ...] = (("weak", 0), ("weak_aligned", 1)),
    hidden_size: int = 32,
    num_layers: int = 1,
) -> Path:
    r"""A model family whose tokenizer differs from the tiny task's word-level one: ``out_dir/tokenizer`` (a ``kind``
    tokenizer trained on the task's texts) and one random Qwen2 model per ``(name, seed)`` of ``models``."""
    from .tiny_assets import build_model

    out_dir = Path(out_dir)
    build_tokenizer(kind, task_corpus(data_dir), vocab_size=vocab_size, out_dir=out_dir / "tokenizer")
    for name, seed in models:
        build_model(out_dir / name, out_dir / "tokenizer", hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    return out_dir
