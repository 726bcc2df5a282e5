"""The gate: the host modules that the plugin patches, grouped in areas that activate only when every check holds.

An area (:data:`TRAINING`: the parser and the tuner; :data:`LLAMABOARD`: four LLaMA-Board modules) is active once all
its modules are checked and patched (:mod:`.patches`). Where a check fails, asking for a plugin stage stops with one
:class:`UnsupportedLlamaFactoryError` naming the point and the tested releases, LLaMA-Board offers no plugin stage,
and stock stages run as without the plugin.
"""

import importlib
from collections.abc import Callable
from typing import Any

from ..hparams import PLUGIN_STAGES


# The releases that the test-suite covers (README, "Supported LLaMA-Factory releases"): named by the error only.
TESTED_VERSIONS = ("0.9.5", "0.9.6.dev0")


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

    def require(self, stage: str, on_import: Callable[[Any], None]) -> None:
        r"""The one clear error unless the area is active; its modules that are not imported yet are checked first
        (``on_import``: the check and patch of one module, :func:`~llamafactory_wspo.host.patches.on_import`)."""
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
        main = "or LLaMA-Factory main as llamafactory-wspo's docs/compatibility.md describes"
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
