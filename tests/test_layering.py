"""The platform adapters reach the agent through its internal API, never its private state.

A start of the layering the architecture asks for (issue 12): ``instrumentation/`` may import
gpuledger's private modules (``gpuledger._agent``) but not private names inside them
(``_agent._agent``, ``_agent_lock``): ``ensure_agent``, ``current_agent``, ``get_agent``,
``now_ns`` and ``install_exit_hooks`` are what an adapter needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = sorted((ROOT / "instrumentation").glob("*.py"))


def _private_reaches(path: Path) -> list[str]:
    """``module._name`` attribute reads and ``from gpuledger... import _name`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = {  # names bound to gpuledger modules: `from gpuledger import _agent as agent_module`
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpuledger")
        for alias in node.names
        if alias.name.startswith("_")
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpuledger."):
            found += [
                f"{path.name}:{node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name.startswith("_")
            ]
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")  # __file__, __name__: not private
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("path", ADAPTERS, ids=lambda path: path.name)
def test_adapters_use_no_private_names(path: Path) -> None:
    """Each adapter module reads no private name of another gpuledger module."""
    assert _private_reaches(path) == []
