"""Packaging hook: with ``MSSGATE_COMPILE=1`` in the environment, the pure core (address
classification, policy, MIME, decision, envelope commands, DATA reader) is compiled to C
extensions with mypyc, from the very sources mypy checks; a C compiler and the Python headers
are then needed.
Otherwise (the default, and always for editable installs) mssgate installs as plain Python.
Both builds behave the same: the test suite runs on each (scripts/test.sh)."""

from __future__ import annotations

import os
from typing import Any

from setuptools import setup

COMPILED = [
    "mssgate/model.py",
    "mssgate/commands.py",
    "mssgate/classify.py",
    "mssgate/policy.py",
    "mssgate/mime.py",
    "mssgate/transaction.py",
    "mssgate/decide.py",
    "mssgate/texts.py",
    "mssgate/wire.py",
    "mssgate/rules/__init__.py",
    "mssgate/rules/addresses.py",
    "mssgate/rules/forwards.py",
    "mssgate/rules/mixing.py",
    "mssgate/rules/patients.py",
    "mssgate/rules/senders.py",
    "mssgate/rules/trust_space.py",
]


def build_options() -> dict[str, Any]:
    """``setup()``'s extra arguments for this build."""
    if os.environ.get("MSSGATE_COMPILE") != "1":
        return {}
    try:
        from mypyc.build import mypycify
    except ImportError:
        # The build's first pass (PEP 517): ask for mypy; the build runs again with it.
        return {"setup_requires": ["mypy>=1.10"]}
    return {"ext_modules": mypycify(COMPILED, opt_level="3")}


setup(**build_options())
