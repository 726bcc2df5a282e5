"""Every touch on LLaMA-Factory, in one place, behind one gate.

:mod:`llamafactory_wspo._autoload` calls :func:`on_import` right after LLaMA-Factory has executed one of the
host modules below. They form two areas:

* **training** (``hparams.parser``, ``train.tuner``): the training parser gets a ``FinetuningArguments`` that
  accepts the plugin stages and fields, and the tuner routes the plugin stages to their workflows;
* **LLaMA-Board** (``webui.control``, ``webui.components.train``, ``webui.runner``, ``webui.engine``): the
  plugin stages in the Train tab (:mod:`llamafactory_wspo.webui`).

There is no list of accepted versions. Each module's points that the patches rely on (names, signatures,
the shape of the stage ``Literal``, the tuner's dispatch, LLaMA-Board's elements, and the host functions and
classes that the plugin's stages call) are checked when the module is patched, and an area activates only
once all of its modules are checked and every check holds. Where one fails, asking for a plugin stage stops
with one :class:`UnsupportedLlamaFactoryError` naming the point and the tested releases, LLaMA-Board offers
no plugin stage, and stock stages run as without the plugin; the failed check is also one warning when its
module is imported. The checks read modules that the host has imported already, and the source of one that it
imports only when a stage runs (the DPO trainer): milliseconds, and no import of their own.
"""

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import sys
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .hparams import PLUGIN_STAGES, PluginArguments


# The releases that the test-suite covers (README, "Supported LLaMA-Factory releases"): named by the error only.
TESTED_VERSIONS = ("0.9.5", "0.9.6.dev0")
_PATCHED_MARK = "_llamafactory_wspo_patched"


class HostMismatch(Exception):
    r"""A point of LLaMA-Factory that a patch relies on is missing or has changed; the message names it."""


class UnsupportedLlamaFactoryError(RuntimeError):
    r"""A plugin stage asked for on a LLaMA-Factory where the training area is inactive."""


