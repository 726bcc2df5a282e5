"""What the plugin changes in LLaMA-Factory: the training parser, the tuner's stage dispatch, LLaMA-Board.

:mod:`llamafactory_wspo._autoload` calls :func:`on_import` right after LLaMA-Factory has executed one of the host
modules of the gate's areas (:mod:`.gate`):

* **training** (``hparams.parser``, ``train.tuner``): the training parser gets a ``FinetuningArguments`` that
  accepts the plugin stages and fields, and the tuner routes the plugin stages to their workflows;
* **LLaMA-Board** (``webui.control``, ``webui.components.train``, ``webui.runner``, ``webui.engine``): the
  plugin stages in the Train tab (:mod:`llamafactory_wspo.webui`).

Each module's points that the patch relies on are checked first (:mod:`.checks`); an area activates only once all
of its modules are checked and every check holds. A failed check is one warning when its module is imported. The
checks read modules that the host has imported already, and the source of one that it imports only when a stage
runs (the DPO trainer): milliseconds, and no import of their own.

The other touches on the host or its libraries live beside this module: :mod:`.dataset_pass` (the dataset
processor that cross-tokenizer WSPO wraps) and :mod:`.compat` (library shims).
"""

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..hparams import PLUGIN_STAGES, WPO_PREF_LOSSES, PluginArguments, PluginInputError, check_stage
from .checks import HostMismatch, check_parser, check_tuner, literal_choices
from .gate import LLAMABOARD, TRAINING, Area, requested_stage
from .packing import hide_neat_packing


_PATCHED_MARK = "_llamafactory_wspo_patched"
TRACEBACK_ENV = "LLAMAFACTORY_WSPO_TRACEBACK"  # set to 1: a PluginInputError ends with its traceback
USAGE_ERROR = 2


def on_import(module) -> None:
    r"""Check, then patch, the host module ``module`` that LLaMA-Factory has just executed."""
    if getattr(module, _PATCHED_MARK, False):
        return

    setattr(module, _PATCHED_MARK, True)
    name = module.__name__
    if name == "llamafactory.hparams.parser":
        install_excepthook()
        _check_and_patch(TRAINING, module, _check_parser, _patch_parser)
    elif name == "llamafactory.train.tuner":
        _check_and_patch(TRAINING, module, check_tuner, _patch_tuner)
    elif name in LLAMABOARD.modules:  # see webui/
        from .. import webui

        _check_and_patch(LLAMABOARD, module, webui.check, webui.patch)


def _check_parser(parser) -> None:
    check_parser(parser, {"stage": PLUGIN_STAGES, "pref_loss": ("kto",)})


def _check_and_patch(area: Area, module, check: Callable, patch: Callable) -> None:
    r"""Patch ``module`` where its checks hold; otherwise record the failure, warn once, and guard the parser."""
    name = module.__name__
    step = "check"
    try:
        check(module)
        step = "patch"
        activation = patch(module)
    except HostMismatch as exc:
        failure = str(exc)
    except Exception as exc:  # unforeseen: a fault of the plugin, named as such (Area.message), the area inactive
        failure = f"llamafactory-wspo's {step} of {name} raised {type(exc).__name__}: {' '.join(str(exc).split())}"
        area.raised.add(name)
    else:
        area.record(name, None, activation)
        return

    area.record(name, failure)
    if name == "llamafactory.hparams.parser":
        _guard_parser(module)
    area.warn(failure, raised=name in area.raised)


