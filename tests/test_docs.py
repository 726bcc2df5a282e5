"""The commands that the READMEs show exist and use only options they accept; the developer scripts spell their
options in snake_case, like LLaMA-Factory, and accept the kebab-case spelling too; the docs cite only files of the
project."""

import dataclasses
import importlib
import json
import re
import subprocess
import sys

import pytest
from helpers.scripts import script_module
from helpers.train import ROOT, base_env

from llamafactory_wspo.cli import COMMANDS


snake_case_options = script_module("_cli").snake_case_options
READMES = [ROOT / "README.md", *sorted((ROOT / "yaml_recipes").glob("**/README.md"))]
# `llamafactory-wspo <command> ...` up to the end of the code span / line, with backslash continuations
COMMAND = re.compile(r"llamafactory-wspo ([a-z][a-z-]*)((?:[^`\n]|\\\n)*)")
SCRIPT = re.compile(r"python (scripts/[\w/]+\.py)((?:[^`\n]|\\\n)*)")
DEV_SCRIPTS = sorted(
    str(path.relative_to(ROOT)) for path in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "scripts").glob("*/*.py")]
)
DEV_SCRIPTS = [script for script in DEV_SCRIPTS if not script.startswith("scripts/_")]


def documented(pattern: re.Pattern) -> dict[str, set[str]]:
    r"""Per command (or script): the option names its README commands use (``key=value`` and ``--key``)."""
    options: dict[str, set[str]] = {}
    for readme in READMES:
        for name, rest in pattern.findall(readme.read_text(encoding="utf-8")):
            rest = re.sub(r"'[^']*'|\"[^\"]*\"", " ", rest)  # quoted values
            keys = re.findall(r"(?:^|\s)([a-z_][a-z0-9_]*)=", rest) + re.findall(r"(?<![\w-])--([a-z][\w-]*)", rest)
            options.setdefault(name, set()).update(key.replace("-", "_") for key in keys)
    return options


COMMANDS_USED = documented(COMMAND)


def test_readmes_show_every_pipeline_step() -> None:
    assert set(COMMANDS) - {"smoke", "recipes"} <= set(COMMANDS_USED), sorted(COMMANDS_USED)
    assert not documented(SCRIPT).keys() - set(DEV_SCRIPTS), "a README runs a script that is not in scripts/"


@pytest.mark.parametrize("command", sorted(COMMANDS_USED))
def test_documented_options_exist(command: str) -> None:
    assert command in COMMANDS, f"the READMEs show `llamafactory-wspo {command}`, which does not exist"
    module = importlib.import_module(f"llamafactory_wspo.cli.{COMMANDS[command][0]}")
    accepted = {field.name for field in dataclasses.fields(module.ARGUMENTS)}
    if command == "smoke":  # key=value there overrides the recipe: any LLaMA-Factory argument
        return
    unknown = COMMANDS_USED[command] - accepted
    assert not unknown, f"README commands of `{command}` use options it does not accept: {sorted(unknown)}"


def test_documented_recipes_exist() -> None:
    for readme in READMES:
        for path in re.findall(r"llamafactory-cli train (yaml_recipes/\S+\.yaml)", readme.read_text(encoding="utf-8")):
            assert (ROOT / path).is_file(), f"{readme.name} trains {path}, which does not exist"


def test_docs_cite_only_files_of_the_project() -> None:
    texts = {path: path.read_text(encoding="utf-8") for path in READMES}
    texts.update({path: path.read_text(encoding="utf-8") for path in (ROOT / "yaml_recipes").rglob("*.yaml")})
    for name in ("losses.py", "rewards.py", "hparams.py"):
        path = ROOT / "llamafactory_wspo" / name
        texts[path] = path.read_text(encoding="utf-8")
    for path, text in texts.items():
        assert "ALGORITHMS.md" not in text, f"{path} cites ALGORITHMS.md, which is not in the project"
        assert not re.search(r"\b(our|the) spec\b", text), f"{path} refers to an internal spec"
        assert "scripts/generate.py" not in text and "scripts/build_hybrid_data.py" not in text, path


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


@pytest.mark.parametrize("script", DEV_SCRIPTS)
def test_dev_script_options_are_snake_case(script: str) -> None:
    flags = help_flags(script, *(["all"] if script.endswith("tiny_assets.py") else []))
    assert flags, f"{script} --help lists no options"
    assert not {flag for flag in flags if "-" in flag[2:]}, f"{script} spells options in kebab-case: {sorted(flags)}"


def test_kebab_case_spelling_is_accepted(capsys, tmp_path) -> None:
    assert snake_case_options(["--max-new-tokens=4", "--top-p", "0.9", "x-y", "--", "--keep-me"]) == [
        "--max_new_tokens=4",
        "--top_p",
        "0.9",
        "x-y",
        "--",
        "--keep-me",
    ]
    from llamafactory_wspo.cli import main

    lines = [{"instruction": "q", "predict": ["a", "b"]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    for spelling in ("--sample-index", "--sample_index"):
        assert main(["export-alpaca-eval", str(tmp_path / "in.jsonl"), str(tmp_path / "out.json"), spelling, "1"]) == 0
        assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))[0]["output"] == "b"
