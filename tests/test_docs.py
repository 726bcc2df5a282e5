"""The commands that the READMEs show for scripts/*.py use only flags those scripts accept; the scripts spell
their options in snake_case, like LLaMA-Factory, and accept the kebab-case spelling too."""

import json
import re
import subprocess
import sys

import pytest
from helpers.scripts import script_module
from helpers.train import ROOT, base_env


snake_case_options = script_module("_cli").snake_case_options
READMES = [ROOT / "README.md", *sorted((ROOT / "yaml_recipes").glob("**/README.md"))]
COMMAND = re.compile(r"python (scripts/[\w]+\.py)((?:[^`\n]|\\\n)*)")


def documented_commands() -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    for readme in READMES:
        for script, rest in COMMAND.findall(readme.read_text(encoding="utf-8")):
            flags.setdefault(script, set()).update(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest))
    return flags


COMMANDS = documented_commands()
SCRIPTS = sorted(
    str(path.relative_to(ROOT)) for path in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "scripts").glob("*/*.py")]
)
SCRIPTS = [script for script in SCRIPTS if not script.startswith("scripts/_")]


def help_flags(script: str, *args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args, "--help"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", result.stdout))


def test_readmes_show_the_scripts() -> None:
    assert {"scripts/generate.py", "scripts/to_alpaca_eval.py", "scripts/build_hybrid_data.py"} <= set(COMMANDS)
    assert {"scripts/prepare_xsum.py", "scripts/evaluate_xsum.py", "scripts/reward_server.py"} <= set(COMMANDS)


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_documented_flags_exist(script: str) -> None:
    assert (ROOT / script).is_file(), f"{script} is documented but does not exist"
    accepted = help_flags(script)
    unknown = COMMANDS[script] - accepted
    assert not unknown, f"README commands of {script} use flags it does not accept: {sorted(unknown)}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_options_are_snake_case(script: str) -> None:
    flags = help_flags(script, *(["all"] if script.endswith("tiny_assets.py") else []))
    assert flags, f"{script} --help lists no options"
    assert not {flag for flag in flags if "-" in flag[2:]}, f"{script} spells options in kebab-case: {sorted(flags)}"


def test_kebab_case_spelling_is_accepted(tmp_path) -> None:
    assert snake_case_options(["--max-new-tokens=4", "--top-p", "0.9", "x-y", "--", "--keep-me"]) == [
        "--max_new_tokens=4",
        "--top_p",
        "0.9",
        "x-y",
        "--",
        "--keep-me",
    ]
    lines = [{"instruction": "q", "predict": ["a", "b"]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    for spelling in ("--sample-index", "--sample_index"):
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "to_alpaca_eval.py"),
                str(tmp_path / "in.jsonl"),
                str(tmp_path / "out.json"),
                spelling,
                "1",
            ],
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))[0]["output"] == "b"
