"""The core stays pure: no sockets, no asyncio, no files, no logging in its modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mssgate"
CORE = [
    "model.py",
    "classify.py",
    "domainlist.py",
    "mime.py",
    "schema.py",
    "policy.py",
    "transaction.py",
    "decide.py",
    "texts.py",
    "wire.py",
    "commands.py",
    *[f"rules/{p.name}" for p in (PACKAGE / "rules").glob("*.py")],
]
FORBIDDEN = {
    "asyncio",
    "aiosmtpd",
    "aiosmtplib",
    "socket",
    "yaml",
    "logging",
    "os",
    "pathlib",
    "subprocess",
    "shutil",
    "io",
    "dns",
    "ssl",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
            found.add("open()")
    return found


ALLOWED_THIRD_PARTY = {"idna", "pydantic", "stringzilla", "mssgate"}
"""Pure computations: domain names, validation, searches and counts over bytes."""


@pytest.mark.parametrize("module", CORE)
def test_core_module_is_pure(module: str) -> None:
    found = _imports(PACKAGE / module)
    bad = found & (FORBIDDEN | {"open()"})
    assert not bad, f"{module} imports {sorted(bad)}"
    third_party = {
        name
        for name in found - {"open()"}
        if name not in sys.stdlib_module_names and name not in ALLOWED_THIRD_PARTY
    }
    assert not third_party, f"{module} imports {sorted(third_party)}"
