"""The usage report: indicators computed from the audit trail, as text and as an HTML page.

What a GRADeS (regional e-health agency) asks a structure: how much mail goes through MSSanté,
what the rules refused, who still writes health mail on ordinary routes, the patients' messages.

How audit records are counted (one record per answered decision, see :mod:`mssgate.audit`):

* a record of stage ``data`` is one **message**: accepted, rejected or tempfailed;
* a record of stage ``mail`` or ``rcpt`` is an **envelope refusal**. When the same SMTP
  session then reaches DATA, the message's record counts and the envelope refusals are its
  cause (a message refused at DATA as ``refused_earlier`` is counted under the rule that
  refused its recipient). Envelope refusals of a session that never reached DATA count as one
  **send stopped before DATA** (refused, or tempfailed when none of them was a refusal);
* **refused sends** are the rejected messages plus the sends refused before DATA; the
  refusals by rule, the daily chart and the top senders count refused sends.

:func:`compute_indicators` is pure; :func:`render_html` imports matplotlib (Agg) only when called,
so the gateway itself never loads it.
"""

from __future__ import annotations

import html
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Rules whose refusals mean health content headed outside the trust space.
OUTSIDE_RULES = frozenset({"forwards", "trust_space", "mixed_recipients"})

TOP_SENDERS = 10

#: French labels of the rules and other causes found in the audit trail.
RULE_LABELS: Mapping[str, str] = {
    "mixed_recipients": "Destinataires MSSanté et ordinaires mélangés",
    "trust_space": "Sortie de l'espace de confiance",
    "forwards": "Transfert ou redirection de contenu MSSanté",
    "patients": "Adresse ou message patient",
    "lookalike": "Adresse imitant MSSanté, Apicrypt v1, domaine inconnu",
    "syntax": "Adresse invalide",
    "sender_authorization": "Expéditeur non autorisé",
    "client": "Poste non autorisé",
    "dns_check": "Domaine inexistant",
    "max_recipients": "Trop de destinataires",
    "max_header_size": "En-têtes trop volumineux",
    "refused_earlier": "Destinataire refusé auparavant",
    "upstream": "Refus du serveur amont",
    "filter_error": "Erreur du filtre",
}


def rule_label(rule: str) -> str:
    """The French label of a rule (its name when unknown)."""
    return RULE_LABELS.get(rule, rule)


@dataclass(frozen=True, slots=True)
class DayCounts:
    """One day's sends (UTC)."""

    day: date
    mssante: int = 0
    """Accepted messages relayed through MSSanté."""
    ordinary: int = 0
    """Accepted messages relayed on the ordinary route only."""
    refused: int = 0
    tempfailed: int = 0

    @property
    def total(self) -> int:
        """Every send of the day."""
        return self.mssante + self.ordinary + self.refused + self.tempfailed


@dataclass(frozen=True, slots=True)
class Indicators:
    """The report's figures (see the module's docstring for how records are counted)."""

    since: datetime | None
    first_day: date | None
    last_day: date | None
    messages: int
    """Records of stage ``data``: messages decided."""
    accepted: int
    rejected: int
    tempfailed: int
    envelope_refusals: int
    """Records of stage ``mail``/``rcpt`` (refused attempts, before DATA)."""
    refused_before_data: int
    """Sends refused at MAIL/RCPT whose session never reached DATA."""
    tempfailed_before_data: int
    accepted_mssante: int
    """Accepted messages whose routes include ``mssante``."""
    accepted_ordinary: int
    refusals_by_rule: tuple[tuple[str, int], ...]
    """Refused sends per rule, most frequent first."""
    top_ordinary_senders: tuple[tuple[str, int], ...]
    """Senders still writing health mail on ordinary routes, with counts (top 10)."""
    patient_messages: int
    """Accepted messages with at least one patient recipient."""
    patient_refusals: int
    """Sends refused by the ``patients`` rule."""
    signatures_added: int
    per_day: tuple[DayCounts, ...]
    invalid: int = 0
    """Unreadable lines and records skipped."""
    senders_outside_total: int = field(default=0)
    """Distinct senders behind :attr:`top_ordinary_senders` (before the top 10 cut)."""

    @property
    def mssante_share(self) -> float | None:
        """Share of accepted messages sent through MSSanté (None without accepted messages)."""
        return self.accepted_mssante / self.accepted if self.accepted else None

    @property
    def refused_sends(self) -> int:
        """Rejected messages plus sends refused before DATA."""
        return self.rejected + self.refused_before_data

    @property
    def days(self) -> int:
        """Number of days covered."""
        return len(self.per_day)


