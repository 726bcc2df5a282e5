r"""How every ``llamafactory-wspo`` subcommand reads its arguments: the conventions of ``llamafactory-cli``.

An argument dataclass (one field per option, each with a ``help`` string) is turned into options by
``transformers.HfArgumentParser``, as LLaMA-Factory does. A command line may mix, in any order after the subcommand:

* a YAML (or JSON) file as the first argument, whose keys are option names;
* ``key=value`` pairs and ``--key value`` / ``--key=value`` flags (kebab-case spelling accepted), which override
  the file (as ``llamafactory-cli train recipe.yaml key=value`` does); an option given twice takes the last value;
* positional values, for the commands that name some (e.g. ``eval-xsum PREDICTIONS``).

``-h`` lists every option with its default. Errors follow one convention: :class:`CliError`, printed as one line
``llamafactory-wspo <command>: error: <option>: <what is wrong and the fix>``, exit code 2, before any model loads.
"""

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..hub import offline_message


PROG = "llamafactory-wspo"
USAGE_ERROR = 2
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
BOOL_WORDS = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}
KEY_VALUE = re.compile(r"^([A-Za-z_][\w-]*)=(.*)$", re.DOTALL)
T = TypeVar("T")


class CliError(Exception):
    r"""A usage error: one line that names the option and the fix (printed by :func:`run_command`, exit code 2)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    r"""Every option with its default; the description's examples kept as written."""


class _OneLineParser:
    r"""Mixin turning argparse's multi-line usage errors into a :class:`CliError`."""

    def error(self, message: str):  # argparse's hook for every parse error
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].strip()
            message = f"unknown option(s) {unknown}: {self._close_options(unknown)}`{self.prog} -h` lists the options"
        elif message.startswith("argument "):
            message = message[len("argument ") :]
        raise CliError(re.sub(r"(--\w+)/--[\w-]+", r"\1", message))  # `--top_p/--top-p: ...` -> `--top_p: ...`

    def _close_options(self, unknown: str) -> str:
        r"""``did you mean --max_new_tokens? `` for the first unknown option that is close to a known one."""
        import difflib

        known = [name[2:] for action in self._actions for name in action.option_strings if name.startswith("--")]
        for token in unknown.split():
            if token.startswith("--"):
                name = token[2:].split("=", 1)[0]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
                if close:
                    return f"did you mean {close[0]}? "
        return ""


def _make_parser(cls: type, prog: str, description: str, explicit_only: bool) -> argparse.ArgumentParser:
    from transformers import HfArgumentParser

    parser_cls = type("_Parser", (_OneLineParser, HfArgumentParser), {})
    parser = parser_cls(  # allow_abbrev: `max_new_token=5` is refused, never taken for `max_new_tokens`
        cls, prog=prog, description=description, add_help=False, formatter_class=_HelpFormatter, allow_abbrev=False
    )
    if explicit_only:  # only the options actually given appear in the namespace; requirements are checked later
        for action in parser._actions:
            action.default = argparse.SUPPRESS
            action.required = False
    return parser