def build_finetuning_arguments(base: type) -> type:
    r"""LLaMA-Factory's ``FinetuningArguments`` with the plugin stages and fields added."""
    host_stages = literal_choices(base, "stage")
    host_pref_losses = literal_choices(base, "pref_loss")
    # `stage: wpo` takes TRL's per-pair losses beyond the host's, and `kto`: the choices of the command line
    # (argparse checks them; YAML's parse_dict does not), in the help's order, each once.
    pref_losses = tuple(dict.fromkeys(host_pref_losses + WPO_PREF_LOSSES + ("kto",)))

    @dataclass
    class FinetuningArguments(PluginArguments, base):
        stage: Literal[host_stages + PLUGIN_STAGES] = field(  # type: ignore[valid-type]
            default="sft",
            metadata={
                "help": "Which stage will be performed in training (`wspo`, `wpo`, `grpo` from llamafactory-wspo)."
            },
        )
        pref_loss: Literal[pref_losses] = field(  # type: ignore[valid-type]
            default="sigmoid",
            metadata={
                "help": "The type of DPO loss to use. `stage: wpo` weights any per-pair loss (WPO's Eq. (1)): "
                f"{', '.join(WPO_PREF_LOSSES)} (TRL's names); `kto` is its KTO form (Sec. 4.2)."
            },
        )

        pref_beta: float = field(
            default=0.1,
            metadata={
                "help": "The beta parameter in the preference loss. For `stage: wspo` it is gamma of the WSPO loss, "
                "the mean over response tokens of (gamma * (log pi_theta(y_t) - log pi_ref(y_t)) - w_t)^2 with "
                "w_t = log pi_w*(y_t) - log pi_w0(y_t): a smaller gamma amplifies the weak model's alignment (the "
                "authors use 0.1). For `stage: wpo` it is beta of `pref_loss` inside the WPO loss (0.01 in the "
                "paper's Sec. 4.1)."
            },
        )

        def __post_init__(self):
            base.__post_init__(self)
            self.check_plugin_args()

    FinetuningArguments.__module__ = __name__
    FinetuningArguments.__qualname__ = "FinetuningArguments"
    return FinetuningArguments