@dataclass
class _Day:
    mssante: int = 0
    ordinary: int = 0
    refused: int = 0
    tempfailed: int = 0


@dataclass
class _Pending:
    """Envelope refusals of one session not yet followed by DATA."""

    day: date
    rule: str
    sender: str
    refused: bool


def parse_time(value: object) -> datetime | None:
    """An audit record's ``time`` as an aware UTC datetime (None when unreadable)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class _Tally:
    """The mutable counters behind :func:`compute_indicators`."""

    def __init__(self) -> None:
        self.messages = self.accepted = self.rejected = self.tempfailed = 0
        self.envelope_refusals = self.refused_before = self.tempfailed_before = 0
        self.accepted_mssante = self.accepted_ordinary = 0
        self.patient_messages = self.patient_refusals = self.signatures = 0
        self.invalid = 0
        self.rules: Counter[str] = Counter()
        self.senders: Counter[str] = Counter()
        self.days: dict[date, _Day] = {}
        self.pending: dict[str, _Pending] = {}

    def day(self, day: date) -> _Day:
        """The counters of one day."""
        return self.days.setdefault(day, _Day())

    def refused_send(self, day: date, rule: str, sender: str) -> None:
        """Count one refused send (a message, or envelope refusals that stopped there)."""
        self.day(day).refused += 1
        self.rules[rule] += 1
        if rule in OUTSIDE_RULES and sender:
            self.senders[sender] += 1
        if rule == "patients":
            self.patient_refusals += 1

    def stopped(self, group: _Pending) -> None:
        """Envelope refusals that never reached DATA: one stopped send."""
        if group.refused:
            self.refused_before += 1
            self.refused_send(group.day, group.rule, group.sender)
        else:
            self.tempfailed_before += 1
            self.day(group.day).tempfailed += 1

    def close_pending(self, session: str) -> None:
        """The session's pending envelope refusals, if any, never reached DATA."""
        group = self.pending.pop(session, None)
        if group is not None:
            self.stopped(group)

    def envelope(
        self, stage: str, session: str, day: date, rule: str, sender: str, action: str
    ) -> None:
        """A MAIL or RCPT refusal: pending until the session reaches DATA (or not)."""
        self.envelope_refusals += 1
        refused = action == "reject"
        if stage == "mail" or not session:
            # A refused MAIL starts no transaction (and without a session nothing can follow):
            # the session's earlier refusals are over, and this one is a stopped send itself.
            if session:
                self.close_pending(session)
            self.stopped(_Pending(day, rule, sender, refused))
            return
        group = self.pending.get(session)
        if group is None:
            self.pending[session] = _Pending(day, rule, sender, refused)
        elif refused and not group.refused:
            group.refused, group.rule = True, rule

    def data(self, record: Mapping[str, Any], day: date, session: str) -> None:
        """Count one message (a ``data`` record), with its session's envelope refusals."""
        self.messages += 1
        action = str(record.get("action", ""))
        rule = str(record.get("rule") or "")
        sender = str(record.get("sender") or "")
        group = self.pending.pop(session, None) if session else None
        if group is not None and rule == "refused_earlier":
            rule = group.rule  # the recipient's refusal is the real cause
        if action == "accept":
            self.accepted += 1
            routes = record.get("routes") or []
            if "mssante" in routes:
                self.accepted_mssante += 1
                self.day(day).mssante += 1
            else:
                self.accepted_ordinary += 1
                self.day(day).ordinary += 1
                if record.get("signature_added") and sender:
                    self.senders[sender] += 1
            if record.get("signature_added"):
                self.signatures += 1
            recipients = record.get("recipients") or []
            if any(isinstance(r, Mapping) and r.get("class") == "patient" for r in recipients):
                self.patient_messages += 1
        elif action == "reject":
            self.rejected += 1
            self.refused_send(day, rule or "?", sender)
        else:
            self.tempfailed += 1
            self.day(day).tempfailed += 1


