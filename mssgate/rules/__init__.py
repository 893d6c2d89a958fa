"""One small module per rule; each rule reads a Transaction and returns a Verdict or None."""

from __future__ import annotations

from collections.abc import Callable

from mssgate.model import Verdict
from mssgate.policy import Policy
from mssgate.transaction import Transaction

Rule = Callable[[Policy, Transaction], Verdict | None]
