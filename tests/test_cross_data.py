"""The weak side of cross-tokenizer WSPO rows (llamafactory_wspo/data/cross.py), made by LLaMA-Factory's own
processors and templates with tiny tokenizers of three kinds built offline.

Each weak response token gets a value (a multiple of 2**-10, so sums are exact); the projected values are then
checked against what the templates fix independently of any offset: per labelled turn, the content of one side
carries the content of the other, and the strong end-of-turn token carries the weak suffix.
"""

import inspect
import random

import pytest
from helpers.tiny_tokenizers import KINDS, build_tokenizer, random_text, random_texts
from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.data.processor import PairwiseDatasetProcessor, SupervisedDatasetProcessor
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.hparams import DataArguments

from llamafactory_wspo.data.weak_side import (
    COUNT_COLUMNS,
    CrossTokenizerDatasetProcessor,
    kept_positions,
    labelled_runs,
    weak_data_args,
    weak_side_in_dataset_pass,
)
from llamafactory_wspo.projection import UNMATCHED, project_values
from llamafactory_wspo.vocab import build_weak_side


END_OF_TURN = {"qwen": "<|im_end|>", "llama3": "<|eot_id|>", "gemma2": "<end_of_turn>"}


@pytest.fixture(scope="module")
def corpus():
    return random_texts(300, seed=1)


def _side(kind: str, template_name: str, corpus, cutoff_len: int = 100_000):
    tokenizer = build_tokenizer(kind, corpus)
    data_args = DataArguments(template=template_name, cutoff_len=cutoff_len)
    return tokenizer, get_template_and_fix_tokenizer(tokenizer, data_args), data_args


def _processor(strong, weak, pairwise: bool = False) -> CrossTokenizerDatasetProcessor:
    cls = PairwiseDatasetProcessor if pairwise else SupervisedDatasetProcessor
    (s_tok, s_tpl, s_args), (w_tok, w_tpl, w_args) = strong, weak
    w_args.cutoff_len = 2**40  # as weak_data_args sets it: the weak side is not truncated
    return CrossTokenizerDatasetProcessor(
        template=s_tpl,
        tokenizer=s_tok,
        processor=None,
        data_args=s_args,
        strong=cls(template=s_tpl, tokenizer=s_tok, processor=None, data_args=s_args),
        weak=cls(template=w_tpl, tokenizer=w_tok, processor=None, data_args=w_args),
    )


def _rows(conversations: list[list[str]], pairwise: bool = False) -> dict[str, list]:
    r"""Converted rows as LLaMA-Factory's converter makes them: user, assistant, ...; the last is the response."""
    batch = {key: [] for key in ("_prompt", "_response", "_system", "_tools", "_images", "_videos", "_audios")}
    for texts in conversations:
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
        if pairwise:
            prompt, response = messages[:-1], [messages[-1], {"role": "assistant", "content": texts[-1] + " more"}]
        else:
            prompt, response = messages[:-1], messages[-1:]
        for key, value in zip(batch, (prompt, response, "", "", None, None, None)):
            batch[key].append(value)
    return batch


def _conversation(rng: random.Random, turns: int) -> list[str]:
    return [random_text(rng, 12).strip() or "x" for _ in range(2 * turns)]


def _response_positions(labels: list[int]) -> list[int]:
    return [p for p in range(1, len(labels)) if labels[p] != IGNORE_INDEX]