def compute_indicators(
    records: Iterable[Mapping[str, Any]], since: datetime | None = None
) -> Indicators:
    """The report's indicators from audit records, in the trail's order.

    ``since`` (naive: UTC) drops earlier records. Records without a readable ``time``,
    ``stage`` or ``action`` are counted in :attr:`Indicators.invalid`.
    """
    start = _as_utc(since) if since is not None else None
    tally = _Tally()
    for record in records:
        moment = parse_time(record.get("time"))
        stage, action = record.get("stage"), record.get("action")
        if (
            moment is None
            or stage not in ("mail", "rcpt", "data")
            or action not in ("accept", "reject", "tempfail")
        ):
            tally.invalid += 1
            continue
        if start is not None and moment < start:
            continue
        day = moment.date()
        session = str(record.get("session") or "")
        if stage == "data":
            tally.data(record, day, session)
        elif action != "accept":
            sender = str(record.get("sender") or "")
            rule = str(record.get("rule") or "?")
            tally.envelope(str(stage), session, day, rule, sender, str(action))
    for session in list(tally.pending):
        tally.close_pending(session)

    per_day: list[DayCounts] = []
    if tally.days:
        first = min(tally.days)
        if start is not None:
            first = min(first, start.date())
        last = max(tally.days)
        current = first
        while current <= last:
            d = tally.days.get(current, _Day())
            per_day.append(DayCounts(current, d.mssante, d.ordinary, d.refused, d.tempfailed))
            current += timedelta(days=1)
    ranked = sorted(tally.senders.items(), key=lambda item: (-item[1], item[0]))
    return Indicators(
        since=start,
        first_day=per_day[0].day if per_day else None,
        last_day=per_day[-1].day if per_day else None,
        messages=tally.messages,
        accepted=tally.accepted,
        rejected=tally.rejected,
        tempfailed=tally.tempfailed,
        envelope_refusals=tally.envelope_refusals,
        refused_before_data=tally.refused_before,
        tempfailed_before_data=tally.tempfailed_before,
        accepted_mssante=tally.accepted_mssante,
        accepted_ordinary=tally.accepted_ordinary,
        refusals_by_rule=tuple(sorted(tally.rules.items(), key=lambda i: (-i[1], i[0]))),
        top_ordinary_senders=tuple(ranked[:TOP_SENDERS]),
        patient_messages=tally.patient_messages,
        patient_refusals=tally.patient_refusals,
        signatures_added=tally.signatures,
        per_day=tuple(per_day),
        invalid=tally.invalid,
        senders_outside_total=len(ranked),
    )


# ---------------------------------------------------------------------------------------------
# Rendering


def french_number(value: int) -> str:
    """An integer with French digit grouping (``12 345``)."""
    return f"{value:,}".replace(",", " ")


def french_percent(share: float | None) -> str:
    """A share as a French percentage (``62,5 %``), or ``–`` when undefined."""
    if share is None:
        return "–"
    return f"{share * 100:.1f} %".replace(".", ",")


def french_date(day: date | None) -> str:
    """A date as ``jj/mm/aaaa``."""
    return day.strftime("%d/%m/%Y") if day is not None else "–"