def _config_tokens(config: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    r"""Flag tokens for the scalar and list values of a config file; its ``null`` values, kept as they are."""
    tokens: list[str] = []
    nulls: dict[str, Any] = {}
    for key, value in config.items():
        if value is None:
            nulls[key] = None
        elif isinstance(value, list):
            tokens += [f"--{key}", *map(_scalar, value)] if value else []
        elif isinstance(value, dict):
            raise CliError(f"{key}: expected a single value or a list, got a mapping")
        else:
            tokens.append(f"--{key}={_scalar(value)}")
    return tokens, nulls


def _scalar(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def read_config(path: str) -> dict[str, Any]:
    r"""The keys of a YAML or JSON config file."""
    file = Path(path)
    if not file.is_file():
        raise CliError(f"config file {path}: no such file")
    import yaml

    try:  # UnicodeDecodeError is a ValueError: a file that is not UTF-8 text
        text = file.read_text(encoding="utf-8")
        config = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise CliError(f"config file {path}: cannot be read ({' '.join(str(err).split())})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise CliError(f"config file {path}: expected a mapping of option names to values")
    return config


def split_command_line(
    argv: Sequence[str],
    positionals: Sequence[str] = (),
    config_file: bool = True,
    bool_options: Collection[str] = (),
) -> tuple[str | None, list[str], list[str]]:
    r"""``(config file, positional values as --name=value, every other token with key=value as --key=value)``.

    A value right after ``--key`` belongs to it, except after a flag of ``bool_options``, which takes one only when
    it reads as a boolean (``--dry_run recipe.yaml``: a flag, then a positional value).
    """
    argv = list(argv)
    config = None
    # A command whose positional values may be .json files (export-alpaca-eval) takes YAML config files only.
    suffixes = CONFIG_SUFFIXES[:2] if positionals else CONFIG_SUFFIXES
    if config_file and argv and not argv[0].startswith("-") and argv[0].endswith(suffixes):
        config = argv.pop(0)

    placed: list[str] = []
    tokens: list[str] = []
    free = list(positionals)
    rest_values: list[str] = []
    previous_takes_value = False
    for token in argv:
        match = KEY_VALUE.match(token)
        if previous_takes_value == "bool" and token.lower() in BOOL_WORDS:
            tokens.append(token)
            previous_takes_value = False
        elif token.startswith("-"):
            tokens.append(token)
            previous_takes_value = token.startswith("--") and "=" not in token
            if previous_takes_value and token[2:].replace("-", "_") in bool_options:
                previous_takes_value = "bool"
        elif previous_takes_value == "bool":
            previous_takes_value = False
            if free and free[0].endswith("*"):
                rest_values.append(token)
            elif free:
                placed.append(f"--{free.pop(0)}={token}")
            else:
                tokens.append(token)
        elif match and not previous_takes_value:
            tokens.append(f"--{match.group(1)}={match.group(2)}")
        elif free and not previous_takes_value:
            if free[0].endswith("*"):  # the last positional takes every remaining value (a list option)
                rest_values.append(token)
            else:
                placed.append(f"--{free.pop(0)}={token}")
        else:
            tokens.append(token)
            previous_takes_value = False
    if rest_values:
        placed += [f"--{free[0].rstrip('*')}", *rest_values]
    return config, placed, tokens


def parse_args(
    cls: type[T],
    argv: Sequence[str],
    prog: str,
    description: str = "",
    positionals: Sequence[str] = (),
    config_file: bool = True,
    epilog: str = "",
) -> T:
    r"""``cls`` from a command line (rules in the module docstring); ``-h`` prints the help and exits 0."""
    if any(token in ("-h", "--help") for token in argv):
        parser = _make_parser(cls, prog, description, explicit_only=False)
        usage = f"{prog} [CONFIG.yaml] [key=value ...] [--key value ...]"
        if positionals:
            names = " ".join(name.rstrip("*").upper() + (" ..." if name.endswith("*") else "") for name in positionals)
            usage = f"{prog} {names} [key=value ...] [--key value ...]"
        parser.usage = usage
        parser.epilog = epilog or None
        print(parser.format_help())
        raise SystemExit(0)

    parser = _make_parser(cls, prog, description, explicit_only=True)
    bool_options = {
        name
        for field in dataclasses.fields(cls)
        if field.type in (bool, bool | None)
        for name in (field.name, f"no_{field.name}")
    }
    config_path, placed, tokens = split_command_line(argv, positionals, config_file, bool_options)
    values: dict[str, Any] = {}
    if config_path is not None:
        config_tokens, nulls = _config_tokens(read_config(config_path))
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(nulls) - known)
        if unknown:
            raise CliError(f"{config_path}: unknown option(s) {', '.join(unknown)}: `{prog} -h` lists the options")
        try:
            values.update(vars(parser.parse_args(config_tokens)))
        except CliError as err:
            raise CliError(f"{config_path}: {err}") from None
        values.update(nulls)
    values.update(vars(parser.parse_args(placed + tokens)))

    missing = [
        field.name
        for field in dataclasses.fields(cls)
        if field.name not in values
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    ]
    if missing:
        name = missing[0]
        spelled = name.upper() if name in {p.rstrip("*") for p in positionals} else f"--{name}"
        raise CliError(f"{spelled} is required: {_help_of(cls, name)} (`{prog} -h` lists the options)")
    args = cls(**values)
    check = getattr(args, "check", None)
    if check is not None:
        check()
    return args


def _help_of(cls: type, name: str) -> str:
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field.metadata.get("help", "").rstrip(".")
    return ""


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:  # noqa: A002 (as in argparse)
    r"""A dataclass field with its help string (``default_factory`` for lists via ``kwargs``)."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def check_length_options(length_min: int, length_max: int) -> None:
    r"""The length reward's range (``--length_min``, ``--length_max``) as one command-line error."""
    from ..length_reward import check_length_range

    try:
        check_length_range(length_min, length_max)
    except ValueError:
        raise CliError(
            f"--length_min {length_min} --length_max {length_max}: need 0 <= length_min < length_max"
        ) from None


def run_command(prog: str, main: Callable[[], int | None]) -> int:
    r"""Run ``main``; a :class:`CliError`, or a model or data set that the hub cannot give offline, becomes one line
    on stderr and exit code 2."""
    try:
        return main() or 0
    except CliError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as err:
        message = offline_message(err)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return USAGE_ERROR
