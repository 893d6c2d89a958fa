"""The audit trail: one JSON line per decision, for the traceability of health documents.

Each :class:`~mssgate.events.DecisionEvent` becomes one line of JSON (keys in a fixed order,
see :func:`audit_record`). Every address is passed through
:func:`~mssgate.privacy.pseudonymise`, and INS-like numbers in free texts (the upstream's
answer, the Message-ID) are replaced the same way: no patient's INS number is ever written. The
event carries no message body, so none can reach the trail.

Writing goes through the stdlib's logging handlers, on a dedicated logger that is not part of
the logging hierarchy (so no ``basicConfig``, ``dictConfig`` or ``logging.disable`` elsewhere
can silence, duplicate or reformat the trail):

* ``file: "-"`` (or an explicit ``stream``): one write per line to that stream;
* a file with ``max_bytes > 0`` and ``backups > 0``: :class:`~logging.handlers.RotatingFileHandler`
  (``audit.jsonl``, ``audit.jsonl.1`` ... ``audit.jsonl.<backups>``); the size is checked
  before each line, so a line is never cut across two files;
* a file with ``max_bytes: 0`` (or ``backups: 0``): :class:`~logging.handlers.WatchedFileHandler`,
  which reopens the file when an external logrotate has moved it away.

A handler serialises its writes with its own lock, and each line is written with a single
``write`` of the line and its newline: lines from concurrent tasks or threads never interleave.
A write error is raised to the caller (the gateway's ``Observers`` logs it) instead of being
printed and forgotten as logging does by default.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from mssgate.events import DecisionEvent
from mssgate.privacy import pseudonymise
from mssgate.schema import AuditConfig

# An address-like token: it starts after a delimiter (the lookbehind keeps the scan linear on
# long texts without "@", which an upstream's answer may be).
_TOKEN = r"[^\s<>\"'(),;:\[\]]"
_EMAIL = re.compile(rf"(?<!{_TOKEN}){_TOKEN}+@{_TOKEN}+")
# A NIR (13) or INS matricule (15), with Corsica's 2A/2B, standing alone in a text.
_INS_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])[0-9]{5}(?:[0-9]{2}|2[AaBb])[0-9]{6}(?:[0-9]{2})?(?![A-Za-z0-9])"
)


def iso_time(timestamp: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds (``2025-03-01T08:15:02.127Z``)."""
    text = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def scrub(text: str | None, key: bytes) -> str | None:
    """A free text (upstream answer, Message-ID) with addresses and INS numbers pseudonymised."""
    if text is None:
        return None
    text = _EMAIL.sub(lambda m: pseudonymise(m.group(0), key), text)
    return _INS_TOKEN.sub(lambda m: pseudonymise(m.group(0), key), text)


def audit_record(event: DecisionEvent, key: bytes) -> dict[str, Any]:
    """The audit trail's record of one decision, with every address pseudonymised."""
    return {
        "time": iso_time(event.time),
        "session": event.session,
        "peer": event.peer,
        "user": event.user,
        "stage": event.stage,
        "sender": pseudonymise(event.sender, key) if event.sender else event.sender,
        "recipients": [
            {"address": pseudonymise(address, key), "class": kind}
            for address, kind in event.recipients
        ],
        "rule": event.rule,
        "action": event.action,
        "routes": list(event.routes),
        "smtp_code": event.smtp_code,
        "enhanced_code": event.enhanced_code,
        "upstream": scrub(event.upstream, key),
        "size_in": event.size_in,
        "size_out": event.size_out,
        "message_id": scrub(event.message_id, key),
        "signature_added": event.signature_added,
        "duration_ms": round(event.duration * 1000, 1),
    }


class _RaiseOnError(logging.Handler):
    """Write errors propagate (logging's default prints them to stderr and drops the line)."""

    def handleError(self, record: logging.LogRecord) -> None:
        """Re-raise the error being handled."""
        # Always called from inside an ``except`` block of ``emit``.
        raise


class _StreamHandler(_RaiseOnError, logging.StreamHandler[TextIO]):
    """Standard output, or a stream given by the caller."""


class _RotatingHandler(_RaiseOnError, logging.handlers.RotatingFileHandler):
    """Size-based rotation by the gateway itself."""


class _WatchedHandler(_RaiseOnError, logging.handlers.WatchedFileHandler):
    """No rotation here; reopens the file after an external logrotate."""


class _RawFormatter(logging.Formatter):
    """The record's message as is: the JSON line, nothing added."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line."""
        return record.getMessage()


class AuditTrail:
    """An observer that writes one JSON line per decision to a file or a stream.

    Only :meth:`decision` does work; connections, relays and reloads are not audited.
    """

    def __init__(self, config: AuditConfig, key: bytes, stream: TextIO | None = None) -> None:
        """Open the trail: ``stream`` if given, else ``config.file`` (``-``: standard output)."""
        self.config = config
        self.key = key
        handler: logging.Handler
        if stream is not None:
            handler = _StreamHandler(stream)
        elif config.file == "-":
            handler = _StreamHandler(sys.stdout)
        elif config.max_bytes > 0 and config.backups > 0:
            handler = _RotatingHandler(
                config.file,
                maxBytes=config.max_bytes,
                backupCount=config.backups,
                encoding="utf-8",
            )
        else:
            handler = _WatchedHandler(config.file, encoding="utf-8")
        handler.setFormatter(_RawFormatter())
        self.handler = handler
        # A logger outside the hierarchy: never propagates, never touched by logging config.
        self.logger = logging.Logger("mssgate.audit", logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(handler)
        self.lines = 0
        """Lines written since the trail was opened."""

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as one JSON line (a single write: never interleaved nor cut)."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        entry = self.logger.makeRecord(
            self.logger.name, logging.INFO, "mssgate.audit", 0, line, (), None
        )
        # handle(), not info(): a global logging.disable() must not switch the trail off.
        self.logger.handle(entry)
        self.lines += 1

    def decision(self, event: DecisionEvent) -> None:
        """Write the decision's line."""
        self.write(audit_record(event, self.key))

    def connection(self, opened: bool, refused: bool = False) -> None:
        """Not audited."""

    def relay(self, route: str, seconds: float, outcome: str) -> None:
        """Not audited."""

    def reload(self, ok: bool) -> None:
        """Not audited."""

    def flush(self) -> None:
        """Push buffered lines to the file or stream."""
        self.handler.flush()

    def close(self) -> None:
        """Flush and close the file (a caller's stream or standard output stays open)."""
        self.handler.flush()
        self.logger.removeHandler(self.handler)
        self.handler.close()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ReadStats:
    """What :func:`read_audit` saw: records returned, blank and unreadable lines skipped."""

    records: int = 0
    blank: int = 0
    invalid: int = 0


def read_audit(lines: Iterable[str], stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """The records of an audit trail, skipping blank lines and lines that are not a JSON object.

    A line cut short (a crash in the middle of a write, a truncated copy) is skipped and counted
    in ``stats.invalid``; blank lines in ``stats.blank``.
    """
    counts = stats if stats is not None else ReadStats()
    for line in lines:
        text = line.strip()
        if not text:
            counts.blank += 1
            continue
        try:
            record = json.loads(text)
        except ValueError:
            counts.invalid += 1
            continue
        if not isinstance(record, dict):
            counts.invalid += 1
            continue
        counts.records += 1
        yield record