def install_excepthook() -> None:
    r"""A :class:`~llamafactory_wspo.hparams.PluginInputError` that ends the process (``llamafactory-cli train``, every
    ``torchrun`` rank) is one line on stderr, from local rank 0 only, and exit code 2; ``LLAMAFACTORY_WSPO_TRACEBACK=1``
    adds its traceback. Every other exception, and one caught by a caller (``smoke``, tests), is left as it is."""
    previous = sys.excepthook
    if getattr(previous, _PATCHED_MARK, False):
        return

    def excepthook(kind, value, traceback) -> None:
        if not isinstance(value, PluginInputError):
            return previous(kind, value, traceback)

        # The process's own stderr: torch.distributed's hook, which wraps this one once a process group exists,
        # collects what its inner hook writes to sys.stderr and prints it only after that hook returns.
        stderr, sys.stderr = sys.stderr, sys.__stderr__
        try:
            if os.getenv(TRACEBACK_ENV, "0").lower() in ("1", "true", "y"):
                previous(kind, value, traceback)
            elif os.getenv("LOCAL_RANK", "0") in ("", "0"):
                print(f"llamafactory-wspo: error: {' '.join(str(value).split())}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            sys.stderr = stderr
        os._exit(USAGE_ERROR)  # the interpreter would exit with 1 after any excepthook

    setattr(excepthook, _PATCHED_MARK, True)
    sys.excepthook = excepthook


def _host_stages(parser) -> tuple[str, ...] | None:
    try:
        return literal_choices(parser.FinetuningArguments, "stage")
    except (HostMismatch, AttributeError):
        return None


def _guard_parser(parser) -> None:
    r"""The requested stage, checked before the host parses: an unknown one (``WSPO``, ``wsp0``) is one error naming
    the stages; a plugin stage asked for while the training area is inactive stops here, with the one clear error."""
    original = getattr(parser, "_parse_train_args", None)
    if original is None:  # then the tuner's router reports it
        return

    read_args = getattr(parser, "read_args", lambda args: args)
    host_stages = _host_stages(parser)

    def _parse_train_args(args=None):
        try:
            stage = requested_stage(read_args(args))
        except Exception:  # the host reports its own argument errors
            stage = None

        if host_stages is not None and isinstance(stage, str):
            check_stage(stage, host_stages)
        if stage in PLUGIN_STAGES:
            TRAINING.require(stage, on_import)

        return hide_neat_packing(stage, original(args))

    parser._parse_train_args = _parse_train_args


def _patch_parser(parser) -> Callable[[], None]:
    r"""The guard now; once the tuner's checks hold too, the plugin's ``FinetuningArguments`` in the parser."""
    plugin_cls = build_finetuning_arguments(parser.FinetuningArguments)
    _guard_parser(parser)

    def activate() -> None:
        train_args = parser._TRAIN_ARGS
        train_args[:] = [plugin_cls if cls is parser.FinetuningArguments else cls for cls in train_args]

    return activate


def _patch_tuner(tuner) -> None:
    r"""Route the plugin stages to :func:`_plugin_training_function`; every other stage runs the host's own."""
    original = tuner._training_function

    def _training_function(config: dict[str, Any]) -> None:
        stage = requested_stage(config.get("args"))
        if stage in PLUGIN_STAGES:
            TRAINING.require(stage, on_import)
            return _plugin_training_function(tuner, config)

        return original(config)

    tuner._training_function = _training_function


def _plugin_training_function(tuner, config: dict[str, Any]) -> None:
    r"""The plugin-stage branch of ``llamafactory.train.tuner._training_function``.

    The callbacks are the ones the host adds for its own stages, so logging, LLaMA-Board progress,
    early stopping and profiling behave the same. The host builds them inline, before its stage chain, so
    they cannot be called from here: the block is a copy, pinned by ``tests/test_host_patches.py`` to the
    host's source so that a change there fails the test suite instead of drifting silently.

    Unlike the host, the run ends with :func:`~llamafactory_wspo.train.teardown.teardown_distributed`: the
    stage's objects are freed, every rank waits for the others (rank 0 may still be saving the model), and
    every process group is destroyed, with the references DeepSpeed keeps to them, while the interpreter is
    alive. A Gloo group left to interpreter exit has aborted a rank after a successful run (SIGABRT, so
    ``torchrun`` exits 1). This only concerns plugin stages; the host's stages keep its own teardown.
    """
    callbacks: list[Any] = config.get("callbacks")
    model_args, data_args, training_args, finetuning_args, generating_args = tuner.get_train_args(config.get("args"))

    callbacks.append(tuner.LogCallback())
    if finetuning_args.pissa_convert:
        callbacks.append(tuner.PissaConvertCallback())

    if finetuning_args.use_swanlab:
        callbacks.append(tuner.get_swanlab_callback(finetuning_args))

    if finetuning_args.early_stopping_steps is not None:
        callbacks.append(tuner.EarlyStoppingCallback(early_stopping_patience=finetuning_args.early_stopping_steps))

    if getattr(training_args, "enable_torch_profiler", False):
        callbacks.append(tuner.TorchProfilerCallback(training_args))

    if getattr(training_args, "profile_modules", None):
        callbacks.append(tuner.ModuleProfilerCallback(training_args.profile_modules))

    callbacks.append(tuner.ReporterCallback(model_args, data_args, finetuning_args, generating_args))

    from .compat import fix_trl_availability_flags

    fix_trl_availability_flags()  # before any stage imports a TRL trainer module (see the shim's docstring)
    if finetuning_args.stage == "wspo":
        from ..train.wspo import run_wspo

        run_wspo(model_args, data_args, training_args, finetuning_args, callbacks)
    elif finetuning_args.stage == "wpo":
        from ..train.wpo import run_wpo

        run_wpo(model_args, data_args, training_args, finetuning_args, callbacks)
    elif finetuning_args.stage == "grpo":
        from ..train.grpo import run_grpo

        run_grpo(model_args, data_args, training_args, finetuning_args, callbacks)
    else:  # pragma: no cover - guarded by requested_stage
        raise ValueError(f"Unknown plugin stage: {finetuning_args.stage}.")

    if tuner.is_ray_available() and tuner.ray.is_initialized():
        return

    if tuner.dist.is_initialized():
        from ..train.teardown import teardown_distributed

        teardown_distributed(warn=tuner.logger.warning)
