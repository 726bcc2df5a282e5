"""The tokenizers of the frozen models: the cross-tokenizer decision and every check of a vocabulary, an embedding
size or a weak template, all made before any model loads.

* :func:`check_vocabularies`: a frozen model that scores the strong token ids (the reference, the weak models of a
  same-tokenizer run) has the strong model's vocabulary;
* :func:`weak_tokenizer`: whether a WSPO run is cross-tokenizer (the weak models' vocabulary or ``weak_template``
  differs from the strong side's), and then the weak models' shared tokenizer;
* :func:`cross_tokenizer_side`: the weak side of a cross-tokenizer run
  (:class:`~llamafactory_wspo.data.weak_side.WeakSide`), after the checks that can refuse it: offsets on both tokenizers, no packing, a known template of the weak models'
  family (:func:`check_weak_template`);
* :func:`check_embedding_sizes`: every frozen model has an embedding row for each token id of the data.
"""

import copy
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .data.weak_side import WeakSide
from .frozen import FrozenModel, FrozenModels
from .host.compat import auto_class_registrations_kept
from .hparams import PluginInputError, unknown_template_message
from .logging import get_logger


if TYPE_CHECKING:
    from llamafactory.data import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import PreTrainedTokenizer

    from .hparams import WSPOArguments


logger = get_logger(__name__)


# A special-looking marker of a chat template: <|im_start|>, <｜User｜>, <start_of_turn>, [INST], [gMASK].
SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]+\|>|<｜[^｜]+｜>|</?[a-z_]+>|\[/?[A-Z_]+\]|\[gMASK\]")


def _load_vocab(model: FrozenModel) -> tuple["PreTrainedTokenizer", dict[str, int]]:
    try:
        tokenizer = model.load_tokenizer()
    except Exception as err:
        raise PluginInputError(
            f"`{model.key}` ({model.name_or_path}) has no tokenizer that can be loaded: {err}"
        ) from err

    return tokenizer, tokenizer.get_vocab()


def _differing_entries(vocab: dict[str, int], other: dict[str, int]) -> str:
    differing = sorted(set(vocab.items()) ^ set(other.items()), key=lambda item: item[1])
    return f"{len(other)} vs {len(vocab)} tokens; differing entries e.g. " + ", ".join(
        f"{token!r}->{idx}" for token, idx in differing[:3]
    )


def check_vocabularies(tokenizer: "PreTrainedTokenizer", models: Iterable[FrozenModel], strong_name: str) -> None:
    r"""Frozen models score the policy's token ids, so every tokenizer must map text to the same ids."""
    strong_vocab = tokenizer.get_vocab()
    for model in models:
        if model.key == "model_name_or_path":
            continue

        _, other_vocab = _load_vocab(model)
        if other_vocab != strong_vocab:
            raise PluginInputError(
                f"`{model.key}` ({model.name_or_path}) and `model_name_or_path` ({strong_name}) have different "
                f"vocabularies ({_differing_entries(strong_vocab, other_vocab)}). "
                "Both models score the same token ids: use models that share one tokenizer "
                "(e.g. Qwen2-1.5B with Qwen2-7B)."
            )


def weak_tokenizer(
    tokenizer: "PreTrainedTokenizer",
    models: FrozenModels,
    strong_name: str,
    template: str | None,
    weak_template: str | None,
) -> "PreTrainedTokenizer | None":
    r"""The weak models' tokenizer if this WSPO run is cross-tokenizer, else ``None`` (the weak models score the
    strong token ids).

    Cross-tokenizer WSPO (:mod:`llamafactory_wspo.projection`) switches on when the weak models' vocabulary differs
    from the strong model's, or when ``weak_template`` names another template than ``template``. The reference
    always scores the strong ids (same vocabulary), both weak models share one tokenizer (their shift compares
    log-probs of the same ids), and different vocabularies need ``weak_template``: the strong template would add
    its stop words to the weak tokenizer, giving ids past the weak embedding.
    """
    check_vocabularies(tokenizer, [models.ref], strong_name)
    strong_vocab = tokenizer.get_vocab()
    base, base_vocab = _load_vocab(models.weak_base)
    if base_vocab != strong_vocab and not weak_template:
        raise PluginInputError(
            f"`weak_base_model` ({models.weak_base.name_or_path}) and `model_name_or_path` ({strong_name}) have "
            f"different vocabularies ({_differing_entries(strong_vocab, base_vocab)}). Cross-tokenizer WSPO needs "
            "`weak_template`, the chat template of the weak models' family (e.g. `llama3` for a Llama-3 weak model): "
            f"the strong template `{template}` would add its stop words to the weak tokenizer, giving token ids past "
            "the weak models' embedding."
        )

    _, aligned_vocab = _load_vocab(models.weak_aligned)
    if aligned_vocab != base_vocab:
        raise PluginInputError(
            f"`weak_aligned_model` ({models.weak_aligned.name_or_path}) and `weak_base_model` "
            f"({models.weak_base.name_or_path}) have different vocabularies "
            f"({_differing_entries(base_vocab, aligned_vocab)}). Both weak models must share one tokenizer: the weak "
            "shift log pi_w*(y_t) - log pi_w0(y_t) compares their log-probs of the same token ids. Use the weak model "
            "before and after its alignment."
        )

    if base_vocab == strong_vocab and (not weak_template or weak_template == template):
        return None

    return base


