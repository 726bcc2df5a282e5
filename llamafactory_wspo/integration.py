"""Every touch on LLaMA-Factory, in one place, behind one version gate.

:mod:`llamafactory_wspo._autoload` calls :func:`on_import` right after LLaMA-Factory has executed one
of its target modules. On a supported release this

* swaps ``FinetuningArguments`` in the training parser for a subclass that accepts the plugin stages
  and the plugin's fields (``hparams.parser``), and
* routes the plugin stages to their workflows (``train.tuner``).

On any other release nothing is patched, except a guard that refuses a plugin stage with one clear
error naming the supported range.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from .hparams import PLUGIN_STAGES, PluginArguments


SUPPORTED_VERSIONS = ("0.9.5",)
_HOST_STAGES = ("pt", "sft", "rm", "ppo", "dpo", "kto")
_HOST_PREF_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo")
_PATCHED_MARK = "_llamafactory_wspo_patched"


class UnsupportedLlamaFactoryError(RuntimeError):
    pass


def host_version() -> str:
    from llamafactory.extras.env import VERSION

    return VERSION


def is_supported_host() -> bool:
    return host_version() in SUPPORTED_VERSIONS


def unsupported_message(version: str) -> str:
    return (
        f"llamafactory-wspo supports LLaMA-Factory {', '.join(SUPPORTED_VERSIONS)}, but LLaMA-Factory {version} is "
        f"installed. Install a supported release (`pip install llamafactory=={SUPPORTED_VERSIONS[-1]}`) or "
        "upgrade llamafactory-wspo."
    )


def requested_stage(args: dict[str, Any] | list[str] | None) -> str | None:
    r"""The ``stage`` that a YAML dict or a ``--stage x`` / ``--stage=x`` command line asks for."""
    if isinstance(args, dict):
        return args.get("stage")

    if isinstance(args, list | tuple):
        for i, arg in enumerate(args):
            if arg == "--stage" and i + 1 < len(args):
                return args[i + 1]

            if isinstance(arg, str) and arg.startswith("--stage="):
                return arg.split("=", 1)[1]

    return None


def on_import(module) -> None:
    if getattr(module, _PATCHED_MARK, False):
        return

    name = module.__name__
    if not is_supported_host():
        if name == "llamafactory.hparams.parser":
            _guard_unsupported_parser(module)
    elif name == "llamafactory.hparams.parser":
        _patch_parser(module)
    elif name == "llamafactory.train.tuner":
        _patch_tuner(module)
    elif name.startswith("llamafactory.webui."):  # LLaMA-Board: see webui/
        from . import webui

        webui.patch(module)

    setattr(module, _PATCHED_MARK, True)


def _guard_unsupported_parser(parser) -> None:
    r"""On an untested release, touch nothing but this: refuse a plugin stage with one clear error."""
    original = parser._parse_train_args
    read_args = getattr(parser, "read_args", lambda args: args)

    def _parse_train_args(args=None):
        try:
            stage = requested_stage(read_args(args))
        except Exception:  # the host reports its own argument errors
            stage = None

        if stage in PLUGIN_STAGES:
            raise UnsupportedLlamaFactoryError(unsupported_message(host_version()))

        return original(args)

    parser._parse_train_args = _parse_train_args


def build_finetuning_arguments(base: type) -> type:
    r"""LLaMA-Factory's ``FinetuningArguments`` with the plugin stages and fields added."""

    @dataclass
    class FinetuningArguments(PluginArguments, base):
        stage: Literal[_HOST_STAGES + PLUGIN_STAGES] = field(  # type: ignore[valid-type]
            default="sft",
            metadata={
                "help": "Which stage will be performed in training (`wspo`, `wpo`, `grpo` from llamafactory-wspo)."
            },
        )
        pref_loss: Literal[_HOST_PREF_LOSSES + ("kto",)] = field(  # type: ignore[valid-type]
            default="sigmoid",
            metadata={"help": "The type of DPO loss to use (`kto`: the KTO form of `stage: wpo`)."},
        )

        pref_beta: float = field(
            default=0.1,
            metadata={
                "help": "The beta parameter in the preference loss. For `stage: wspo` it is gamma of the WSPO loss "
                "(Zhu et al., ICLR 2025, arXiv:2410.18640): the mean over response tokens of "
                "(gamma * (log pi_theta(y_t) - log pi_ref(y_t)) - w_t)^2 with w_t = log pi_w*(y_t) - log pi_w0(y_t); "
                "at the optimum gamma * s_t = w_t, so a smaller gamma amplifies the weak model's alignment (the "
                "authors use 0.1). For `stage: wpo` it is beta of `pref_loss` inside the WPO loss, Eq. (1) of Zhou et "
                "al., EMNLP 2024, arXiv:2406.11827 (0.01 in its Sec. 4.1)."
            },
        )
        def __post_init__(self):
            base.__post_init__(self)
            self.check_plugin_args()

    FinetuningArguments.__module__ = __name__
    FinetuningArguments.__qualname__ = "FinetuningArguments"
    return FinetuningArguments


def _patch_parser(parser) -> None:
    plugin_cls = build_finetuning_arguments(parser.FinetuningArguments)
    parser._TRAIN_ARGS[:] = [plugin_cls if cls is parser.FinetuningArguments else cls for cls in parser._TRAIN_ARGS]


def _patch_tuner(tuner) -> None:
    r"""Route the plugin stages to :func:`_plugin_training_function`; every other stage runs the host's own."""
    original = tuner._training_function

    def _training_function(config: dict[str, Any]) -> None:
        if requested_stage(config.get("args")) in PLUGIN_STAGES:
            return _plugin_training_function(tuner, config)

        return original(config)

    tuner._training_function = _training_function


def _plugin_training_function(tuner, config: dict[str, Any]) -> None:
    r"""The plugin-stage branch of ``llamafactory.train.tuner._training_function`` (0.9.5).

    The callbacks are the ones the host adds for its own stages, so logging, LLaMA-Board progress,
    early stopping and profiling behave the same. The host builds them inline, before its stage chain, so
    they cannot be called from here: the block is a copy, pinned by ``tests/test_integration.py`` to the
    host's source so that a change there fails the test suite instead of drifting silently.

    Unlike the host, every rank waits for the others before the process group is torn down: rank 0 may
    still be saving the model and plotting, and under Gloo (CPU runs) a rank that closes its connections
    meanwhile has been seen to abort the whole ``torchrun`` job at exit. This only concerns plugin stages;
    the host's stages keep its own teardown.
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

    if finetuning_args.stage == "wspo":
        from .train.wspo import run_wspo

        run_wspo(model_args, data_args, training_args, finetuning_args, callbacks)
    elif finetuning_args.stage == "wpo":
        from .train.wpo import run_wpo

        run_wpo(model_args, data_args, training_args, finetuning_args, callbacks)
    elif finetuning_args.stage == "grpo":
        from .train.grpo import run_grpo

        run_grpo(model_args, data_args, training_args, finetuning_args, callbacks)
    else:  # pragma: no cover - guarded by requested_stage
        raise ValueError(f"Unknown plugin stage: {finetuning_args.stage}.")

    if tuner.is_ray_available() and tuner.ray.is_initialized():
        return

    try:
        if tuner.dist.is_initialized():
            tuner.dist.barrier()
            tuner.dist.destroy_process_group()
    except Exception as e:
        tuner.logger.warning(f"Failed to destroy process group: {e}.")
