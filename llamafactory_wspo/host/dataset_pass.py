"""The one host function that the plugin wraps while LLaMA-Factory builds a data set: its choice of processor.

LLaMA-Factory's ``get_dataset`` picks the processor that maps each batch of converted rows with
``llamafactory.data.loader._get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate)``
(the tuner's check names it, and ``tests/test_cross_data.py`` pins the host's call). Cross-tokenizer WSPO wraps it
for one ``get_dataset`` call (:func:`llamafactory_wspo.data.weak_side.weak_side_in_dataset_pass`), so that the
weak side of every row is made in the host's own pass: nothing of its loading, conversion, splitting or caching is
copied.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def dataset_processor_wrapped(wrap: Callable[..., Any]) -> Iterator[None]:
    r"""Within this block, the host's processor choice returns ``wrap(original, data_args, stage, template, tokenizer,
    processor, do_generate)``; the host's own function is restored afterwards, whatever happens."""
    from llamafactory.data import loader

    original = loader._get_dataset_processor

    def _get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate=False):
        return wrap(original, data_args, stage, template, tokenizer, processor, do_generate)

    loader._get_dataset_processor = _get_dataset_processor
    try:
        yield
    finally:
        loader._get_dataset_processor = original