class Area:
    r"""Host modules whose patches work together: active once all are checked, and only where all checks hold."""

    def __init__(self, name: str, modules: tuple[str, ...], effect: str) -> None:
        self.name = name
        self.modules = modules
        self.effect = effect  # what the user sees while the area is inactive
        self.results: dict[str, str | None] = {}  # module -> the failed check's message, None where all held
        self.raised: set[str] = set()  # modules whose check or patch raised unforeseen: a fault of the plugin
        self._activations: list[Callable[[], None]] = []

    @property
    def failures(self) -> list[str]:
        return [failure for failure in self.results.values() if failure]

    @property
    def active(self) -> bool:
        return not self.failures and all(name in self.results for name in self.modules)

    def record(self, module: str, failure: str | None, activation: Callable[[], None] | None = None) -> None:
        r"""The result of ``module``'s checks; ``activation`` runs once the whole area is active."""
        self.results[module] = failure
        if activation is not None:
            self._activations.append(activation)
        if self.active:
            while self._activations:
                self._activations.pop(0)()

    def require(self, stage: str) -> None:
        r"""The one clear error unless the area is active; its modules that are not imported yet are checked first."""
        for name in self.modules:
            if name not in self.results:
                try:
                    module = importlib.import_module(name)  # the start-up hook checks it
                except ImportError as exc:
                    self.record(name, f"{name} cannot be imported ({exc})")
                    continue
                if name not in self.results:  # imported before the hook was installed
                    on_import(module)

        if not self.active:
            raise UnsupportedLlamaFactoryError(self.message(f"`stage: {stage}`"))

    def warn(self, failure: str, raised: bool = False) -> None:
        r"""One warning for a failed module: a point of the host that moved, or (``raised``) a fault of the plugin."""
        import warnings

        releases = f"LLaMA-Factory {' and '.join(TESTED_VERSIONS)}"
        version = host_version()
        if not raised:
            advice = f"Tested releases: {releases}."
        elif version in TESTED_VERSIONS:
            advice = "A bug of llamafactory-wspo: please report it to its maintainers with this message."
        else:
            advice = (
                f"LLaMA-Factory {version} is not a tested release ({releases}), which may be why; please report it to "
                "llamafactory-wspo's maintainers with this message."
            )
        warnings.warn(
            f"llamafactory-wspo is inactive in {self.name}: {failure}. {self.effect}; stock stages are unaffected. "
            f"{advice}",
            RuntimeWarning,
            stacklevel=2,
        )

    def message(self, what: str) -> str:
        r"""The error for ``what`` (a plugin stage) while the area is inactive: what failed, and what to do.

        A point that moved means a host that differs from the tested releases or, where the installed version is a
        tested one, an installation that differs from that release. A check or patch that raised is a fault of the
        plugin, named as such whatever the version.
        """
        version = host_version()
        releases = f"LLaMA-Factory {' and '.join(TESTED_VERSIONS)}"
        main = "or LLaMA-Factory main as llamafactory-wspo's README describes"
        faults = [failure for name, failure in self.results.items() if failure and name in self.raised]
        moved = [failure for name, failure in self.results.items() if failure and name not in self.raised]
        if not faults and not moved:
            moved = [f"{name} was not checked" for name in self.modules if name not in self.results]

        sentences = []
        if faults and version in TESTED_VERSIONS:
            sentences.append(
                f"{'; '.join(faults)}, on LLaMA-Factory {version}, a tested release. This is a bug of "
                "llamafactory-wspo: please report it to its maintainers with this message."
            )
        elif faults:
            sentences.append(
                f"{'; '.join(faults)}, on LLaMA-Factory {version}, which is not a tested release ({releases}) and may "
                f"be why. Install a tested release (`pip install llamafactory=={TESTED_VERSIONS[0]}`, {main}), and "
                "please report it to llamafactory-wspo's maintainers with this message."
            )
        if moved and version in TESTED_VERSIONS:
            sentences.append(
                f"the installed LLaMA-Factory {version} is a tested release, but differs from it at a point the "
                f"plugin relies on: {'; '.join(moved)} (a modified installation, or another commit of LLaMA-Factory "
                "main). "
                f"Reinstall a tested release, {releases} (`pip install --force-reinstall "
                f"llamafactory=={TESTED_VERSIONS[0]}`, {main})."
            )
        elif moved:
            sentences.append(
                f"the installed LLaMA-Factory {version} differs from the tested releases, {releases}, at a point the "
                f"plugin relies on: {'; '.join(moved)}. Install a tested release (`pip install "
                f"llamafactory=={TESTED_VERSIONS[0]}`, {main}) or a llamafactory-wspo release that supports "
                f"LLaMA-Factory {version}."
            )
        return f"llamafactory-wspo cannot provide {what}: {' Also, '.join(sentences)}"


TRAINING = Area(
    "training",
    ("llamafactory.hparams.parser", "llamafactory.train.tuner"),
    effect=f"Asking for `stage: {'|'.join(PLUGIN_STAGES)}` stops with an error",
)
LLAMABOARD = Area(
    "LLaMA-Board",
    (
        "llamafactory.webui.control",
        "llamafactory.webui.components.train",
        "llamafactory.webui.runner",
        "llamafactory.webui.engine",
    ),
    effect="LLaMA-Board offers no plugin stage",
)


def host_version() -> str:
    try:
        from llamafactory.extras.env import VERSION

        return VERSION
    except Exception:  # the version is only reported, never checked
        return "(unknown version)"


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
    r"""Check, then patch, the host module ``module`` that LLaMA-Factory has just executed."""
    if getattr(module, _PATCHED_MARK, False):
        return

    setattr(module, _PATCHED_MARK, True)
    name = module.__name__
    if name == "llamafactory.hparams.parser":
        _check_and_patch(TRAINING, module, _check_parser, _patch_parser)
    elif name == "llamafactory.train.tuner":
        _check_and_patch(TRAINING, module, _check_tuner, _patch_tuner)
    elif name in LLAMABOARD.modules:  # see webui/
        from . import webui

        _check_and_patch(LLAMABOARD, module, webui.check, webui.patch)


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


