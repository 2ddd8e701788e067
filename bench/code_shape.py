"""Lines per runtime module and the longest functions, to keep the layout honest.

    .venv/bin/python bench/code_shape.py [--top 15]

Runtime modules are the ``*.py`` files of the plugin folder and its packages (``tests/`` and
``bench/`` excluded). A function's length is its line span in the source (decorators excluded,
docstring included), nested functions counted on their own.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_RUNTIME = {"tests", "bench", ".venv", "data", "reports", ".git"}


def runtime_modules(root: Path = REPO) -> list[Path]:
    """Every runtime ``.py`` file under ``root``, sorted by path."""
    return sorted(p for p in root.rglob("*.py")
                  if not NOT_RUNTIME.intersection(p.relative_to(root).parts))


def function_spans(path: Path) -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    spans: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                spans.append((child.end_lineno - child.lineno + 1, name))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
    visit(tree, "")
    return spans


def main(argv: list[str] | None = None) -> int:
    """Print lines per module and the ``--top`` longest functions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    modules = runtime_modules()
    total = 0
    print("lines  module")
    for path in sorted(modules, key=lambda p: -len(p.read_text(encoding="utf-8").splitlines())):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        total += lines
        print(f"{lines:5d}  {path.relative_to(REPO)}")
    print(f"{total:5d}  total in {len(modules)} modules")
    spans = [(n, f"{p.relative_to(REPO)}:{name}") for p in modules for n, name in function_spans(p)]
    spans.sort(reverse=True)
    print(f"\nlongest functions (of {len(spans)}):")
    for n, name in spans[:args.top]:
        print(f"{n:5d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
