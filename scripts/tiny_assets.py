"""Tiny, fully local assets for tests and the quickstart, from the command line.

    python scripts/tiny_assets.py all OUT_DIR --seed 0 [--model weak:32:1 --model strong:64:2 ...]
    python scripts/tiny_assets.py tokenizer OUT_DIR [--alt_vocab]
    python scripts/tiny_assets.py model OUT_DIR --tokenizer TOK_DIR --hidden_size 64 --num_layers 2
    python scripts/tiny_assets.py data OUT_DIR --num_train 256

The builders live in :mod:`tests.helpers.tiny_assets` (a word-level tokenizer, random Qwen2 models,
the toy data sets); this script only reads the command line.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # the checkout: tests.helpers
from _cli import parse_args  # noqa: E402

from tests.helpers.tiny_assets import (  # noqa: E402
    ALT_WORDS,
    DEFAULT_MODELS,
    DEFAULT_WORDS,
    ModelSpec,
    build_all,
    build_model,
    build_tokenizer,
    write_datasets,
)


def _model_spec(text: str) -> ModelSpec:
    try:
        return ModelSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)

    cmd_all = commands.add_parser("all", help="tokenizer(s), models and data sets under OUT_DIR")
    cmd_all.add_argument(
        "--model",
        dest="models",
        action="append",
        type=_model_spec,
        metavar="NAME:HIDDEN:LAYERS[:alt]",
        help="a model to build (repeatable; `alt`: other vocabulary); default weak:32:1 strong:64:2 alt_vocab:32:1:alt",
    )

    cmd_tok = commands.add_parser("tokenizer", help="a tokenizer")
    cmd_tok.add_argument("--alt_vocab", action="store_true", help="use the other vocabulary")

    cmd_model = commands.add_parser("model", help="a random Qwen2 model saved with its tokenizer")
    cmd_model.add_argument("--tokenizer", required=True, help="tokenizer directory")
    cmd_model.add_argument("--hidden_size", type=int, default=32)
    cmd_model.add_argument("--num_layers", type=int, default=1)
    cmd_model.add_argument("--num_heads", type=int, default=2)

    cmd_data = commands.add_parser("data", help="data sets and dataset_info.json")
    for cmd in (cmd_all, cmd_data):
        cmd.add_argument("--num_train", type=int, default=256)
        cmd.add_argument("--num_eval", type=int, default=64)

    for cmd in (cmd_all, cmd_tok, cmd_model, cmd_data):
        cmd.add_argument("out_dir")
        cmd.add_argument("--seed", type=int, default=0)

    args = parse_args(parser, argv)
    if args.command == "all":
        build_all(
            args.out_dir,
            seed=args.seed,
            models=args.models or DEFAULT_MODELS,
            num_train=args.num_train,
            num_eval=args.num_eval,
        )
    elif args.command == "tokenizer":
        build_tokenizer(args.out_dir, words=ALT_WORDS if args.alt_vocab else DEFAULT_WORDS, seed=args.seed)
    elif args.command == "model":
        build_model(
            args.out_dir,
            args.tokenizer,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            seed=args.seed,
        )
    else:
        write_datasets(args.out_dir, seed=args.seed, num_train=args.num_train, num_eval=args.num_eval)


if __name__ == "__main__":
    main()