def _period(ind: Indicators) -> str:
    if ind.first_day is None:
        return "aucune décision dans le journal" + (
            f" depuis le {french_date(ind.since.date())}" if ind.since else ""
        )
    return (
        f"du {french_date(ind.first_day)} au {french_date(ind.last_day)} "
        f"({ind.days} jour{'s' if ind.days > 1 else ''}, UTC)"
    )


def indicator_rows(ind: Indicators) -> list[tuple[str, str]]:
    """The main indicators as (French label, formatted value) rows."""
    share = ind.mssante_share
    share_text = french_percent(share)
    if share is not None:
        share_text += f" ({french_number(ind.accepted_mssante)} / {french_number(ind.accepted)})"
    return [
        ("Messages traités (DATA)", french_number(ind.messages)),
        ("  acceptés et transmis", french_number(ind.accepted)),
        ("  refusés", french_number(ind.rejected)),
        ("  en échec temporaire", french_number(ind.tempfailed)),
        ("Refus avant DATA (MAIL/RCPT)", french_number(ind.envelope_refusals)),
        ("  envois arrêtés avant DATA", french_number(ind.refused_before_data)),
        ("Envois refusés au total", french_number(ind.refused_sends)),
        ("Part des messages acceptés passés par MSSanté", share_text),
        ("  acceptés via MSSanté", french_number(ind.accepted_mssante)),
        ("  acceptés via la messagerie ordinaire", french_number(ind.accepted_ordinary)),
        ("Signatures MSSanté ajoutées", french_number(ind.signatures_added)),
        ("Messages acceptés vers des patients", french_number(ind.patient_messages)),
        ("Envois refusés par la règle « patients »", french_number(ind.patient_refusals)),
    ]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], numeric: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(header), "  " + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


_PER_DAY_HEAD = ("jour", "MSSanté", "ordinaire", "refusés", "échecs temp.", "total")


def _per_day_rows(ind: Indicators) -> list[tuple[str, ...]]:
    """The per-day table's rows, for the text and the HTML report alike."""
    return [
        (
            french_date(d.day),
            str(d.mssante),
            str(d.ordinary),
            str(d.refused),
            str(d.tempfailed),
            str(d.total),
        )
        for d in ind.per_day
    ]


def render_text(ind: Indicators) -> str:
    """The report as French plain text, columns aligned."""
    out = [
        "Rapport d'activité mssgate — messagerie sécurisée de santé (MSSanté)",
        f"Période : {_period(ind)}",
        "",
        "Indicateurs",
    ]
    rows = indicator_rows(ind)
    width = max(len(label) for label, _ in rows)
    value_width = max(len(value.split(" (")[0]) for _, value in rows)
    for label, value in rows:
        head, sep, rest = value.partition(" (")
        out.append(f"  {label.ljust(width)}  {head.rjust(value_width)}{' (' if sep else ''}{rest}")
    out += ["", "Envois refusés par règle"]
    if ind.refusals_by_rule:
        out += _table(
            ("règle", "motif", "envois"),
            [(r, rule_label(r), french_number(n)) for r, n in ind.refusals_by_rule],
            {2},
        )
    else:
        out.append("  aucun refus")
    out += [
        "",
        "Expéditeurs écrivant encore des données de santé par la messagerie ordinaire"
        f" ({min(TOP_SENDERS, ind.senders_outside_total)} premiers"
        f" sur {ind.senders_outside_total})",
    ]
    if ind.top_ordinary_senders:
        out += _table(
            ("expéditeur", "envois"),
            [(s, french_number(n)) for s, n in ind.top_ordinary_senders],
            {1},
        )
    else:
        out.append("  aucun")
    out += ["", "Envois par jour"]
    if ind.per_day:
        out += _table(_PER_DAY_HEAD, _per_day_rows(ind), {1, 2, 3, 4, 5})
    else:
        out.append("  aucun")
    if ind.invalid:
        out += ["", f"Lignes ou enregistrements illisibles ignorés : {french_number(ind.invalid)}"]
    return "\n".join(out) + "\n"


