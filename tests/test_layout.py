"""The package's layout: no import cycle (imports inside functions count: they run), and nothing in the wheel that
only the tests or the project's scripts import.

Both are read from the source with ``ast``, so they hold for every code path, not only for the ones a test runs.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "llamafactory_wspo"
NAME = PACKAGE.name


def _module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    r"""Every import statement of ``tree``, at any depth, except those under ``if TYPE_CHECKING:`` (they never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    r"""Module -> the package's modules that executing it imports (with the packages whose ``__init__`` they run)."""
    modules = {_module_name(path, root): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                found = [source]
                found += [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
            for target in found:
                if target.split(".")[0] != root.name:
                    continue
                while target not in modules:  # `import a.b.name` of an attribute: the module that defines it
                    target = target.rpartition(".")[0]
                # Executing `target` first runs the `__init__` of each package above it (except those above `module`).
                targets |= {target, *_ancestors(target)} - {module, *_ancestors(module)}
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    r"""One import cycle of ``graph`` (its modules, the first repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


# Imports made by name at run time, which ``ast`` does not see as imports: the command line's sub-commands and
# LLaMA-Board's counterpart modules (both `importlib.import_module` of a module named in a table).
def _dynamic_edges() -> dict[str, set[str]]:
    from llamafactory_wspo import cli, webui

    return {
        f"{NAME}.cli": {f"{NAME}.cli.{module}" for module, _ in cli.COMMANDS.values()},
        f"{NAME}.webui": {f"{NAME}.webui{relative}" for relative in webui._COUNTERPARTS.values()},
    }


# What runs a module of the wheel: the `.pth` line (`import llamafactory_wspo._autoload`), the console script
# (`llamafactory_wspo.cli:entry_point`), and `python -m llamafactory_wspo.cli`.
ENTRY_POINTS = (f"{NAME}._autoload", f"{NAME}.cli", f"{NAME}.cli.__main__")


def unreachable(graph: dict[str, set[str]], dynamic: dict[str, set[str]]) -> set[str]:
    r"""The modules that no entry point reaches: only a test or a script can import them."""
    seen, stack = set(), list(ENTRY_POINTS)
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        stack.extend(graph.get(module, set()) | dynamic.get(module, set()) | set(_ancestors(module)))
    return set(graph) - seen


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_every_module_of_the_wheel_is_reached_from_an_entry_point():
    left = unreachable(import_graph(), _dynamic_edges())
    assert not left, f"modules that only tests or scripts import (move them to tests/helpers/): {sorted(left)}"


def test_host_checks_import_nothing_of_ours():
    r"""The web UI and the patches read the checks; the checks read only the host."""
    assert import_graph()[f"{NAME}.host.checks"] <= {f"{NAME}.host"}


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, ["a", "b", "a"]),
        (
            {
                "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n",
                "b.py": "from .a import y\n",
            },
            None,
        ),
        (
            {"sub/__init__.py": "from .c import z\n", "sub/c.py": "", "a.py": "from .sub.c import z\n", "b.py": ""},
            None,
        ),
        (
            {"sub/__init__.py": "from ..a import x\n", "sub/c.py": "", "a.py": "def f():\n    from .sub.c import z\n"},
            ["a", "sub", "a"],
        ),
    ],
    ids=["inside-a-function", "type-checking-only", "package-init-of-a-child", "through-a-package-init"],
)
def test_the_cycle_finder(tmp_path, files, expected):
    r"""The finder on small packages: a cycle through an import inside a function counts, one under ``TYPE_CHECKING``
    does not, and importing a submodule runs its package's ``__init__``."""
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    cycle = find_cycle(import_graph(root))
    assert (None if cycle is None else [module.removeprefix("pkg.") for module in cycle]) == expected


def test_unreachable_names_a_module_only_tests_import(tmp_path):
    graph = {f"{NAME}._autoload": {f"{NAME}.host"}, f"{NAME}.host": set(), f"{NAME}.tiny": set()}
    assert unreachable(graph, {}) == {f"{NAME}.tiny"}