# ---------------------------------------------------------------- checks


def host_attr(owner, qualname: str, params: tuple[str, ...] | None = None, point: str | None = None) -> Any:
    r"""``owner.<qualname>``, checked: present and, given ``params``, taking those leading parameters.

    ``point`` names it in the message (default: the owner module's name and ``qualname``).
    """
    point = point or f"{getattr(owner, '__name__', owner)}.{qualname}"
    obj = owner
    for attr in qualname.split("."):
        if not hasattr(obj, attr):
            raise HostMismatch(f"{point} is missing")
        obj = getattr(obj, attr)

    if params is not None:
        try:
            names = tuple(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            raise HostMismatch(f"{point} is not callable") from None
        _check_parameters(point, names, params)

    return obj


def _check_parameters(point: str, names: tuple[str, ...], params: tuple[str, ...]) -> None:
    if names[: len(params)] != params:
        raise HostMismatch(f"{point} takes ({', '.join(names)}) instead of ({', '.join(params)}, ...)")


def source_attr(module_name: str, qualname: str, params: tuple[str, ...] | None = None) -> None:
    r"""The check of :func:`host_attr` on the source of a module that the host imports only when it needs it.

    ``qualname`` is a function or class defined in the module, or a method defined in such a class.
    """
    point = f"{module_name}.{qualname}"
    try:
        spec = importlib.util.find_spec(module_name)
    except ImportError:
        spec = None
    source = spec.loader.get_source(module_name) if spec is not None and spec.loader is not None else None
    if source is None:
        raise HostMismatch(f"{module_name} cannot be found")

    scope: list[ast.stmt] = ast.parse(source).body
    for attr in qualname.split("."):
        node = next((n for n in scope if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == attr), None)
        if node is None:
            raise HostMismatch(f"{point} is missing")
        scope = node.body

    if params is not None:
        if not isinstance(node, ast.FunctionDef):
            raise HostMismatch(f"{point} is not a function")
        _check_parameters(point, tuple(arg.arg for arg in (*node.args.posonlyargs, *node.args.args)), params)


def literal_choices(cls: type, name: str) -> tuple[str, ...]:
    r"""The choices of the dataclass field ``cls.<name>``, declared as a ``Literal`` of strings."""
    point = f"{cls.__module__}.{cls.__qualname__}.{name}"
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    if name not in fields:
        raise HostMismatch(f"{point} is missing")

    annotation = fields[name].type
    if isinstance(annotation, str):
        annotation = typing.get_type_hints(cls).get(name)
    choices = typing.get_args(annotation)
    if typing.get_origin(annotation) is not Literal or not all(isinstance(choice, str) for choice in choices):
        raise HostMismatch(f"{point} is {annotation!r}, not a Literal of names")

    return choices


def keyword_names(function: Callable) -> set[str]:
    r"""The keyword names in ``function``'s calls (how LLaMA-Board's tabs register their elements)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg}


def host_module(name: str):
    module = sys.modules.get(name)  # imported by the host already (a moved module is looked for)
    if module is None:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise HostMismatch(f"{name} cannot be imported ({exc})") from None
    return module


# FinetuningArguments fields that the plugin's arguments and stages read.
_FINETUNING_FIELDS = ("stage", "pref_beta", "pref_ftx", "pref_loss", "dpo_label_smoothing", "ref_model")
# The tuner's names that `_plugin_training_function` uses (tests/test_host_compat.py keeps this list complete).
_TUNER_NAMES = (
    "get_train_args",
    "LogCallback",
    "PissaConvertCallback",
    "get_swanlab_callback",
    "EarlyStoppingCallback",
    "TorchProfilerCallback",
    "ModuleProfilerCallback",
    "ReporterCallback",
    "is_ray_available",
    "dist",
    "logger",
)
# What the plugin's stages import from LLaMA-Factory (train/, data/, frozen.py, ...; tests/test_host_compat.py keeps
# this complete): each name, and the leading parameters they pass where they call it.
_STAGE_APIS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "llamafactory.data": {
        "get_dataset": ("template", "model_args", "data_args", "training_args", "stage", "tokenizer", "processor"),
        "get_template_and_fix_tokenizer": ("tokenizer", "data_args"),
        "SFTDataCollatorWith4DAttentionMask": ("tokenizer", "model"),
        "PairwiseDataCollatorWithPadding": ("tokenizer", "model"),
        "KTODataCollatorWithPadding": ("tokenizer", "model"),
        "Template": None,
    },
    # wrapped while a cross-tokenizer WSPO data set is built (data/cross.py)
    "llamafactory.data.loader": {
        "_get_dataset_processor": ("data_args", "stage", "template", "tokenizer", "processor", "do_generate")
    },
    "llamafactory.data.parser": {"get_dataset_list": ("dataset_names", "dataset_dir")},
    "llamafactory.data.processor": {
        "DatasetProcessor": None,
        "PairwiseDatasetProcessor": None,
        "SupervisedDatasetProcessor": None,
    },
    "llamafactory.data.template": {"TEMPLATES": None},
    "llamafactory.extras.constants": {"IGNORE_INDEX": None},
    "llamafactory.extras.logging": {"get_logger": ("name",)},
    "llamafactory.extras.misc": {"calculate_tps": ("dataset", "metrics", "stage")},
    "llamafactory.extras.ploting": {"plot_loss": ("save_dictionary", "keys")},
    "llamafactory.hparams": {
        "DataArguments": None,
        "FinetuningArguments": None,
        "ModelArguments.copyfrom": ("source",),
    },
    "llamafactory.model": {
        "load_model": ("tokenizer", "model_args", "finetuning_args", "is_trainable"),
        "load_tokenizer": ("model_args",),
    },
    "llamafactory.model.loader": {"load_config": ("model_args",)},
    "llamafactory.train.trainer_utils": {
        "create_custom_optimizer": ("model", "training_args", "finetuning_args"),
        "create_custom_scheduler": ("training_args", "num_training_steps", "optimizer"),
        "create_modelcard_and_push": ("trainer", "model_args", "data_args", "training_args", "finetuning_args"),
        "nested_detach": ("tensors", "clone"),
    },
    "llamafactory.train.pt.trainer": {"CustomTrainer.__init__": ("self", "finetuning_args", "processor")},
    "llamafactory.train.dpo.trainer": {
        "CustomDPOTrainer.concatenated_forward": ("self", "model", "batch"),
        "CustomDPOTrainer.compute_reference_log_probs": ("self", "model", "batch"),
        "CustomDPOTrainer.compute_preference_loss": (
            "self",
            "policy_chosen_logps",
            "policy_rejected_logps",
            "reference_chosen_logps",
            "reference_rejected_logps",
        ),
        "CustomDPOTrainer.get_batch_loss_metrics": ("self", "model", "batch", "train_eval"),
    },
    "llamafactory.train.kto.trainer": {
        "CustomKTOTrainer.concatenated_forward": ("self", "model", "batch"),
        "CustomKTOTrainer.compute_reference_log_probs": ("self", "model", "batch"),
        "CustomKTOTrainer.get_batch_loss_metrics": ("self", "model", "batch"),
    },
}


def _check_parser(parser) -> None:
    r"""The training parser: its argument classes, their parsing function, and the stage ``Literal``."""
    cls = host_attr(parser, "FinetuningArguments")
    train_args = host_attr(parser, "_TRAIN_ARGS")
    if not isinstance(train_args, list) or cls not in train_args:
        raise HostMismatch(f"{parser.__name__}._TRAIN_ARGS is not a list holding FinetuningArguments")

    host_attr(parser, "_parse_train_args", ("args",))
    host_attr(parser, "read_args", ("args",))
    for name in _FINETUNING_FIELDS:
        if name not in {f.name for f in dataclasses.fields(cls)}:
            raise HostMismatch(f"{cls.__module__}.FinetuningArguments.{name} is missing")

    for name, plugin_choices in (("stage", PLUGIN_STAGES), ("pref_loss", ("kto",))):
        taken = set(literal_choices(cls, name)) & set(plugin_choices)
        if taken:
            raise HostMismatch(f"{cls.__module__}.FinetuningArguments.{name} already has {', '.join(sorted(taken))}")


def _check_tuner(tuner) -> None:
    r"""The tuner's dispatch (``run_exp`` → ``_training_function(config)`` → stage chain), and the stage APIs."""
    host_attr(tuner, "_training_function", ("config",))
    run_exp = host_attr(tuner, "run_exp", ("args", "callbacks"))
    if "_training_function" not in run_exp.__code__.co_names:
        raise HostMismatch(f"{tuner.__name__}.run_exp no longer dispatches through _training_function")
    if "stage" not in tuner._training_function.__code__.co_names:
        raise HostMismatch(f"{tuner.__name__}._training_function no longer dispatches on finetuning_args.stage")

    for name in _TUNER_NAMES:
        host_attr(tuner, name)

    for module_name, names in _STAGE_APIS.items():
        module = sys.modules.get(module_name)  # the tuner imports most; the DPO trainer is read from its source
        for qualname, params in names.items():
            if module is None:
                source_attr(module_name, qualname, params)
            else:
                host_attr(module, qualname, params, point=f"{module_name}.{qualname}")


# ---------------------------------------------------------------- training: parser and tuner


def build_finetuning_arguments(base: type) -> type:
    r"""LLaMA-Factory's ``FinetuningArguments`` with the plugin stages and fields added."""
    from .hparams import WPO_PREF_LOSSES

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
                "help": "The type of DPO loss to use. `stage: wpo` (Zhou et al., EMNLP 2024, arXiv:2406.11827, "
                f"Eq. (1)) weights any per-pair loss: {', '.join(WPO_PREF_LOSSES)} (TRL's names); `kto` is its KTO "
                "form (Sec. 4.2)."
            },
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


