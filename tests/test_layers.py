"""Data flows one way: ingest -> kbcore store -> retrieval -> answering (llm) -> app, with the runtime (engine)
below the answering logic. Every import in every module, lazy ones inside functions included, keeps to it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What each package may import from the others.
ALLOWED = {
    "kbcore": set(),
    "ingest": {"kbcore"},
    "retrieval": {"kbcore"},
    "engine": {"kbcore"},
    "llm": {"kbcore", "retrieval", "engine"},
    "finetune": {"kbcore", "retrieval", "engine", "llm"},
    "app": {"kbcore", "ingest", "retrieval", "engine", "llm"},
}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = {f"{path.relative_to(REPO)} imports {sorted(imported_packages(path) - ALLOWED[package] - {package})}"
             for path in (REPO / package).rglob("*.py") if imported_packages(path) - ALLOWED[package] - {package}}
    assert not wrong, sorted(wrong)
