"""How the scripts read their command line.

Options are spelt in snake_case, like LLaMA-Factory's own (``--max_new_tokens``, ``--dataset_dir``); the
kebab-case spelling (``--max-new-tokens``) is accepted as well.
"""

import argparse
import sys
from collections.abc import Sequence


def snake_case_options(argv: Sequence[str]) -> list[str]:
    r"""``argv`` with every long option name (the part before ``=``) in snake_case; nothing after ``--``."""
    out: list[str] = []
    for position, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[position:])
            break

        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value

        out.append(arg)

    return out


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    r"""``parser.parse_args`` accepting both spellings of the options."""
    return parser.parse_args(snake_case_options(sys.argv[1:] if argv is None else argv))