@pytest.mark.parametrize(
    ("strong_kind", "strong_template", "weak_kind", "weak_template"),
    [
        ("sentencepiece", "qwen", "byte_bpe", "llama3"),
        ("byte_bpe", "llama3", "sentencepiece", "qwen"),
        ("word", "qwen", "byte_bpe", "llama3"),
        ("byte_bpe", "qwen", "word", "llama3"),
        ("byte_bpe", "gemma2", "sentencepiece", "llama3"),  # efficient_eos: the processor adds EOS after each turn
    ],
)
def test_turns_keep_their_content_and_suffix(corpus, strong_kind, strong_template, weak_kind, weak_template):
    r"""Multi-turn rows (every assistant turn labelled): per turn, the strong content tokens carry exactly the
    weak content tokens' values and the strong end-of-turn token exactly the weak suffix's; nothing is unmatched."""
    strong = _side(strong_kind, strong_template, corpus)
    weak = _side(weak_kind, weak_template, corpus)
    rng = random.Random(0)
    rows = _rows([_conversation(rng, rng.randint(1, 4)) for _ in range(25)])
    out = _processor(strong, weak).preprocess_dataset(rows)
    assert len(out["input_ids"]) == 25  # no row dropped
    strong_eot = strong[0].convert_tokens_to_ids(END_OF_TURN[strong_template])
    weak_eot = weak[0].convert_tokens_to_ids(END_OF_TURN[weak_template])
    for i in range(25):
        labels, weak_labels, projection = out["labels"][i], out["weak_labels"][i], out["weak_projection"][i]
        assert out["weak_unmatched"][i] == 0 and out["weak_truncated"][i] == 0
        assert UNMATCHED not in projection
        weak_positions, strong_positions = _response_positions(weak_labels), _response_positions(labels)
        assert len(projection) == len(weak_positions)
        values = [rng.randint(-4096, 4096) / 1024 for _ in weak_positions]
        projected, _ = project_values(values, projection, len(strong_positions))
        by_position = dict(zip(strong_positions, projected))
        weak_value = dict(zip(weak_positions, values))

        strong_runs, weak_runs = labelled_runs(labels), labelled_runs(weak_labels)
        num_turns = (len(rows["_prompt"][i]) + 1) // 2
        assert len(strong_runs) == len(weak_runs) == num_turns
        for (s_start, s_end), (w_start, w_end) in zip(strong_runs, weak_runs):
            s_eot = next(p for p in range(s_start, s_end) if labels[p] == strong_eot)
            w_eot = next(p for p in range(w_start, w_end) if weak_labels[p] == weak_eot)
            strong_content = sum(by_position[p] for p in range(s_start, s_eot))
            weak_content = sum(weak_value[p] for p in range(w_start, w_eot))
            assert strong_content == weak_content
            assert by_position[s_eot] == sum(weak_value[p] for p in range(w_eot, w_end))
            assert all(by_position[p] == 0 for p in range(s_eot + 1, s_end))  # e.g. qwen's "\n" after <|im_end|>


def test_kept_positions_of_a_cut_turn():
    turn = [5, 6, 7, 8, 2]  # ... 8 is the end-of-turn token, 2 the EOS an efficient_eos template adds
    assert kept_positions([5, 6, 7, 8, 2], turn, eos_id=2) == [0, 1, 2, 3, 4]
    assert kept_positions([5, 6], turn, eos_id=None) == [0, 1]  # cutoff_len keeps the beginning
    assert kept_positions([5, 6, 2], turn, eos_id=2) == [0, 1, 4]  # ... and the processor still adds EOS
    assert kept_positions([2], turn, eos_id=2) == [4]
    assert kept_positions([5, 7], turn, eos_id=2) is None  # not this turn
    assert kept_positions([5, 6, 2], turn, eos_id=None) is None


@pytest.mark.parametrize("kind", KINDS)
def test_identity_same_tokenizer_and_template(corpus, kind):
    side = _side(kind, "qwen", corpus, cutoff_len=60)
    rng = random.Random(1)
    rows = _rows([_conversation(rng, rng.randint(1, 3)) for _ in range(20)])
    out = _processor(side, side).preprocess_dataset(rows)
    for i in range(len(out["input_ids"])):
        assert out["weak_input_ids"][i] == out["input_ids"][i][: len(out["weak_input_ids"][i])]
        assert out["weak_labels"][i] == out["labels"][i][: len(out["weak_labels"][i])]
        assert out["weak_projection"][i] == list(range(len(_response_positions(out["labels"][i]))))


