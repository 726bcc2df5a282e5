"""A weak model family for the cross-tokenizer quickstart: a tokenizer of another kind, trained on the tiny task.

    python scripts/demo/weak_family.py demo_runs/cross/assets/bpe --data demo_runs/cross/assets/data

writes ``tokenizer/`` (byte-level BPE by default, with a word-sized vocabulary: about 900 entries, each word of the
task one token, spaces attached as Llama-3 and Qwen attach them) and ``weak/``, a random Qwen2 model sized to it
(:func:`tests.helpers.tiny_tokenizers.build_weak_family`).
"""

import argparse
import sys
from pathlib import Path


sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]
from _cli import parse_args  # noqa: E402

from tests.helpers.tiny_tokenizers import KINDS, build_weak_family  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out_dir")
    parser.add_argument("--data", required=True, help="the tiny task's data directory (tiny_sft.json, ...)")
    parser.add_argument("--kind", choices=KINDS, default="byte_bpe", help="the tokenizer kind")
    parser.add_argument("--vocab_size", type=int, default=900, help="at most; the task's texts fill about 900")
    parser.add_argument("--hidden_size", type=int, default=48)
    parser.add_argument("--num_layers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's random weights")
    args = parse_args(parser)
    build_weak_family(
        args.out_dir,
        args.data,
        args.kind,
        args.vocab_size,
        models=(("weak", args.seed),),
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
    )
    print(f"weak model family saved to {args.out_dir}")


if __name__ == "__main__":
    main()
