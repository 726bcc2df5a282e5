"""The commands that the READMEs and docs show exist and use only options they accept; the developer scripts spell
their options in snake_case, like LLaMA-Factory, and accept the kebab-case spelling too; the docs and the package's
docstrings and comments cite only files and modules of the project; every relative link of the docs resolves; the
README stays short."""

import ast
import dataclasses
import importlib
import io
import json
import re
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import pytest
from helpers.scripts import script_module
from helpers.train import ROOT, base_env

from llamafactory_wspo.cli import COMMANDS


snake_case_options = script_module("_cli").snake_case_options
READMES = [ROOT / "README.md", *sorted((ROOT / "yaml_recipes").glob("**/README.md"))]
PAGES = [*READMES, *sorted((ROOT / "docs").glob("**/*.md"))]  # every markdown page of the project
PACKAGE = ROOT / "llamafactory_wspo"
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
    for readme in PAGES:
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
    for readme in PAGES:
        for path in re.findall(r"llamafactory-cli train (yaml_recipes/\S+\.yaml)", readme.read_text(encoding="utf-8")):
            assert (ROOT / path).is_file(), f"{readme.name} trains {path}, which does not exist"


def comments_and_docstrings(path: Path) -> str:
    r"""The prose of a Python file: its comments and the docstrings of its module, classes and functions."""
    source = path.read_text(encoding="utf-8")
    parts = [
        tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node, clean=False) or "")
    return "\n".join(parts)


def module_name_exists(name: str) -> bool:
    r"""Whether a dotted name of the package (``llamafactory_wspo.logps.store.read_cache``) exists: each part a
    subpackage or module, and the first part after a module a name that the module defines or imports."""
    parts = name.split(".")
    path = ROOT / parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if (path / part).is_dir() and (path / part / "__init__.py").is_file():
            path = path / part
            continue
        module = path / f"{part}.py" if (path / f"{part}.py").is_file() else None
        if module is not None and i == len(parts) - 1:
            return True
        source = module if module is not None else path / "__init__.py"
        attribute = parts[i + 1] if module is not None else part
        return attribute in top_level_names(source)
    return True


def top_level_names(module: Path) -> set[str]:
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


WHEEL_ONLY = {  # source in the repository -> its path in the wheel
    source: target
    for source, target in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["hatch"][
        "build"
    ]["targets"]["wheel"]["force-include"].items()
}
PROJECT_DIRS = ("llamafactory_wspo", "tests", "scripts", "docs", "yaml_recipes", ".ci")
PROJECT_FILES = [
    str(path.relative_to(ROOT))
    for path in [*ROOT.glob("*"), *(file for folder in PROJECT_DIRS for file in (ROOT / folder).rglob("*"))]
    if path.is_file() and "__pycache__" not in path.parts
]
# `dir/name.py` or `name.py` as prose names a file; LLaMA-Factory's own files are named with its package prefix
PY_PATH = re.compile(r"(?<![\w./$-])((?:[\w-]+/)*[\w-]+\.py)\b")
PACKAGE_PATH = re.compile(r"\bllamafactory_wspo/[\w/]*\w(?:\.py)?/?")
DOTTED = re.compile(r"\bllamafactory_wspo(?:\.\w+)+")
RELATIVE = re.compile(r":(?:mod|func|class|meth|data|attr):`~?(\.+[\w.]*)`")


def stale_references(text: str, path: Path) -> list[str]:
    r"""What ``text`` (of ``path``) names that the project does not have: an internal spec, a file or a module."""
    found = []
    if "ALGORITHMS.md" in text:
        found.append("ALGORITHMS.md, which is not in the project")
    if re.search(r"\b(our|the) spec\b", text, re.IGNORECASE):
        found.append("an internal spec")
    for name in PY_PATH.findall(text):
        if name.startswith("llamafactory/"):  # a file of LLaMA-Factory
            continue
        if not any(file == name or file.endswith("/" + name) for file in PROJECT_FILES):
            found.append(f"{name}, which no file of the project is")
    for name in PACKAGE_PATH.findall(text):
        for source, target in WHEEL_ONLY.items():  # what the wheel puts inside the package from elsewhere
            name = re.sub(f"^{re.escape(target)}", source, name)
        if not (ROOT / name).exists():
            found.append(f"{name}, which does not exist")
    names = [name.removesuffix(".py").removesuffix(".pth") for name in DOTTED.findall(text)]
    if path.suffix == ".py":  # :mod:`.store` and the like, relative to the module's package
        package = ".".join(path.relative_to(ROOT).parent.parts)
        for name in RELATIVE.findall(text):
            dots = len(name) - len(name.lstrip("."))
            base = package.split(".")[: len(package.split(".")) - dots + 1]
            names.append(".".join([*base, name.lstrip(".")]).rstrip("."))
    found += [
        f"{name}, which is not a module or name of the package" for name in names if not module_name_exists(name)
    ]
    return found