def _guard_parser(parser) -> None:
    r"""A plugin stage asked for while the training area is inactive stops here, with the one clear error."""
    original = getattr(parser, "_parse_train_args", None)
    if original is None:  # then the tuner's router reports it
        return

    read_args = getattr(parser, "read_args", lambda args: args)

    def _parse_train_args(args=None):
        try:
            stage = requested_stage(read_args(args))
        except Exception:  # the host reports its own argument errors
            stage = None

        if stage in PLUGIN_STAGES:
            TRAINING.require(stage)

        return original(args)

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
            TRAINING.require(stage)
            return _plugin_training_function(tuner, config)

        return original(config)

    tuner._training_function = _training_function


def _plugin_training_function(tuner, config: dict[str, Any]) -> None:
    r"""The plugin-stage branch of ``llamafactory.train.tuner._training_function``.

    The callbacks are the ones the host adds for its own stages, so logging, LLaMA-Board progress,
    early stopping and profiling behave the same. The host builds them inline, before its stage chain, so
    they cannot be called from here: the block is a copy, pinned by ``tests/test_integration.py`` to the
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

    from .extras.compat import fix_trl_availability_flags

    fix_trl_availability_flags()  # before any stage imports a TRL trainer module (see the shim's docstring)
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

    if tuner.dist.is_initialized():
        from .train.teardown import teardown_distributed

        teardown_distributed(warn=tuner.logger.warning)
