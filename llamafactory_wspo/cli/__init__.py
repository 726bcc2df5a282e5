r"""``llamafactory-wspo``: the pipeline steps around the training stages, one subcommand per step.

Training itself stays ``llamafactory-cli train RECIPE.yaml``; this command prepares data, generates, scores,
evaluates, serves the length reward, ships the recipes and tries any recipe on a CPU. Each subcommand lives in its
own module here and reads its arguments like ``llamafactory-cli`` does (:mod:`.args`): a YAML file and/or
``key=value`` / ``--key value``; ``llamafactory-wspo <command> -h`` lists every option with its default.
"""

import importlib
import os
import sys
from collections.abc import Sequence


# subcommand -> (module, one-line description)
COMMANDS = {
    "prepare-xsum": ("prepare_xsum", "XSUM -> alpaca-format split files and their dataset_info.json entries"),
    "generate": ("generate", "responses to prompts (vLLM when installed, transformers otherwise); resumable"),
    "eval-xsum": ("eval_xsum", "XSUM summaries: length statistics, length reward, in-range share, ROUGE"),
    "export-alpaca-eval": ("export_alpaca_eval", "generate output -> AlpacaEval's model-outputs JSON"),
    "build-hybrid": ("build_hybrid", "WPO's hybrid preference data: sample, judge, pair; resumable"),
    "reward-server": ("reward_server", "the XSUM length reward over HTTP for reward_model_type: api"),
    "recipes": ("recipes", "the shipped recipes: `recipes list`, `recipes copy DIR`"),
    "smoke": ("smoke", "run any recipe for one optimiser step on the CPU with tiny models"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: llamafactory-wspo <command> [CONFIG.yaml] [key=value ...] [--key value ...]",
        "",
        "The pipeline steps of the WSPO and WPO papers around `llamafactory-cli train`.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()),
        "",
        "`llamafactory-wspo <command> -h` lists the options of a command with their defaults.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, *rest = argv
    if command not in COMMANDS:
        print(
            f"llamafactory-wspo: error: unknown command {command!r}: choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")
    return module.main(rest)


def entry_point() -> None:
    r"""The console script ``llamafactory-wspo``."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `llamafactory-wspo recipes list | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