def test_docs_cite_only_files_of_the_project() -> None:
    texts = {path: path.read_text(encoding="utf-8") for path in PAGES}
    texts.update({path: path.read_text(encoding="utf-8") for path in (ROOT / "yaml_recipes").rglob("*.yaml")})
    texts.update({path: comments_and_docstrings(path) for path in sorted(PACKAGE.rglob("*.py"))})
    assert len(texts) > len(PAGES) + 50, "the package's modules were not read"
    stale = {
        str(path.relative_to(ROOT)): found for path, text in texts.items() if (found := stale_references(text, path))
    }
    assert not stale, stale


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see `llamafactory_wspo/logps/store.py` and llamafactory_wspo.host.patches.on_import", []),
        ("see `llamafactory_wspo/rewards.py`", ["rewards.py", "llamafactory_wspo/rewards.py"]),
        ("see `integration.py` and python scripts/generate.py", ["integration.py", "scripts/generate.py"]),
        ("see llamafactory_wspo.logps.store.no_such_name", ["llamafactory_wspo.logps.store.no_such_name"]),
        ("see llamafactory_wspo.extras.tiny_assets", ["llamafactory_wspo.extras.tiny_assets"]),
        ("as ALGORITHMS.md says", ["ALGORITHMS.md"]),
        ("as the spec says", ["internal spec"]),
        ("LLaMA-Factory's `llamafactory/train/tuner.py`; `data/weak_side.py`; `llamafactory_wspo.pth`", []),
    ],
)
def test_stale_reference_finder(text: str, expected: list[str]) -> None:
    found = stale_references(text, ROOT / "docs" / "page.md")
    assert len(found) == len(expected), found
    for message, name in zip(found, expected, strict=True):
        assert name in message, found


def test_prose_of_a_python_file(tmp_path) -> None:
    module = tmp_path / "module.py"
    module.write_text(
        '"""Module, see `a.py`."""\n\n# comment: b.py\nX = "code: c.py"\n\n\nclass K:\n    """Class, d.py."""\n\n'
        '    def f(self):\n        """Method, e.py."""\n        return "f.py"\n',
        encoding="utf-8",
    )
    assert PY_PATH.findall(comments_and_docstrings(module)) == ["b.py", "a.py", "d.py", "e.py"]


def test_relative_module_references_resolve() -> None:
    logps = PACKAGE / "logps" / "__init__.py"  # package llamafactory_wspo.logps
    assert not stale_references(":mod:`.store`, :func:`.store.read_cache`, :mod:`..frozen`", logps)
    assert len(stale_references(":mod:`.identity` and :func:`..frozen.no_such_name`", logps)) == 2


def github_anchor(heading: str) -> str:
    r"""The anchor GitHub gives a heading: markup dropped, lower case, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # links: their text
    text = re.sub(r"[^\w\- ]", "", text.lower())  # letters, digits, `_`, `-` and spaces stay
    return text.replace(" ", "-")


def prose_lines(text: str) -> list[str]:
    r"""The lines of a markdown page outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    found: dict[str, int] = {}
    result = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6} (.+?)#*$", line)
        if match:
            anchor = github_anchor(match.group(1))
            count = found.get(anchor, 0)  # GitHub numbers repeated headings: x, x-1, x-2, ...
            result.add(anchor if count == 0 else f"{anchor}-{count}")
            found[anchor] = count + 1
    return result


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def broken_links(page: Path) -> list[str]:
    r"""The relative links of a markdown page (outside code) whose file, or whose heading, does not exist."""
    broken = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists():
                broken.append(f"{target}: no file {linked}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("page", [str(page.relative_to(ROOT)) for page in PAGES])
def test_relative_links_resolve(page: str) -> None:
    broken = broken_links(ROOT / page)
    assert not broken, broken


def test_every_page_is_linked_from_the_readme() -> None:
    readme = ROOT / "README.md"
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for line in prose_lines(readme.read_text(encoding="utf-8"))
        for target in LINK.findall(line)
    }
    pages = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "yaml_recipes" / "README.md"]
    assert not [str(page.relative_to(ROOT)) for page in pages if page.resolve() not in linked]


def test_link_checker(tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## What happens when…\n\n## Step `wspo`: one, two\n")
    page = tmp_path / "README.md"
    good = (
        "[a](docs/a.md) [b](docs/a.md#what-happens-when) [c](docs/a.md#step-wspo-one-two) [d](#top) [e](https://x.y)"
    )
    page.write_text(f"# Top\n\n{good}\n\n```\n[f](missing.md)\n```\n`[g](missing.md)`\n")
    assert broken_links(page) == []
    page.write_text("# Top\n\n[a](docs/b.md) [b](docs/a.md#what-happens) [c](#nowhere)\n")
    assert len(broken_links(page)) == 3, broken_links(page)
    assert github_anchor("Online RL with `stage: grpo` (the weak model's length alignment)") == (
        "online-rl-with-stage-grpo-the-weak-models-length-alignment"
    )
    assert github_anchor("XSUM: WSPO, Qwen2-1.5B → Qwen2-7B (summary length)") == (
        "xsum-wspo-qwen2-15b--qwen2-7b-summary-length"
    )


def test_readme_is_at_most_20_kb() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 20 * 1024, f"README.md is {size} bytes; move long sections to docs/ and link them"


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
