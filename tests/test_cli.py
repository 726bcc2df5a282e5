"""``llamafactory-wspo``: the argument conventions of every subcommand, and the installed wheel (not the checkout)
running every subcommand's ``-h`` and ``recipes list`` / ``recipes copy``."""

import dataclasses
import filecmp
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from helpers.train import ROOT, base_env

from llamafactory_wspo.cli import COMMANDS
from llamafactory_wspo.cli.args import CliError, option, parse_args


@dataclass
class Toy:
    model_name_or_path: str = option(help="A required option.")
    temperature: float = option(0.0, help="A float.")
    infer_backend: Literal["auto", "huggingface", "vllm"] = option("auto", help="A choice.")
    splits: list[str] = option(help="A list.", default_factory=lambda: ["train", "test"])
    system: str | None = option("be brief", help="An optional string.")
    dry_run: bool = option(False, help="A flag.")
    files: list[str] = option(help="Positional values.", default_factory=list)


def parse(*argv: str, **kwargs) -> Toy:
    return parse_args(Toy, argv, "toy", "A toy command.", **kwargs)


def test_yaml_then_key_value_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text("model_name_or_path: m\ntemperature: 0.5\nsplits: [validation]\nsystem: null\n")
    args = parse(str(config))
    assert (args.model_name_or_path, args.temperature, args.splits, args.system) == ("m", 0.5, ["validation"], None)
    args = parse(str(config), "temperature=0.7", "--infer-backend", "vllm", "splits=a,b")
    assert (args.temperature, args.infer_backend, args.splits) == (0.7, "vllm", ["a,b"])
    args = parse(str(config), "--temperature", "0.9", "temperature=0.7")  # given twice: the last one counts
    assert args.temperature == 0.7
    assert parse("--model_name_or_path=x").system == "be brief"


def test_positional_values_and_boolean_flags() -> None:
    args = parse("--dry_run", "a.yaml", "b.yaml", "model_name_or_path=m", positionals=("files*",), config_file=False)
    assert (args.dry_run, args.files) == (True, ["a.yaml", "b.yaml"])
    args = parse("a.yaml", "--dry_run", "false", "b.yaml", "--model_name_or_path", "m", positionals=("files*",),
                 config_file=False)  # fmt: skip
    assert (args.dry_run, args.files) == (False, ["a.yaml", "b.yaml"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "--model_name_or_path is required"),
        (("model_name_or_path=m", "temperature=warm"), "--temperature: invalid float value: 'warm'"),
        (("model_name_or_path=m", "infer_backend=tf"), "--infer_backend: invalid choice: 'tf'"),
        (("model_name_or_path=m", "--tempreature", "1"), "unknown option(s) --tempreature"),
        (("model_name_or_path=m", "tempreature=1"), "unknown option(s) --tempreature=1"),
        (("missing.yaml",), "config file missing.yaml: no such file"),
    ],
)
def test_one_line_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(CliError) as error:
        parse(*argv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_config_file_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model_name_or_path: m\ntempreature: 0.1\nsystem: null\nsplits: [a]\n")
    with pytest.raises(CliError, match=r"bad.yaml: unknown option\(s\) --tempreature"):
        parse(str(tmp_path / "bad.yaml"))
    (tmp_path / "nulls.yaml").write_text("model_name_or_path: m\nsystme: null\n")
    with pytest.raises(CliError, match=r"nulls.yaml: unknown option\(s\) systme"):
        parse(str(tmp_path / "nulls.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(CliError, match="expected a mapping"):
        parse(str(tmp_path / "list.yaml"))
    (tmp_path / "latin1.yaml").write_bytes("model_name_or_path: m\nsystem: café\n".encode("latin-1"))
    with pytest.raises(CliError) as error:  # not UTF-8: one line naming the file, not a UnicodeDecodeError
        parse(str(tmp_path / "latin1.yaml"))
    assert "latin1.yaml: cannot be read" in str(error.value) and "utf-8" in str(error.value)
    assert "\n" not in str(error.value)


def test_help_lists_every_option_with_its_default(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("-h")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(Toy):
        assert f"--{field.name}" in out
    assert "(default: 0.0)" in out and "(default: auto)" in out and "(default: ['train', 'test'])" in out


def help_options(text: str) -> dict[str, str]:
    r"""``--name`` -> its help line, from argparse's help (one line per option at a wide terminal)."""
    return {match[0]: match[1] for match in re.findall(r"^  (--\w+)\b[^\n]*?\s{2,}(\S[^\n]*)$", text, re.M)}


@pytest.mark.slow
def test_installed_wheel_runs_every_command(tmp_path: Path) -> None:
    r"""Built, installed into its own site directory beside the test environment, and run from there."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("llamafactory_wspo-*.whl")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    command = site / "bin" / "llamafactory-wspo"
    work = tmp_path / "elsewhere"  # not the checkout: nothing of it on the path or in the current folder
    work.mkdir()
    env = base_env(PYTHONPATH=str(site), COLUMNS="2000")

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(command), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
        return proc

    where = subprocess.run(
        [sys.executable, "-c", "import llamafactory_wspo.cli.recipes as r; print(r.__file__, r.recipes_root())"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    module_file, recipes = where.stdout.split()
    assert Path(module_file).is_relative_to(site) and Path(recipes) == site / "llamafactory_wspo" / "yaml_recipes"

    overview = run("-h").stdout
    assert all(name in overview for name in COMMANDS)
    for name, (module_name, _) in COMMANDS.items():
        text = run(name, "-h").stdout
        fields = dataclasses.fields(__import__(f"llamafactory_wspo.cli.{module_name}", fromlist=["x"]).ARGUMENTS)
        options = help_options(text)
        for field in fields:
            assert f"--{field.name}" in options, (name, field.name, text[-2000:])
            assert "(default: " in options[f"--{field.name}"], (name, field.name, options[f"--{field.name}"])

    shipped = sorted(path.relative_to(ROOT / "yaml_recipes") for path in (ROOT / "yaml_recipes").rglob("*.yaml"))
    listed = run("recipes", "list").stdout.splitlines()
    assert [Path(line.split()[0]).relative_to("yaml_recipes") for line in listed] == shipped
    assert all(re.search(r"stage=\w+ model=\S+ dataset=\S+", line) for line in listed)

    run("recipes", "copy", "out")
    copied = work / "out" / "yaml_recipes"
    files = sorted(p.relative_to(ROOT / "yaml_recipes") for p in (ROOT / "yaml_recipes").rglob("*") if p.is_file())
    assert sorted(p.relative_to(copied) for p in copied.rglob("*") if p.is_file()) == files
    assert all(filecmp.cmp(ROOT / "yaml_recipes" / file, copied / file, shallow=False) for file in files)
    assert (copied / "data" / "dataset_info.json").is_file()
    again = subprocess.run([str(command), "recipes", "copy", "out"], cwd=work, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr
