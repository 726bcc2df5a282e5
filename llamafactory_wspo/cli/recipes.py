r"""``llamafactory-wspo recipes``: the recipes of both papers, shipped inside the package.

The repository keeps ``yaml_recipes/`` at its top level; the wheel carries the same tree as
``llamafactory_wspo/yaml_recipes`` (hatch ``force-include``). :func:`recipes_root` finds whichever is there.
"""

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .args import CliError, option, parse_args, run_command


PROG = "llamafactory-wspo recipes"
DESCRIPTION = r"""The training recipes of the WSPO and WPO papers (8 GPUs, DeepSpeed ZeRO-3), shipped with the package.

  llamafactory-wspo recipes list              # one line per recipe: path, stage, model, data set
  llamafactory-wspo recipes copy .            # writes ./yaml_recipes/ (recipes, data/dataset_info.json, deepspeed/)
  FORCE_TORCHRUN=1 NPROC_PER_NODE=8 llamafactory-cli train yaml_recipes/xsum/weak_sft.yaml

The recipes name their data sets and DeepSpeed config relative to the folder holding yaml_recipes/, so run
llamafactory-cli from that folder. `llamafactory-wspo smoke yaml_recipes/<recipe>.yaml` tries one on a CPU.
"""


def recipes_root() -> Path:
    r"""The ``yaml_recipes`` tree: inside the installed package, or at the top of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "yaml_recipes", package.parent / "yaml_recipes"):
        if (candidate / "data" / "dataset_info.json").is_file():
            return candidate
    raise CliError("the recipes are not installed with this package (no yaml_recipes/ found); reinstall it")


def recipe_files(root: Path | None = None) -> list[Path]:
    root = root or recipes_root()
    return sorted(path for path in root.rglob("*.yaml") if path.is_file())


def describe(path: Path, root: Path) -> str:
    r"""One line: the recipe's path, stage, model and data set."""
    import yaml

    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    fields = [
        f"stage={config.get('stage', '?')}",
        f"model={config.get('model_name_or_path', '?')}",
        f"dataset={config.get('dataset', '?')}",
    ]
    return f"yaml_recipes/{path.relative_to(root).as_posix():<48} {' '.join(fields)}"


@dataclass
class RecipesArguments:
    action: Literal["list", "copy"] = option(help="`list` the recipes, or `copy` them into `dir`.")
    dir: str | None = option(None, help="For `copy`: the folder that receives yaml_recipes/ (created if needed).")
    overwrite: bool = option(False, help="For `copy`: replace files that exist already.")

    def check(self) -> None:
        if self.action == "copy" and not self.dir:
            raise CliError("`recipes copy` needs the target folder: `llamafactory-wspo recipes copy DIR`")


def copy_recipes(target: Path, overwrite: bool = False) -> list[Path]:
    r"""Write the recipe tree to ``target/yaml_recipes``; refuses to replace existing files unless ``overwrite``."""
    root = recipes_root()
    destination = target / "yaml_recipes"
    files = [path for path in sorted(root.rglob("*")) if path.is_file() and "__pycache__" not in path.parts]
    existing = [
        destination / path.relative_to(root) for path in files if (destination / path.relative_to(root)).exists()
    ]
    if existing and not overwrite:
        raise CliError(f"{existing[0]} exists already ({len(existing)} files would be replaced): add --overwrite")
    for path in files:
        out = destination / path.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)
    return [destination / path.relative_to(root) for path in files]


def run(args: RecipesArguments) -> int:
    root = recipes_root()
    if args.action == "list":
        for path in recipe_files(root):
            print(describe(path, root))
        return 0
    written = copy_recipes(Path(args.dir), args.overwrite)
    print(f"wrote {len(written)} files to {Path(args.dir) / 'yaml_recipes'}")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command(
        PROG,
        lambda: run(
            parse_args(RecipesArguments, argv, PROG, DESCRIPTION, positionals=("action", "dir"), config_file=False)
        ),
    )


ARGUMENTS = RecipesArguments  # the options of this subcommand
