"""LLaMA-Factory's own ``run_exp`` in the pytest process, leaving no state behind for the next test.

The plugin is active here as in any process of the environment: the ``.pth`` start-up hook installed its
finder when pytest started. A run changes process-wide state that the next test must not see: environment
variables (accelerate's and the trainer's), the logging set-up (LLaMA-Factory turns transformers' logging to
INFO with its own format), warning filters, the RNGs (``set_seed``), accelerate's shared state and, in a
distributed run, the process group. :func:`run_exp_in_process` records all of it first and puts it back,
whether the run succeeds or fails.
"""

import logging
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from .train import OFFLINE


# Loggers whose level, handlers and formats a run may change.
_LOGGERS = ("", "llamafactory", "transformers", "datasets", "accelerate", "trl", "torch", "deepspeed")
# Switches of the environment that would change what a run does, whatever the shell running pytest has set.
_UNSET = ("FORCE_TORCHRUN", "NPROC_PER_NODE", "ALLOW_EXTRA_ARGS", "USE_MCA", "USE_RAY", "LLAMABOARD_ENABLED")


@dataclass
class InProcessRun:
    r"""What a run did: the exception it raised (``None``: it finished), its log, the models it loaded."""

    error: BaseException | None
    log: str
    loaded_models: list[str] = field(default_factory=list)

    def error_text(self) -> str:
        return "" if self.error is None else f"{type(self.error).__name__}: {self.error}"

    def check(self) -> "InProcessRun":
        r"""This run, if it finished; otherwise its error raised again (with its traceback)."""
        if self.error is not None:
            raise self.error
        return self


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def plugin_is_active() -> bool:
    r"""Whether LLaMA-Factory's training parser, as imported here, has the plugin's arguments."""
    import llamafactory.hparams.parser as parser

    return any(cls.__module__ == "llamafactory_wspo.host.patches" for cls in parser._TRAIN_ARGS)


@contextmanager
def _restored_process_state() -> Iterator[None]:
    import numpy as np
    import torch
    from accelerate.state import AcceleratorState, GradientState, PartialState

    environ = dict(os.environ)
    loggers = {}
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        handlers = [(handler, handler.level, handler.formatter) for handler in logger.handlers]
        loggers[name] = (logger, logger.level, logger.propagate, logger.disabled, handlers)
    filters = warnings.filters[:]
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.get_num_threads())
    shared = {cls: dict(cls._shared_state) for cls in (PartialState, AcceleratorState, GradientState)}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for cls, state in shared.items():
            cls._shared_state.clear()
            cls._shared_state.update(state)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        torch.set_num_threads(rng[3])
        warnings.filters[:] = filters
        warnings._filters_mutated()  # as warnings.catch_warnings does: drop the cached "already warned" state
        for logger, level, propagate, disabled, handlers in loggers.values():
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
            for handler in logger.handlers[:]:
                logger.removeHandler(handler)
            for handler, handler_level, formatter in handlers:
                handler.setLevel(handler_level)
                handler.setFormatter(formatter)
                logger.addHandler(handler)
        os.environ.clear()
        os.environ.update(environ)


def run_exp_in_process(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> InProcessRun:
    r"""``llamafactory.train.tuner.run_exp(args=config)`` here, offline, catching what it raises.

    ``loaded_models`` names every model that ``from_pretrained`` loaded (the call is recorded, then done as
    usual); ``log`` is every message of LLaMA-Factory's, the plugin's and transformers' loggers.
    """
    import datasets.config
    import huggingface_hub.constants
    from transformers import PreTrainedModel

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    for key in _UNSET:
        monkeypatch.delenv(key, raising=False)
    # The libraries read the offline switches once, when they are imported.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)

    from llamafactory.train.tuner import run_exp

    assert plugin_is_active(), "the llamafactory_wspo start-up hook is not active in this pytest process"

    loaded: list[str] = []
    descriptor = PreTrainedModel.__dict__["from_pretrained"]

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        loaded.append(f"{cls.__name__}({pretrained_model_name_or_path})")
        return descriptor.__func__(cls, pretrained_model_name_or_path, *args, **kwargs)

    recorder = _Recorder()
    error = None
    with _restored_process_state():
        for name in ("llamafactory", "transformers"):
            logging.getLogger(name).addHandler(recorder)
        PreTrainedModel.from_pretrained = classmethod(from_pretrained)
        try:
            run_exp(args=dict(config))
        except Exception as exc:  # the error is the result; KeyboardInterrupt and the like pass through
            error = exc
        finally:
            PreTrainedModel.from_pretrained = descriptor

    return InProcessRun(error=error, log="\n".join(recorder.lines), loaded_models=loaded)
