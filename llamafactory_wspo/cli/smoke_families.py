r"""Tiny random models of a chat template's model family, built offline in seconds (for ``llamafactory-wspo smoke``).

A template implies a family: ``qwen`` -> Qwen2, ``qwen3`` -> Qwen3, ``llama3``/``llama2`` -> Llama, ``mistral``/
``zephyr`` -> Mistral, ``gemma`` -> Gemma, ``gemma2`` -> Gemma-2, ``phi`` -> Phi-3 (others: Llama, said so). Each
template gets a byte-level BPE tokenizer (any text encodes, like the real ones) carrying the family's bos/eos/pad
tokens and every special token that the template writes (``<|im_start|>``, ``<|eot_id|>``, ``[INST]``, ...), so
LLaMA-Factory's template adds no token to it; the models are sized to that tokenizer (hidden size 32, one layer,
two heads), random but seeded.
"""

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..vocab import SPECIAL_TOKEN


@dataclass(frozen=True)
class Family:
    name: str  # shown to the user
    model_type: str  # transformers' config model_type
    bos: str | None
    eos: str
    pad: str | None


QWEN2 = Family("Qwen2", "qwen2", None, "<|im_end|>", "<|endoftext|>")
QWEN3 = Family("Qwen3", "qwen3", None, "<|im_end|>", "<|endoftext|>")
LLAMA3 = Family("Llama", "llama", "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>")
LLAMA = Family("Llama", "llama", "<s>", "</s>", None)
MISTRAL = Family("Mistral", "mistral", "<s>", "</s>", None)
GEMMA = Family("Gemma", "gemma", "<bos>", "<eos>", "<pad>")
GEMMA2 = Family("Gemma-2", "gemma2", "<bos>", "<eos>", "<pad>")
PHI3 = Family("Phi-3", "phi3", "<s>", "<|endoftext|>", "<|endoftext|>")
TEMPLATE_FAMILIES = {
    "qwen": QWEN2,
    "qwen2_vl": QWEN2,
    "chatml": QWEN2,
    "qwen3": QWEN3,
    "qwen3_nothink": QWEN3,
    "llama3": LLAMA3,
    "llama2": LLAMA,
    "default": LLAMA,
    "alpaca": LLAMA,
    "vicuna": LLAMA,
    "mistral": MISTRAL,
    "zephyr": MISTRAL,
    "gemma": GEMMA,
    "gemma2": GEMMA2,
    "phi": PHI3,
}
CORPUS_WORDS = (
    "the a an of to in is was for on with as by at from it this that news report summary article said year people "
    "city government new first two one three list some animals colors fruits tools answer question please write "
    "short long helpful assistant user system model you are good bad better best cat dog red blue apple hammer"
).split()


def family_of(template: str) -> tuple[Family, bool]:
    r"""The family a template implies, and whether it is known (unknown templates get Llama)."""
    family = TEMPLATE_FAMILIES.get(template)
    return (family, True) if family is not None else (LLAMA, False)


def template_special_tokens(template_name: str) -> list[str]:
    r"""The special tokens that LLaMA-Factory's template ``template_name`` writes (slots, stop and thought words)."""
    from llamafactory.data.template import TEMPLATES

    template = TEMPLATES[template_name]
    texts: list[str] = [*template.stop_words, *(getattr(template, "thought_words", None) or ())]
    for name in ("format_user", "format_assistant", "format_system", "format_function", "format_observation",
                 "format_tools", "format_prefix"):  # fmt: skip
        formatter = getattr(template, name, None)
        for slot in getattr(formatter, "slots", None) or ():
            if isinstance(slot, str):
                texts.append(slot)
    tokens = [token for text in texts for token in SPECIAL_TOKEN.findall(text)]
    return list(dict.fromkeys(token for token in tokens if token))


def build_tokenizer(out_dir: str | Path, template: str, corpus: list[str] | None = None, vocab_size: int = 400):
    r"""A byte-level BPE tokenizer for ``template``'s family (rules in the module docstring), saved to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    family, _ = family_of(template)
    specials = [token for token in (family.bos, family.eos, family.pad) if token]
    extra = [token for token in template_special_tokens(template) if token not in specials]
    rng = random.Random(0)
    corpus = corpus or [" ".join(rng.choices(CORPUS_WORDS, k=12)) for _ in range(400)] + list(CORPUS_WORDS)

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials + extra,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        additional_special_tokens=extra,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 16,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def model_seed(name: str) -> int:
    r"""A seed from a model's original name: different names give different random weights."""
    return zlib.crc32(name.encode("utf-8")) % (2**31)


def _config(family: Family, tokenizer: Any, max_positions: int, **extra: Any):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        family.model_type,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_model(
    out_dir: str | Path, tokenizer_dir: str | Path, template: str, seed: int = 0, max_positions: int = 8192
) -> Path:
    r"""A random causal LM of ``template``'s family, sized to the tokenizer in ``tokenizer_dir``, saved with it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    family, _ = family_of(template)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, tokenizer, max_positions))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return Path(out_dir)


def build_reward_model(
    out_dir: str | Path, tokenizer_dir: str | Path, template: str, seed: int = 0, max_positions: int = 8192
) -> Path:
    r"""A random one-output sequence classifier (a reward model) of ``template``'s family."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    family, _ = family_of(template)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(_config(family, tokenizer, max_positions, num_labels=1))
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return Path(out_dir)


def build_lora_adapter(out_dir: str | Path, model_dir: str | Path, seed: int = 0) -> Path:
    r"""A rank-4 LoRA adapter on every linear layer of the model in ``model_dir`` (random, seeded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    peft_model.save_pretrained(str(out_dir))
    (Path(out_dir) / "tiny_base.json").write_text(json.dumps({"base": str(model_dir)}), encoding="utf-8")
    return Path(out_dir)
