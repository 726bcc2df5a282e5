"""The command-line scripts under ``scripts/``: run one in a subprocess, or import one as a module.

The pipeline scripts are not part of the package yet; :func:`script_module` is the one place where the tests
reach them by path.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from .train import ROOT, base_env


SCRIPTS = ROOT / "scripts"
QWEN_SYSTEM = "you are qwen , created by alibaba cloud . you are a helpful assistant ."


def run_script(
    script: str | Path, *args: object, check: bool = True, cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    r"""``python scripts/<script> ARGS`` (or a path) in the test environment; ``check``: fail on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *map(str, args)],
        cwd=cwd,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def script_module(name: str) -> ModuleType:
    r"""``scripts/<name>.py`` (``name`` like ``prepare_xsum`` or ``demo/evaluate``) imported as a module, once.

    The scripts import their siblings (``_cli``, ``generate``) by plain name, as they do when run, so
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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def qwen_prompt_ids(tokenizer, user: str, system: str = QWEN_SYSTEM) -> list[int]:
    r"""Qwen's chat format written out by hand (not through LLaMA-Factory's template)."""
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]