# -- HTML ---------------------------------------------------------------------------------------

_COLOURS = {
    "mssante": "#1b7f5f",
    "ordinary": "#3b6fb6",
    "refused": "#c0392b",
    "tempfailed": "#9a9a9a",
}

_CSS = """
body { font-family: "DejaVu Sans", "Segoe UI", Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #1d2733; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: .2em; color: #123d63; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 2px solid #dfe6ee;
     padding-bottom: .2em; color: #123d63; }
.period { color: #55606d; margin-top: 0; }
.tiles { display: flex; gap: 1em; flex-wrap: wrap; margin: 1.2em 0; }
.tile { flex: 1 1 150px; border: 1px solid #dfe6ee; border-radius: 8px; padding: .8em 1em;
        background: #f6f9fc; }
.tile .value { font-size: 2em; font-weight: bold; color: #123d63; }
.tile.good .value { color: #1b7f5f; }
.tile.bad .value { color: #c0392b; }
.tile .label { color: #55606d; font-size: .9em; }
table { border-collapse: collapse; margin: .6em 0; min-width: 50%; }
th, td { padding: .3em .8em; border-bottom: 1px solid #e5eaf0; text-align: left; }
th { background: #eef3f8; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.sub { padding-left: 2em; color: #3a4654; }
.chart svg { width: 100%; height: auto; }
.note { color: #55606d; font-size: .85em; }
code { font-size: .95em; }
"""


def _svg(figure: Figure) -> str:
    """A matplotlib figure as inline SVG (no XML prolog, no DOCTYPE, no metadata URL)."""
    buffer = io.StringIO()
    figure.savefig(
        buffer,
        format="svg",
        metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
    )
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    # Scale with the page: keep the viewBox, drop the fixed size.
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", text, count=1)


