"""The developer scripts under ``scripts/`` (quick start, benchmark, tiny assets, demo): import one as a module.

:func:`script_module` is the one place where the tests reach a script by path; the pipeline steps are the package's
``llamafactory-wspo`` command (``tests/helpers/cli.py``).
"""

import importlib.util
import sys
from types import ModuleType

from .train import ROOT


SCRIPTS = ROOT / "scripts"


def script_module(name: str) -> ModuleType:
    r"""``scripts/<name>.py`` (``name`` like ``benchmark`` or ``demo/evaluate``) imported as a module, once.

    The scripts import their siblings (``_cli``) by plain name, as they do when run, so
    ``scripts/`` goes on ``sys.path``; a script in a subfolder is registered as ``demo_evaluate`` and so on.
    """
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    module_name = name.replace("/", "_")
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]
