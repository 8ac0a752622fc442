"""The benchmark measures the job through its public functions: a private name it reached into
could be renamed or change meaning without the job's tests noticing."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kgg", "bench")


def _private_uses(source: str) -> list[str]:
    """`module._name` and `from module import _name` for the project's own modules."""
    tree = ast.parse(source)
    modules: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_finder_sees_both_kinds_of_private_use() -> None:
    source = "from kgg.job import train as t\nfrom bench.x import _y\nt._fit()\n"
    assert sorted(_private_uses(source)) == ["from bench.x import _y", "t._fit"]


def test_bench_uses_no_private_name_of_the_project() -> None:
    uses = {
        path.name: found
        for path in sorted((ROOT / "bench").glob("*.py"))
        if (found := _private_uses(path.read_text()))
    }
    assert uses == {}
