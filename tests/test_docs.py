"""The commands that the READMEs show for scripts/*.py use only flags those scripts accept."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT, base_env


READMES = [ROOT / "README.md", *sorted((ROOT / "yaml_recipes").glob("**/README.md"))]
COMMAND = re.compile(r"python (scripts/[\w]+\.py)((?:[^`\n]|\\\n)*)")


def documented_commands() -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    for readme in READMES:
        for script, rest in COMMAND.findall(readme.read_text(encoding="utf-8")):
            flags.setdefault(script, set()).update(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest))
    return flags


COMMANDS = documented_commands()


def test_readmes_show_the_scripts() -> None:
    assert {"scripts/generate.py", "scripts/to_alpaca_eval.py", "scripts/build_hybrid_data.py"} <= set(COMMANDS)
    assert {"scripts/prepare_xsum.py", "scripts/evaluate_xsum.py", "scripts/reward_server.py"} <= set(COMMANDS)


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_documented_flags_exist(script: str) -> None:
    assert (ROOT / script).is_file(), f"{script} is documented but does not exist"
    help_text = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], env=base_env(), capture_output=True, text=True, timeout=300
    ).stdout
    accepted = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", help_text))
    unknown = COMMANDS[script] - accepted
    assert not unknown, f"README commands of {script} use flags it does not accept: {sorted(unknown)}"