@pytest.mark.parametrize("strong_template", ["qwen", "gemma2"])
def test_truncation_drops_what_the_strong_side_cut(corpus, strong_template):
    r"""``cutoff_len`` cuts the strong side: the weak tokens that go to cut strong tokens are dropped (counted as
    truncated), the others keep the destinations they have without the cut. (gemma2 is an ``efficient_eos``
    template: the processor adds EOS after a cut turn too.)"""
    weak = _side("byte_bpe", "llama3", corpus)
    rng = random.Random(2)
    rows = _rows([_conversation(rng, 3) for _ in range(20)])
    full = _processor(_side("sentencepiece", strong_template, corpus), weak).preprocess_dataset(rows)
    strong = _side("sentencepiece", strong_template, corpus, cutoff_len=48)
    cut = _processor(strong, weak).preprocess_dataset(rows)
    assert len(cut["input_ids"]) == len(full["input_ids"]) == 20
    assert sum(cut["weak_truncated"]) > 0
    eos = [strong[0].eos_token_id] if strong_template == "gemma2" else []
    num_closed = 0
    for i in range(20):
        cut_ids = [cut["labels"][i][p] for p in _response_positions(cut["labels"][i])]
        full_ids = [full["labels"][i][p] for p in _response_positions(full["labels"][i])]
        kept = len(cut_ids)
        closed = bool(eos) and cut_ids != full_ids[:kept]  # a cut turn, closed by the EOS that the processor adds
        num_closed += closed
        if closed:
            assert cut_ids[-1:] == eos and cut_ids[:-1] == full_ids[: kept - 1]
        else:
            assert cut_ids == full_ids[:kept]  # the strong side keeps the beginning of its responses
        projection = cut["weak_projection"][i]
        assert projection == full["weak_projection"][i][: len(projection)]  # the kept weak tokens come first
        assert all(dest < kept for dest in projection)
        assert len(projection) + cut["weak_truncated"][i] == len(full["weak_projection"][i])
        assert all(dest >= kept - closed for dest in full["weak_projection"][i][len(projection) :])
        # the weak sequence ends at its last scored token, never before what the strong side keeps
        assert cut["weak_labels"][i][-1] != IGNORE_INDEX or not projection

    assert num_closed > 0 or not eos


def test_prefix_is_not_scored(corpus):
    r"""mistral renders the assistant turn as `` {{content}}``: before a digit, a byte-level tokenizer makes the space
    its own token, which is the template's prefix, scored on neither side."""
    strong = _side("byte_bpe", "mistral", corpus)
    weak = _side("byte_bpe", "llama3", corpus)
    rows = _rows([["list some animals", "42 cats"]])  # the split pattern keeps " " and "4" apart
    host = SupervisedDatasetProcessor(template=strong[1], tokenizer=strong[0], processor=None, data_args=strong[2])
    labels = host.preprocess_dataset(rows)["labels"][0]
    out = _processor(strong, weak).preprocess_dataset(rows)
    space = strong[0].convert_tokens_to_ids("Ġ")
    first = _response_positions(labels)[0]
    assert labels[first] == space  # the host labels the prefix ...
    assert out["labels"][0][first] == IGNORE_INDEX  # ... cross-tokenizer WSPO does not score it
    assert out["labels"][0][first + 1 :] == labels[first + 1 :]

    # the other way round: the weak prefix token is not scored, the weak content still all arrives
    out = _processor(weak, strong).preprocess_dataset(rows)
    assert space not in [out["weak_input_ids"][0][p] for p in _response_positions(out["weak_labels"][0])]


def test_pairwise_rows_and_dropped_rows(corpus):
    strong = _side("word", "qwen", corpus)
    weak = _side("sentencepiece", "llama3", corpus)
    rng = random.Random(3)
    rows = _rows([_conversation(rng, 1) for _ in range(6)], pairwise=True)
    rows["_prompt"][2] = rows["_prompt"][2] * 2  # an even number of prompt messages: the host drops the row
    out = _processor(strong, weak, pairwise=True).preprocess_dataset(rows)
    assert len(out["chosen_input_ids"]) == 5
    for prefix in ("chosen_", "rejected_"):
        for i in range(5):
            strong_tokens = len(_response_positions(out[f"{prefix}labels"][i]))
            weak_tokens = len(_response_positions(out[f"{prefix}weak_labels"][i]))
            projection = out[f"{prefix}weak_projection"][i]
            assert len(projection) == weak_tokens
            assert projection == sorted(projection) and 0 <= projection[0] and projection[-1] == strong_tokens - 1
    assert set(COUNT_COLUMNS) <= {name.removeprefix("chosen_") for name in out}


