"""Start-up hook, run by ``llamafactory_wspo.pth`` in every Python process of the environment.

It only registers a finder on :data:`sys.meta_path`; nothing is imported here (no torch, no
llamafactory). When LLaMA-Factory later imports one of the modules in :data:`_TARGETS`, the module
executes as usual and :func:`llamafactory_wspo.host.patches.on_import` then checks and patches it
(``_TARGETS`` are the modules of the areas of :mod:`llamafactory_wspo.host.gate`). The hook can never break
interpreter start-up: any failure becomes a single warning.
"""

import os
import sys


_DISABLE_ENV = "LLAMAFACTORY_WSPO_DISABLE"
_TARGETS = frozenset(
    {
        "llamafactory.hparams.parser",
        "llamafactory.train.tuner",
        # LLaMA-Board (llamafactory_wspo/webui/)
        "llamafactory.webui.control",
        "llamafactory.webui.components.train",
        "llamafactory.webui.runner",
        "llamafactory.webui.engine",
    }
)


_warned: set[str] = set()  # the warnings given in this process


def _warn(exc: BaseException) -> None:
    r"""One warning per process for each distinct failure (a missing module fails at every target module)."""
    import warnings

    message = f"llamafactory-wspo is inactive: {type(exc).__name__}: {exc}"
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)


class _PatchingLoader:
    """Wraps the real loader of a target module and patches the module right after it executes."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            from llamafactory_wspo.host import patches

            patches.on_import(module)
        except Exception as exc:  # never let the plugin break the host
            _warn(exc)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder:
    """A meta-path finder that only decorates the specs of LLaMA-Factory's target modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _TARGETS:
            return None

        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue

            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader)

                return spec

        return None


def install() -> None:
    if os.environ.get(_DISABLE_ENV, "0").lower() in ("1", "true", "yes", "y"):
        return

    if not any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())


try:
    install()
except Exception as _exc:  # pragma: no cover - defensive, start-up must survive
    _warn(_exc)
