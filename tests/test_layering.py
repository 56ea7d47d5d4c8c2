"""The architecture, kept true: which room may import which, and nothing private across rooms.

gpuledger's modules live in rooms (see docs/architecture.md): the core (``gpuledger._*``: the
record, settings, the request path, the writer, sinks), and the subpackages ``ledger``,
``whatif``, ``sidecar``, ``cli``, ``testing``, ``exporters`` and ``instrumentation``. This test
reads every module's imports (the AST: module-level and function-local ones alike) and checks:

- **the layering**: a room imports only the rooms below it (:data:`ALLOWED`);
- **no cycle**, function-local imports included: a local import may defer a cost (OpenTelemetry,
  psycopg) but never dodge a cycle;
- **nothing private across rooms**: no ``_name`` imported or read from another room, and no
  other room's private module imported (a subpackage is entered through its ``__init__``; the
  core's modules are the package's internal API, their public names only);
- **no module imports the package's ``__init__``** for a name it could import from where it is
  defined (``__init__`` imports the public API, so that would be a cycle at import).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"agent": "gpuledger", "exporters": "gpuledger.exporters"}
FOLDERS["instrumentation"] = "gpuledger.instrumentation"

CORE = "core"
ALLOWED: dict[str, set[str]] = {
    CORE: {CORE, "billing", "ledger", "exporters", "sidecar", "instrumentation"},
    "billing": {CORE},
    "exporters": {CORE},
    "ledger": {CORE, "billing"},
    "instrumentation": {CORE},
    "whatif": {CORE, "billing", "ledger"},
    "reconcile": {CORE, "billing", "ledger"},
    "sidecar": {CORE, "billing", "ledger", "exporters"},
    "testing": {CORE, "ledger", "exporters"},
    "cli": {
        CORE,
        "billing",
        "ledger",
        "exporters",
        "sidecar",
        "whatif",
        "instrumentation",
        "reconcile",
    },
}
"""Room -> the rooms it may import. The core imports ``ledger`` (the ledger sink), ``exporters``
(set-up of the providers), ``sidecar`` (the client) and ``instrumentation`` (``instrument()``)
only where those are used, never at ``import gpuledger``: ``test_import_is_light`` checks that."""


@dataclasses.dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported
    names: tuple[str, ...]  # names taken from it (``from target import a, b``), if any
    line: int
    local: bool  # inside a function
    typing_only: bool  # under ``if TYPE_CHECKING:``


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = tuple(part for part in parts if part != "__init__")
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and not parts[1].startswith("_"):
        return parts[1]
    return CORE


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_blocks = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    functions = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        local, typing_only = id(node) in functions, id(node) in typing_blocks
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gpuledger"):
                    yield Import(module, alias.name, (), node.lineno, local, typing_only)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpuledger"):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            base = node.module or ""
            plain: list[str] = []
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:  # `from gpuledger import _guard`: a module
                    yield Import(
                        module, f"{base}.{alias.name}", (), node.lineno, local, typing_only
                    )
                else:
                    plain.append(alias.name)
            if plain:
                yield Import(module, base, tuple(plain), node.lineno, local, typing_only)


IMPORTS = [each for module, path in MODULES.items() for each in _imports(module, path)]


def _where(each: Import) -> str:
    return f"{MODULES[each.module].relative_to(ROOT)}:{each.line}"


def test_every_import_names_a_module_of_ours() -> None:
    unknown = [f"{_where(each)}: {each.target}" for each in IMPORTS if each.target not in MODULES]
    assert unknown == []


def test_rooms_import_only_the_rooms_below_them() -> None:
    """The layering of docs/architecture.md."""
    wrong = [
        f"{_where(each)}: {room(each.module)} imports {each.target} ({room(each.target)})"
        for each in IMPORTS
        if room(each.target) not in ALLOWED[room(each.module)] | {room(each.module)}
    ]
    assert wrong == []


def test_no_import_cycle_even_through_local_imports() -> None:
    graph: dict[str, set[str]] = {}
    for each in IMPORTS:
        if not each.typing_only and each.target != each.module:
            graph.setdefault(each.module, set()).add(each.target)
    # A subpackage's __init__ importing its own modules is how a package is built, not a cycle
    # (those modules never import their __init__: test_no_module_imports_its_package_init).
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_nothing_private_crosses_a_room() -> None:
    wrong: list[str] = []
    for each in IMPORTS:
        if room(each.module) == room(each.target):
            continue
        last = each.target.rsplit(".", 1)[-1]
        if room(each.target) != CORE and last.startswith("_"):
            wrong.append(f"{_where(each)}: imports {each.target}, private to its room")
        wrong += [
            f"{_where(each)}: imports {name} from {each.target}"
            for name in each.names
            if name.startswith("_") and not name.startswith("__")
        ]
    assert wrong == []


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_no_private_attribute_of_another_room_is_read(module: str) -> None:
    """``agent_module._agent``: a private name read through a module bound by an import."""
    bound: dict[str, str] = {}
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpuledger"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in MODULES and room(target) != room(module):
                    bound[alias.asname or alias.name] = target
    reads = [
        f"{module}:{node.lineno}: {node.value.id}.{node.attr} ({bound[node.value.id]})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in bound
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]
    assert reads == []


def test_no_module_imports_its_package_init() -> None:
    """``from gpuledger import X`` inside gpuledger: ``__init__`` imports the public API, so the
    name must come from the module that defines it."""
    wrong = [
        f"{_where(each)}: from {each.target} import {', '.join(each.names)}"
        for each in IMPORTS
        if each.names
        and MODULES[each.target].name == "__init__.py"
        and each.module.startswith(each.target + ".")
    ]
    assert wrong == []


LONG = 750
"""Lines past which a module states at its top why it is one module (issue 12: ~700)."""


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_a_long_module_says_why_it_is_one(module: str) -> None:
    text = MODULES[module].read_text(encoding="utf-8")
    if text.count("\n") > LONG:
        docstring = ast.get_docstring(ast.parse(text)) or ""
        assert "Why one module" in docstring, f"{module}: {text.count(chr(10))} lines"