def _daily_chart(ind: Indicators) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    days = ind.per_day
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    axes = figure.add_subplot()
    positions = list(range(len(days)))
    bottom = [0] * len(days)
    series = (
        ("acceptés via MSSanté", "mssante", [d.mssante for d in days]),
        ("acceptés via la messagerie ordinaire", "ordinary", [d.ordinary for d in days]),
        ("refusés", "refused", [d.refused for d in days]),
        ("échecs temporaires", "tempfailed", [d.tempfailed for d in days]),
    )
    for label, key, values in series:
        if not any(values) and key == "tempfailed":
            continue
        axes.bar(positions, values, bottom=bottom, label=label, color=_COLOURS[key], width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    step = max(1, len(days) // 15)
    axes.set_xticks(positions[::step])
    axes.set_xticklabels([d.day.strftime("%d/%m") for d in days][::step])
    axes.set_ylabel("envois")
    axes.set_title("Envois par jour (UTC)")
    axes.spines[["top", "right"]].set_visible(False)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(loc="upper left", ncols=4, frameon=False, bbox_to_anchor=(0, -0.08))
    axes.grid(axis="y", color="#e5eaf0")
    axes.set_axisbelow(True)
    return _svg(figure)


def _rules_chart(ind: Indicators) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rules = list(reversed(ind.refusals_by_rule))
    figure = Figure(figsize=(11, 0.9 + 0.45 * len(rules)), layout="constrained")
    axes = figure.add_subplot()
    labels = [rule_label(rule) for rule, _ in rules]
    counts = [count for _, count in rules]
    bars = axes.barh(labels, counts, color=_COLOURS["refused"], height=0.6)
    axes.bar_label(bars, padding=3)
    axes.set_xlabel("envois refusés")
    axes.set_title("Envois refusés par règle")
    axes.spines[["top", "right"]].set_visible(False)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(0, max(counts) * 1.1)
    return _svg(figure)


def _html_table(header: tuple[str, ...], rows: list[tuple[str, ...]], numeric: set[int]) -> str:
    def cells(tag: str, values: tuple[str, ...]) -> str:
        return "".join(
            f"<{tag}{' class=num' if i in numeric else ''}>{html.escape(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table>"


def render_html(ind: Indicators) -> str:
    """The report as one self-contained French HTML page, charts drawn here as inline SVG.

    No script, no external resource: the page opens offline and prints as is. matplotlib is
    imported here (Agg backend), never by the gateway.
    """
    import matplotlib

    matplotlib.use("Agg")
    share = ind.mssante_share
    tiles = [
        ("", french_number(ind.messages), "messages traités"),
        ("good", french_percent(share), "des messages acceptés passés par MSSanté"),
        ("bad", french_number(ind.refused_sends), "envois refusés (à DATA ou avant)"),
        ("", french_number(ind.signatures_added), "signatures MSSanté ajoutées"),
        ("", french_number(ind.patient_messages), "messages acceptés vers des patients"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="fr">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Rapport d'activité mssgate</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>Rapport d'activité mssgate — messagerie sécurisée de santé</h1>",
        f'<p class="period">Période : {html.escape(_period(ind))}</p>',
        '<div class="tiles">',
        *(
            f'<div class="tile {cls}"><div class="value">{html.escape(value)}</div>'
            f'<div class="label">{html.escape(label)}</div></div>'
            for cls, value, label in tiles
        ),
        "</div>",
        "<h2>Envois par jour</h2>",
    ]
    if ind.per_day:
        parts.append(f'<div class="chart">{_daily_chart(ind)}</div>')
    else:
        parts.append("<p>Aucun envoi sur la période.</p>")
    parts.append("<h2>Refus par règle</h2>")
    if ind.refusals_by_rule:
        parts.append(f'<div class="chart">{_rules_chart(ind)}</div>')
        parts.append(
            _html_table(
                ("règle", "motif", "envois refusés"),
                [(r, rule_label(r), french_number(n)) for r, n in ind.refusals_by_rule],
                {2},
            )
        )
    else:
        parts.append("<p>Aucun refus sur la période.</p>")
    parts.append("<h2>Indicateurs</h2>")
    rows = "".join(
        f"<tr><td{' class=sub' if label.startswith('  ') else ''}>"
        f"{html.escape(label.strip())}</td><td class=num>{html.escape(value)}</td></tr>"
        for label, value in indicator_rows(ind)
    )
    parts.append(f"<table><tbody>{rows}</tbody></table>")
    parts.append(
        "<h2>Expéditeurs écrivant encore des données de santé par la messagerie ordinaire</h2>"
    )
    parts.append(
        '<p class="note">Envois refusés par les règles « transferts », « espace de confiance » '
        "et « destinataires mélangés », et messages ordinaires signés d'un professionnel "
        f"connu ; {min(TOP_SENDERS, ind.senders_outside_total)} premiers sur "
        f"{ind.senders_outside_total} expéditeurs.</p>"
    )
    if ind.top_ordinary_senders:
        parts.append(
            _html_table(
                ("expéditeur", "envois"),
                [(s, french_number(n)) for s, n in ind.top_ordinary_senders],
                {1},
            )
        )
    else:
        parts.append("<p>Aucun.</p>")
    parts.append("<h2>Envois par jour (détail)</h2>")
    if ind.per_day:
        parts.append(_html_table(_PER_DAY_HEAD, _per_day_rows(ind), {1, 2, 3, 4, 5}))
    notes = (
        "Un message est une décision à la fin de DATA ; les refus à MAIL FROM ou RCPT TO d'une "
        "session qui n'est pas allée jusqu'à DATA comptent comme un envoi arrêté avant DATA. "
        "Les adresses des patients sont pseudonymisées dans le journal d'audit."
    )
    if ind.invalid:
        notes += f" Lignes ou enregistrements illisibles ignorés : {french_number(ind.invalid)}."
    parts += [f'<p class="note">{html.escape(notes)}</p>', "</body>", "</html>"]
    return "\n".join(parts) + "\n"
