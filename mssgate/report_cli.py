"""``mssgate report``: the usage report of one or more audit trail files."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from mssgate.audit import ReadStats, read_audit
from mssgate.report import compute_indicators, render_html, render_text

EXIT_OK, EXIT_ERROR = 0, 2


def parse_since(text: str) -> datetime:
    """``--since YYYY-MM-DD`` as midnight UTC of that day."""
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"date invalide : {text!r} (format attendu : AAAA-MM-JJ)"
        ) from exc
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _rotation(path: Path) -> int:
    """The rotation number of ``audit.jsonl.N`` (or ``.N.gz``): higher is older; 0 otherwise."""
    name = path.name.removesuffix(".gz")
    suffix = name.rpartition(".")[2]
    return int(suffix) if suffix.isdigit() else 0


def _chronological(paths: list[str]) -> list[Path]:
    """The files oldest first: by modification time, then rotated copies before the current."""
    files = [Path(p) for p in paths]
    try:
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, -_rotation(p)))
    except OSError:
        return files  # the unreadable one is reported when it is opened


def _lines(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as compressed:
                yield from compressed
        else:
            with path.open(encoding="utf-8", errors="replace") as plain:
                yield from plain


def cmd_report(args: argparse.Namespace) -> int:
    """Print the usage report of audit files; write the HTML page when ``--html`` is given."""
    paths = _chronological(list(args.audit))
    stats = ReadStats()
    records: Iterator[dict[str, Any]] = read_audit(_lines(paths), stats)
    try:
        indicators = compute_indicators(records, args.since)
    except (OSError, EOFError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = getattr(exc, "filename", None) or ", ".join(map(str, paths))
        print(f"journal d'audit illisible : {where} ({reason})", file=sys.stderr)
        return EXIT_ERROR
    indicators = dataclasses.replace(indicators, invalid=indicators.invalid + stats.invalid)
    print(render_text(indicators), end="")
    if args.html:
        try:
            Path(args.html).write_text(render_html(indicators), encoding="utf-8")
        except OSError as exc:
            print(f"impossible d'écrire {args.html} : {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"\nrapport HTML écrit dans {args.html}")
    return EXIT_OK


def add_report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``mssgate report`` on the subcommands of :func:`mssgate.cli.build_parser`."""
    report = sub.add_parser(
        "report",
        help="rapport d'activité à partir du journal d'audit",
        description=(
            "Indicateurs d'usage (part MSSanté, refus par règle, expéditeurs, patients) "
            "calculés sur le journal d'audit ; les copies tournées (audit.jsonl.1, .gz...) "
            "peuvent être données ensemble."
        ),
    )
    report.add_argument("audit", nargs="+", metavar="AUDIT.jsonl", help="journal d'audit")
    report.add_argument(
        "--since", type=parse_since, metavar="AAAA-MM-JJ", help="à partir de ce jour (UTC)"
    )
    report.add_argument("--html", metavar="FICHIER", help="écrire aussi le rapport en HTML")
    report.set_defaults(func=cmd_report)