def check_embedding_sizes(
    models: Iterable[FrozenModel], max_token_id: int, tokenizer_size: int, tokenizer_key: str = "model_name_or_path"
) -> None:
    r"""Every frozen model must have an embedding row for each token id of the data (read from configs, no weights).

    A model with fewer rows than the strong tokenizer's ids fails with an ``IndexError`` deep inside its forward
    pass otherwise, after minutes of loading. The policy's own checkpoint is LLaMA-Factory's (``resize_vocab``).
    """
    from llamafactory.model.loader import load_config

    for model in models:
        if model.key == "model_name_or_path" or model.model_args.resize_vocab:
            continue

        with auto_class_registrations_kept():
            config = load_config(model.model_args)
        rows = getattr(config.get_text_config(), "vocab_size", None)
        if rows is not None and max_token_id >= rows:
            raise PluginInputError(
                f"`{model.key}` ({model.name_or_path}) has an embedding of {rows} rows, but the data holds token id "
                f"{max_token_id} (the tokenizer of `{tokenizer_key}` has {tokenizer_size} tokens): it cannot score "
                f"these ids. Use a `{model.key}` whose embedding covers the tokenizer of `{tokenizer_key}`."
            )


def _check_offsets(tokenizer: "PreTrainedTokenizer", key: str, name: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        fix = (
            "set `use_fast_tokenizer: true`" if key == "model_name_or_path" else "use a model with a `tokenizer.json`"
        )
        raise PluginInputError(
            f"`{key}` ({name}) has a tokenizer without offset mappings ({type(tokenizer).__name__}, not a fast "
            "tokenizer): cross-tokenizer WSPO moves the weak shift onto the strong tokens by the byte offsets of "
            f"each token. Use a fast tokenizer ({fix})."
        )


def template_tokens(template: "Template") -> tuple[list[str], list[str]]:
    r"""``(required, written)``: the tokens of ``template`` that a tokenizer must have, in a plain conversation.

    ``required``: the tokens that the rendering uses by id, which LLaMA-Factory's template adds to a tokenizer that
    lacks them (a new id, past the model's embedding): the slots' ``{"token": ...}``, the stop word that replaces the
    EOS (``replace_eos``) and every stop word that the slots write. ``written``: the other special-looking markers
    (``<|start_header_id|>``, ``[INST]``, ...) in the slots of the prefix, system, user and assistant messages (and
    the thought words of a reasoning template), which some families write as plain text (Llama-2's ``[INST]``,
    Zephyr's ``<|user|>``). Left out: stop words that are never written (they only stop generation; Llama-3.0 lacks
    the ``<|eom_id|>`` that ``llama3`` lists), and tool-call formats (they render only with tools).
    """
    from llamafactory.data import Template

    required = [template.stop_words[0]] if template.replace_eos and template.stop_words else []
    reasoning = type(template).encode_oneturn is not Template.encode_oneturn  # LLaMA-Factory's ReasoningTemplate
    texts = [*template.thought_words] if reasoning else []
    for name in ("format_prefix", "format_system", "format_user", "format_assistant"):
        for slot in getattr(getattr(template, name, None), "slots", None) or ():
            if isinstance(slot, str):
                texts.append(slot)
            elif isinstance(slot, dict) and slot.get("token"):
                required.append(slot["token"])

    required += [word for word in template.stop_words if any(word in text for text in texts)]
    required = list(dict.fromkeys(required))
    written = [token for text in texts for token in SPECIAL_TOKEN.findall(text) if token not in required]
    return required, list(dict.fromkeys(written))


def _is_token(tokenizer: "PreTrainedTokenizer", token: str) -> bool:
    r"""Whether ``token`` is one token of ``tokenizer``'s vocabulary, and the one that its text encodes to."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
        return False
    return tokenizer.encode(token, add_special_tokens=False) == [token_id]


def missing_template_tokens(tokenizer: "PreTrainedTokenizer", template: "Template") -> list[str]:
    r"""The tokens of ``template`` (:func:`template_tokens`) that ``tokenizer``, as loaded, does not have.

    A required token must be one token; a written marker must be one token too, or appear in the tokenizer's own
    chat template (its family writes it as text). Call it before LLaMA-Factory fixes the tokenizer: the fix adds
    the stop words that it lacks.
    """
    required, written = template_tokens(template)
    chat_template = tokenizer.chat_template or ""
    if isinstance(chat_template, dict):  # several named chat templates
        chat_template = "\n".join(chat_template.values())
    return [token for token in required if not _is_token(tokenizer, token)] + [
        token for token in written if token not in chat_template and not _is_token(tokenizer, token)
    ]


# Templates of common families, offered when `weak_template` does not fit (those whose tokens the tokenizer has).
COMMON_TEMPLATES = ("llama3", "qwen", "qwen3", "gemma", "gemma2", "mistral", "llama2", "zephyr", "phi", "deepseek3")


def templates_of_tokenizer(tokenizer: "PreTrainedTokenizer", templates: dict[str, "Template"]) -> list[str]:
    r"""The common templates (:data:`COMMON_TEMPLATES`) whose every token ``tokenizer`` has."""
    return [
        name
        for name in COMMON_TEMPLATES
        if name in templates and not missing_template_tokens(tokenizer, templates[name])
    ]


def check_weak_template(
    weak_tokenizer: "PreTrainedTokenizer", weak_template: str, weak_name: str, templates: dict[str, "Template"]
) -> None:
    r"""``weak_template`` must be of the weak models' family: its tokens exist in the weak tokenizer as loaded.

    An existing template of another family (``mistral`` for a Llama-3 weak model) would otherwise render the weak
    side with markers that the weak models never saw, split into pieces, or with stop words added past their
    embedding, and train on that silently.
    """
    missing = missing_template_tokens(weak_tokenizer, templates[weak_template])
    if missing:
        fitting = [name for name in templates_of_tokenizer(weak_tokenizer, templates) if name != weak_template]
        hint = f", e.g. {' or '.join(fitting[:3])} (whose tokens it has)" if fitting else ""
        raise PluginInputError(
            f"`weak_template: {weak_template}` is not the chat template of the weak models' family: the weak "
            f"tokenizer ({weak_name}) lacks its special tokens {', '.join(missing)} (not single tokens of its "
            "vocabulary, nor written by its own chat template), so the weak models would score a rendering they "
            f"never saw. Set `weak_template` to the template of the weak models' family{hint}."
        )


def build_weak_side(
    weak_tokenizer: "PreTrainedTokenizer",
    tokenizer: "PreTrainedTokenizer",
    data_args: "DataArguments",
    weak_template: str,
    weak_name: str,
    strong_name: str,
) -> WeakSide:
    r"""Check what cross-tokenizer WSPO needs (offsets on both sides, no packing, a known template of the weak models'
    family), then load the weak template (LLaMA-Factory's, fixing the weak tokenizer as the host fixes the strong
    one) and log the mode."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.data.template import TEMPLATES

    if weak_template not in TEMPLATES:
        raise PluginInputError(unknown_template_message(weak_template, TEMPLATES))

    if data_args.packing:
        raise PluginInputError(
            "`packing` is not supported by cross-tokenizer WSPO: a packed row would mix examples whose weak "
            "renderings differ in length. Remove `packing` (or set it to false)."
        )

    _check_offsets(tokenizer, "model_name_or_path", strong_name)
    _check_offsets(weak_tokenizer, "weak_base_model", weak_name)
    check_weak_template(weak_tokenizer, weak_template, weak_name, TEMPLATES)  # before the template fixes it
    args = copy.copy(data_args)
    args.template = weak_template
    template = get_template_and_fix_tokenizer(weak_tokenizer, args)
    logger.info_rank0(
        f"Cross-tokenizer WSPO: strong tokenizer {strong_name} ({len(tokenizer)} tokens, template "
        f"`{data_args.template}`), weak tokenizer {weak_name} ({len(weak_tokenizer)} tokens, template "
        f"`{weak_template}`); the weak shift is moved onto the strong tokens by UTF-8 byte offsets."
    )
    return WeakSide(weak_tokenizer, template, weak_template, weak_name)


def cross_tokenizer_side(
    tokenizer: "PreTrainedTokenizer",
    models: "FrozenModels",
    model_args: "ModelArguments",
    data_args: "DataArguments",
    finetuning_args: "WSPOArguments",
) -> WeakSide | None:
    r"""The weak side of a WSPO run if it is cross-tokenizer (:func:`weak_tokenizer`),
    else ``None``; every check that can refuse the run comes here, before any model loads."""
    weak = weak_tokenizer(
        tokenizer, models, model_args.model_name_or_path, data_args.template, finetuning_args.weak_template
    )
    if weak is None:
        return None

    return build_weak_side(
        weak,
        tokenizer,
        data_args,
        finetuning_args.weak_template,
        models.weak_base.name_or_path,
        model_args.model_name_or_path,
    )