def test_the_host_call_that_the_dataset_pass_wraps(corpus):
    r"""LLaMA-Factory builds its processor through ``loader._get_dataset_processor`` with the arguments that
    :func:`weak_side_in_dataset_pass` passes on; within the block that name gives the cross processor."""
    from llamafactory.data import loader

    from llamafactory_wspo.data.weak_side import WeakSide

    source = inspect.getsource(loader._get_preprocessed_dataset)
    assert "dataset_processor = _get_dataset_processor(" in source
    params = list(inspect.signature(loader._get_dataset_processor).parameters)
    assert params == ["data_args", "stage", "template", "tokenizer", "processor", "do_generate"]

    strong = _side("word", "qwen", corpus)
    weak_tok, weak_tpl, _ = _side("byte_bpe", "llama3", corpus)
    original = loader._get_dataset_processor
    with weak_side_in_dataset_pass(WeakSide(weak_tok, weak_tpl, "llama3", "weak"), strong[2]):
        proc = loader._get_dataset_processor(strong[2], "sft", strong[1], strong[0], None)
    assert loader._get_dataset_processor is original
    assert isinstance(proc, CrossTokenizerDatasetProcessor)
    assert (
        proc.weak.data_args.cutoff_len == weak_data_args(strong[2], WeakSide(weak_tok, weak_tpl, "l", "w")).cutoff_len
    )
    assert proc.weak.template is weak_tpl and proc.strong.template is strong[1]


@pytest.mark.parametrize(
    ("weak_template", "missing"),
    [
        ("mistral", "[INST], [/INST]"),  # written as text by the template: not tokens of this tokenizer
        ("gemma", "<end_of_turn>, <start_of_turn>"),  # its EOS (a stop word), then a marker
        ("phi", "<|end|>, <|system|>, <|user|>, <|assistant|>"),
    ],
)
def test_weak_template_of_another_family(corpus, weak_template, missing):
    r"""An existing template whose special tokens the weak tokenizer (qwen's and llama3's tokens) lacks is refused,
    naming them, before LLaMA-Factory's template adds its stop words to that tokenizer."""
    strong = _side("word", "qwen", corpus)
    weak = build_tokenizer("byte_bpe", corpus)
    vocabulary = weak.get_vocab()
    with pytest.raises(ValueError) as raised:
        build_weak_side(weak, strong[0], strong[2], weak_template, "weak/llama3-like", "strong")
    message = str(raised.value)
    assert message.startswith(f"`weak_template: {weak_template}` is not the chat template of the weak models' family")
    assert f"the weak tokenizer (weak/llama3-like) lacks its special tokens {missing} (" in message
    assert "e.g. llama3 or qwen (whose tokens it has)" in message and "\n" not in message
    assert weak.get_vocab() == vocabulary  # checked as loaded: nothing was added


def test_weak_template_whose_family_writes_its_markers_as_text(corpus):
    r"""Llama-2's and Mistral-v0.1's ``[INST]`` is plain text of their tokenizers, written by their own chat template:
    accepted there; the same tokenizer without that chat template is refused."""
    strong = _side("word", "qwen", corpus)
    weak = build_tokenizer("byte_bpe", corpus)
    weak.chat_template = "{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}"
    side = build_weak_side(weak, strong[0], strong[2], "llama2", "weak", "strong")
    assert side.template_name == "llama2"
    weak.chat_template = None
    with pytest.raises(ValueError, match=r"lacks its special tokens \[INST\], \[/INST\]"):
        build_weak_side(weak, strong[0], strong[2], "llama2", "weak", "strong")


@pytest.fixture(scope="module")
def weak_family(assets, tmp_path_factory):
    from helpers.cross import build_cross_assets

    return build_cross_assets(assets, tmp_path_factory.mktemp("cross"))


def test_weak_template_of_another_family_stops_the_run(assets, weak_family, tmp_path, run_in_process):
    r"""Through ``run_exp``: one error naming ``weak_template`` and the missing tokens, before any model loads."""
    from pathlib import Path

    from helpers.train import wspo_config

    weak = {
        key: str(weak_family / name)
        for key, name in (("weak_base_model", "weak"), ("weak_aligned_model", "weak_aligned"))
    }
    config = wspo_config(assets, tmp_path, weak_template="mistral", **weak)
    run = run_in_process(config)
    assert "`weak_template: mistral` is not the chat template of the weak models' family" in str(run.error), run.log
    assert "lacks its special tokens [INST], [/INST]" in str(run.error)
    assert run.loaded_models == [] and "loading weights file" not in run.log
    assert not Path(config["output_dir"]).exists() and not Path(config["logps_cache_dir"]).exists()
