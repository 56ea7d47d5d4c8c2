"""Every public module says what it exports, and exports what it says (httpx's pattern).

A public module is one whose dotted name has no part starting with ``_``: ``gpuledger``, the
rooms' ``__init__`` (their internal API: ``gpuledger.ledger``, ``gpuledger.sidecar``, ...), the
platform adapters, ``gpuledger.testing``. For each, ``__all__`` has no duplicates, every name in
it resolves (lazy ones included), and every public class or function the module holds is in it.
"""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import pytest

from .test_layering import MODULES

PUBLIC = sorted(
    name for name in MODULES if not any(part.startswith("_") for part in name.split("."))
)
OPTIONAL = {  # adapters whose platform SDK is an extra: checked where it is installed
    "gpuledger.instrumentation.modal": "modal",
    "gpuledger.instrumentation.cog": "cog",
    "gpuledger.instrumentation.potassium": "potassium",
}


def _module(name: str) -> types.ModuleType:
    needs = OPTIONAL.get(name)
    if needs is not None:
        pytest.importorskip(needs)
    return importlib.import_module(name)


def test_the_public_modules_are_found() -> None:
    assert {"gpuledger", "gpuledger.ledger", "gpuledger.sidecar", "gpuledger.cli"} <= set(PUBLIC)
    assert all(Path(MODULES[name]).exists() for name in PUBLIC)


def _defined_in(value: object, name: str) -> bool:
    """Defined in module ``name``, or (a package) in one of its private modules."""
    where = getattr(value, "__module__", "") or ""
    return where == name or where.startswith(f"{name}._")


@pytest.mark.parametrize("name", PUBLIC, ids=str)
def test_all_is_what_the_module_exports(name: str) -> None:
    module = _module(name)
    exported = list(getattr(module, "__all__", ()))
    assert exported, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for each in exported:
        assert getattr(module, each, None) is not None or each in vars(module), (
            f"{name}.__all__ names {each!r}, which the module does not have"
        )
    held = sorted(
        each
        for each, value in vars(module).items()
        if not each.startswith("_")
        and isinstance(value, type | types.FunctionType)
        and _defined_in(value, name)
    )
    missing = [each for each in held if each not in exported]
    assert missing == [], f"{name} holds public names missing from __all__"
