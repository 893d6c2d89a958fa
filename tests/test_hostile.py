"""Hostile input over real SMTP on 127.0.0.1: malformed MIME, odd encodings, huge headers,
hostile clients.

Every case checks the product's rule: the client gets a definite SMTP reply (never a hang,
never a silent crash), the gateway goes on serving (a normal message afterwards gets 250 and
arrives once), and nothing is delivered that should not be: a refused or temp-failed message
reaches no upstream, an accepted one reaches its upstream exactly once and, on the MSSanté
route, byte for byte. Replies observed with aiosmtpd 1.4.6 are noted on each case.
"""

from __future__ import annotations

import itertools
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from mssgate.config import load_policy_text
from mssgate.model import Delivery, Route
from mssgate.relay import Relay, RelayOutcome, build_relays
from mssgate.server import Gateway
from mssgate.wire import normalize_line_endings
from tests.conftest import Stack, policy_yaml
from tests.hostile_corpus import (
    BROKEN_BOUNDARIES,
    ConnectionClosed,
    RawSmtp,
    Reply,
    Transaction,
    bad_base64,
    bare_cr_inside_lines,
    bare_lf,
    bogus_charset,
    data_payload,
    eight_bit,
    garbage_commands,
    huge_header_block,
    huge_header_line,
    injected_display_name,
    message_lines,
    nested_multiparts,
    noop_rset_flood,
    nul_bytes,
    oversize,
    transaction,
)
from tests.smtp_peers import LOOPBACK, CaptureUpstream

BAL = "alice.martin@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
CABINET = "cabinet.gare@cabinet.mssante.fr"
GMAIL = "patient.ami@gmail.com"

SENDERS = {Route.ORDINARY: (DR, GMAIL), Route.MSSANTE: (BAL, CONFRERE)}
"""(MAIL FROM, RCPT TO) of a legitimate message on each route."""
COPIES = {BAL: [CABINET]}
"""The test policy's copy rule: what BAL sends on the MSSanté route also goes to CABINET."""

_LISTEN_DEFAULT = "  client_timeout: 60\n"
_serial = itertools.count()


# -- the stack ------------------------------------------------------------------------------


def hostile_policy_text(
    mssante_port: int,
    ordinary_port: int,
    listen: Mapping[str, object] | None = None,
    timeout: float = 5,
) -> str:
    """:func:`tests.conftest.policy_yaml` with its ``listen`` block overridden key by key."""
    text = policy_yaml(mssante_port, ordinary_port, timeout=timeout)
    assert _LISTEN_DEFAULT in text
    keys = {"client_timeout": 60, **(listen or {})}
    return text.replace(_LISTEN_DEFAULT, "".join(f"  {k}: {v}\n" for k, v in keys.items()))


@asynccontextmanager
async def hostile_stack(
    listen: Mapping[str, object] | None = None,
    timeout: float = 5,
    wrap_relays: Callable[[dict[Route, Relay]], dict[Route, Relay]] | None = None,
) -> AsyncIterator[Stack]:
    """A gateway with two capture upstreams (as ``running_stack``) and ``listen`` overrides."""
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        text = hostile_policy_text(mssante.port, ordinary.port, listen, timeout)
        policy = load_policy_text(text, "hostile.yaml").policy
        routes = {
            Route.MSSANTE: policy.document.routes.mssante,
            Route.ORDINARY: policy.document.routes.ordinary,
        }
        relays = build_relays(routes, "mssgate.test", {})
        if wrap_relays is not None:
            relays = wrap_relays(relays)
        gateway = Gateway(lambda: policy, relays, host=LOOPBACK, port=0)
        async with gateway:
            yield Stack(gateway, mssante, ordinary, policy)


async def session(stack: Stack) -> RawSmtp:
    """A raw client connected to the gateway, greeted with EHLO."""
    client, banner = await RawSmtp.connect(stack.port)
    assert banner.code == 220, banner
    ehlo = await client.command("EHLO client.test")
    assert ehlo.code == 250, ehlo
    return client


# -- the three checks -----------------------------------------------------------------------


@dataclass
class Counts:
    """How many messages each upstream had accepted at one moment."""

    mssante: int
    ordinary: int


def counts(stack: Stack) -> Counts:
    """The upstreams' counters now."""
    return Counts(len(stack.mssante.received), len(stack.ordinary.received))


def assert_definite(reply: Reply) -> None:
    """A real SMTP reply line: a 2xx-5xx code, ASCII unless the client asked for UTF-8."""
    assert 200 <= reply.code < 600, reply
    assert all(len(line) <= 510 for line in reply.lines), reply


def assert_nothing_delivered(stack: Stack, before: Counts) -> None:
    """Neither upstream got anything since ``before``."""
    assert counts(stack) == before, "a refused message reached an upstream"


def assert_delivered_once(
    stack: Stack, before: Counts, route: Route, raw: bytes, rcpts: list[str]
) -> None:
    """Exactly one new message, on ``route`` only, to ``rcpts``; byte for byte on MSSanté."""
    now = counts(stack)
    upstream = stack.mssante if route is Route.MSSANTE else stack.ordinary
    if route is Route.MSSANTE:
        assert now == Counts(before.mssante + 1, before.ordinary)
    else:
        assert now == Counts(before.mssante, before.ordinary + 1)
    got = upstream.received[-1]
    copies = COPIES.get(got.mail_from, []) if route is Route.MSSANTE else []
    assert got.rcpt_tos == rcpts + [c for c in copies if c not in rcpts]
    if route is Route.MSSANTE:
        assert got.data == raw, "the MSSanté route must relay byte for byte"
    else:
        # The ordinary route may add the signature (and line endings may be made CRLF).
        lines = re.compile(rb"\r\n|\r|\n")
        assert lines.split(got.data)[:2] == lines.split(raw)[:2], got.data[:200]


def assert_outcome(
    stack: Stack,
    before: Counts,
    final: Reply,
    route: Route,
    raw: bytes,
    rcpts: list[str],
    expect: str | None = None,
) -> None:
    """A definite reply; 250 means delivered once, anything else means delivered nowhere.

    ``expect`` pins the outcome: ``"accept"`` (250) or ``"refuse"`` (a 5xx).
    """
    assert_definite(final)
    if expect == "accept":
        assert final.code == 250, final
    elif expect == "refuse":
        assert 500 <= final.code < 600, final
    if final.code == 250:
        assert_delivered_once(stack, before, route, raw, rcpts)
    else:
        assert final.code >= 400, final
        assert_nothing_delivered(stack, before)


async def assert_still_serves(stack: Stack) -> None:
    """A normal MSSanté message on a new connection gets 250 and arrives once, byte for byte."""
    before = counts(stack)
    raw = message_lines(BAL, CONFRERE, f"Suivi {next(_serial)}")
    client = await session(stack)
    try:
        result = await transaction(client, BAL, [CONFRERE], data_payload(raw))
        assert result.final is not None and result.final.code == 250, result.last
        assert_delivered_once(stack, before, Route.MSSANTE, raw, [CONFRERE])
        assert (await client.command("QUIT")).code == 221
    finally:
        await client.close()


async def send_one(
    stack: Stack,
    mail_from: str,
    rcpts: list[str],
    payload: bytes,
    mail_params: str = "",
) -> Transaction:
    """One raw transaction on a new connection (closed afterwards)."""
    client = await session(stack)
    try:
        return await transaction(client, mail_from, rcpts, payload, mail_params=mail_params)
    finally:
        await client.close()


async def hostile_message_case(
    raw: bytes,
    route: Route,
    expect: str | None = None,
    payload: bytes | None = None,
    mail_params: str = "",
) -> Reply:
    """Send ``raw`` on ``route`` through a fresh gateway and run the three checks."""
    mail_from, rcpt = SENDERS[route]
    async with hostile_stack() as stack:
        before = counts(stack)
        result = await send_one(
            stack, mail_from, [rcpt], payload or data_payload(raw), mail_params=mail_params
        )
        assert result.final is not None, result.last
        assert_outcome(stack, before, result.final, route, raw, [rcpt], expect)
        await assert_still_serves(stack)
        return result.final


ROUTES = pytest.mark.parametrize("route", [Route.ORDINARY, Route.MSSANTE], ids=lambda r: r.value)


# -- malformed MIME -------------------------------------------------------------------------


@ROUTES
@pytest.mark.parametrize("name", sorted(BROKEN_BOUNDARIES))
async def test_broken_mime_boundaries(name: str, route: Route) -> None:
    # Observed: 250 and a clean relay on both routes (nothing to hide in an unparsed body).
    mail_from, rcpt = SENDERS[route]
    await hostile_message_case(BROKEN_BOUNDARIES[name](mail_from, rcpt), route)


async def test_100_nested_multiparts_to_an_ordinary_recipient_are_refused() -> None:
    # Observed: 550 5.7.1 "... imbrication trop profonde ... [regle forwards]".
    reply = await hostile_message_case(nested_multiparts(DR, GMAIL, 100), Route.ORDINARY, "refuse")
    assert reply.code == 550 and "forwards" in reply.text


async def test_100_nested_multiparts_to_mssante_are_relayed_byte_for_byte() -> None:
    await hostile_message_case(nested_multiparts(BAL, CONFRERE, 100), Route.MSSANTE, "accept")


@ROUTES
@pytest.mark.parametrize("where", ["text", "attachment"])
async def test_bad_base64(where: str, route: Route) -> None:
    # Observed: 250, clean relay.
    mail_from, rcpt = SENDERS[route]
    await hostile_message_case(bad_base64(mail_from, rcpt, where), route)


@ROUTES
@pytest.mark.parametrize("charset", ["x-unknown", '"utf-8\x00"'], ids=["x-unknown", "utf8-nul"])
async def test_unknown_and_bogus_charsets(charset: str, route: Route) -> None:
    # Observed: 250, clean relay.
    mail_from, rcpt = SENDERS[route]
    await hostile_message_case(bogus_charset(mail_from, rcpt, charset), route)


@ROUTES
async def test_nul_bytes_in_headers_and_body(route: Route) -> None:
    # Observed: 250, clean relay (NUL bytes are relayed as they are).
    mail_from, rcpt = SENDERS[route]
    await hostile_message_case(nul_bytes(mail_from, rcpt), route)


@ROUTES
async def test_8bit_data_without_8bitmime(route: Route) -> None:
    # Observed: 250; the MSSanté route relays the 8-bit bytes unchanged.
    mail_from, rcpt = SENDERS[route]
    await hostile_message_case(eight_bit(mail_from, rcpt), route, "accept")


# -- line endings ---------------------------------------------------------------------------

BARE = {
    # A body of bare LFs reaches aiosmtpd as one long "line" ended by the final CRLF.
    "bare_lf": lambda s, r: (bare_lf(s, r), bare_lf(s, r) + b"\r\n.\r\n"),
    "bare_cr": lambda s, r: (bare_cr_inside_lines(s, r), data_payload(bare_cr_inside_lines(s, r))),
}


@pytest.mark.parametrize("kind", sorted(BARE))
async def test_bare_line_endings_on_the_ordinary_route(kind: str) -> None:
    # Observed: 250, relayed (aiosmtplib turns every bare CR and LF into CRLF on the way).
    raw, payload = BARE[kind](DR, GMAIL)
    await hostile_message_case(raw, Route.ORDINARY, payload=payload)


@pytest.mark.parametrize("kind", sorted(BARE))
async def test_bare_line_endings_on_the_mssante_route_relay_the_bytes_decided_on(
    kind: str,
) -> None:
    """Bare CR/LF are made CRLF before the decision; the MSSanté route then relays exactly the
    bytes the filter read (what any SMTP client library would have sent), byte for byte."""
    _, payload = BARE[kind](BAL, CONFRERE)
    wire = payload[: -len(b".\r\n")]
    decided = normalize_line_endings(
        ("\r\n" + wire.decode("latin-1")).replace("\r\n.", "\r\n").encode("latin-1")[2:]
    )
    await hostile_message_case(decided, Route.MSSANTE, payload=payload)


def _cr_forward() -> bytes:
    """A forwarded MSSanté message as an attachment, every body line ended by a bare CR."""
    head = (
        f"From: {DR}\r\nTo: {GMAIL}\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    ).encode()
    body = (
        "--b1\nContent-Type: text/plain\n\nPour info.\n"
        "--b1\nContent-Type: message/rfc822\nContent-Disposition: attachment\n\n"
        f"From: {CONFRERE}\nTo: {DR}\nSubject: resultats\n\nHbA1c 7,2 %.\n--b1--\n"
    ).encode()
    return head + body.replace(b"\n", b"\r") + b"\r\n"


CR_SMUGGLED = {
    "forwarded_attachment": _cr_forward(),
    "resent_header": (
        f"From: {DR}\r\nTo: {GMAIL}\r\nSubject: x\rResent-From: {CONFRERE}\r\n\r\nHbA1c\r\n"
    ).encode(),
    "mss_marker_header": (
        f"From: {DR}\r\nTo: {GMAIL}\r\nSubject: x\rX-MSS-INS: 279035121518989\r\n\r\nCR\r\n"
    ).encode(),
}


@pytest.mark.parametrize("name", sorted(CR_SMUGGLED))
async def test_mssante_content_hidden_behind_bare_cr_is_not_relayed_outside(name: str) -> None:
    raw = CR_SMUGGLED[name]
    async with hostile_stack() as stack:
        before = counts(stack)
        result = await send_one(stack, DR, [GMAIL], data_payload(raw))
        assert result.final is not None
        assert_definite(result.final)
        delivered = stack.ordinary.received[before.ordinary :]
        leaked = [m for m in delivered if CONFRERE.encode() in m.data or b"X-MSS-INS" in m.data]
        assert not leaked, leaked[0].data.decode("utf-8", "replace")
        assert result.final.code >= 400
        assert_nothing_delivered(stack, before)


async def test_data_ended_by_bare_lf_dot_is_cut_by_data_timeout() -> None:
    # "\n.\n" does not end DATA: the gateway waits for CRLF.CRLF until data_timeout, then
    # closes the connection (aiosmtpd closes without a reply). Nothing is relayed.
    async with hostile_stack({"data_timeout": 1.5}) as stack:
        before = counts(stack)
        client = await session(stack)
        try:
            assert (await client.command(f"MAIL FROM:<{DR}>")).code == 250
            assert (await client.command(f"RCPT TO:<{GMAIL}>")).code == 250
            assert (await client.command("DATA")).code == 354
            started = time.monotonic()
            await client.send(b"Subject: x\n\nCorps\n.\n")
            late = await client.until_closed(timeout=8)
            assert time.monotonic() - started < 6
            assert all(r.code >= 400 for r in late), late
        finally:
            await client.close()
        assert_nothing_delivered(stack, before)
        await assert_still_serves(stack)


@pytest.mark.parametrize(
    "visible",
    [f"{CONFRERE}\x00", f"\x00{CONFRERE}", "279035121518989@patient.mssante.fr\x00"],
    ids=["mssante_nul_after", "mssante_nul_before", "patient_nul_after"],
)
async def test_nul_cannot_hide_a_visible_mssante_address(visible: str) -> None:
    raw = message_lines(DR, GMAIL, "Cc NUL").replace(
        b"Subject:", f"Cc: {visible}\r\nSubject:".encode(), 1
    )
    reply = await hostile_message_case(raw, Route.ORDINARY)
    assert reply.code >= 400, reply


# -- SMTPUTF8 -------------------------------------------------------------------------------

JOSE = "josé@exemple.fr"


async def test_smtputf8_address_with_the_parameter_is_relayed_with_it() -> None:
    async with hostile_stack() as stack:
        before = counts(stack)
        raw = message_lines(DR, JOSE, "Ete")
        result = await send_one(stack, DR, [JOSE], data_payload(raw), mail_params="SMTPUTF8")
        assert result.final is not None
        assert_outcome(stack, before, result.final, Route.ORDINARY, raw, [JOSE], "accept")
        assert "SMTPUTF8" in stack.ordinary.received[-1].mail_options
        await assert_still_serves(stack)


async def test_replies_are_ascii_unless_smtputf8_was_negotiated() -> None:
    # A lookalike refusal quotes the address (with its accents) and suggests the right one.
    lookalike = "jean@medecin.mssanté.fr"
    async with hostile_stack() as stack:
        before = counts(stack)
        plain = await send_one(stack, DR.replace("dr.", "dré."), [lookalike], b"")
        utf8 = await send_one(
            stack, "josé@medecin.mssanté.fr", [CONFRERE], b"", mail_params="SMTPUTF8"
        )
        rcpt_plain = await send_one(stack, BAL, [lookalike], b"")
        rcpt_utf8 = await send_one(stack, BAL, [lookalike], b"", mail_params="SMTPUTF8")
        for result in (plain, rcpt_plain):
            for reply in [result.mail, *result.rcpts]:
                assert reply is not None
                assert_definite(reply)
                assert reply.raw.isascii(), reply.raw
        assert rcpt_plain.rcpts[0].code == 550
        assert b"jean@medecin.mssante.fr" in rcpt_plain.rcpts[0].raw
        # With SMTPUTF8, the reply may keep the accents (UTF-8), still one line <= 512 octets.
        assert utf8.mail is not None and utf8.mail.code == 550
        assert "mssanté".encode() in utf8.mail.raw
        assert rcpt_utf8.rcpts[0].code == 550
        assert_nothing_delivered(stack, before)
        await assert_still_serves(stack)


@pytest.mark.parametrize("where", ["rcpt", "mail_from"])
async def test_non_ascii_address_without_smtputf8_is_refused_permanently(where: str) -> None:
    mail_from, rcpt = (DR, JOSE) if where == "rcpt" else (JOSE, GMAIL)
    async with hostile_stack() as stack:
        before = counts(stack)
        raw = message_lines(mail_from, rcpt, "Sans SMTPUTF8")
        result = await send_one(stack, mail_from, [rcpt], data_payload(raw))
        for reply in [result.mail, *result.rcpts, result.data, result.final]:
            if reply is not None:
                assert reply.raw.isascii(), reply.raw
        assert_definite(result.last)
        assert_nothing_delivered(stack, before)
        await assert_still_serves(stack)
        assert 500 <= result.last.code < 600, result.last


class ExplodingRelay:
    """A relay failing once in a way relay.py does not map (as aiosmtplib's
    UnicodeEncodeError), then delivering through the real relay."""

    def __init__(self, real: Relay) -> None:
        self.route = real.route
        self.real = real
        self.exploded = False

    async def deliver(
        self, mail_from: str, delivery: Delivery, mail_options: tuple[str, ...]
    ) -> RelayOutcome:
        """Raise an exception that is not a RelayFailure the first time."""
        if not self.exploded:
            self.exploded = True
            raise RuntimeError("unexpected failure inside the relay")
        return await self.real.deliver(mail_from, delivery, mail_options)


def explode_once(relays: dict[Route, Relay]) -> dict[Route, Relay]:
    """The ordinary relay fails unexpectedly on its first delivery."""
    return {**relays, Route.ORDINARY: ExplodingRelay(relays[Route.ORDINARY])}


async def test_transaction_is_reset_after_an_unexpected_relay_error() -> None:
    async with hostile_stack(wrap_relays=explode_once) as stack:
        before = counts(stack)
        client = await session(stack)
        try:
            raw = message_lines(DR, GMAIL, "Relais en panne")
            failed = await transaction(client, DR, [GMAIL], data_payload(raw))
            assert failed.final is not None and failed.final.code == 451, failed.last
            assert_nothing_delivered(stack, before)
            # The same connection, no RSET: a new transaction must start cleanly.
            ok_raw = message_lines(BAL, CONFRERE, "Apres la panne")
            again = await transaction(client, BAL, [CONFRERE], data_payload(ok_raw))
            assert again.mail is not None and again.mail.code == 250, again.mail
            assert again.final is not None and again.final.code == 250, again.last
            assert_delivered_once(stack, before, Route.MSSANTE, ok_raw, [CONFRERE])
        finally:
            await client.close()


async def test_next_message_never_goes_to_the_failed_transactions_recipients() -> None:
    other = "autre.ami@gmail.com"
    async with hostile_stack(wrap_relays=explode_once) as stack:
        before = counts(stack)
        client = await session(stack)
        try:
            raw = message_lines(DR, GMAIL, "Premier")
            failed = await transaction(client, DR, [GMAIL], data_payload(raw))
            assert failed.final is not None and failed.final.code == 451, failed.last
            second = message_lines(DR, other, "Second")
            await client.send(f"MAIL FROM:<{DR}>\r\nRCPT TO:<{other}>\r\nDATA\r\n".encode())
            mail, _rcpt, data = await client.replies(3)
            final = data
            if data.code == 354:
                await client.send(data_payload(second))
                final = await client.reply()
        finally:
            await client.close()
        assert_definite(final)
        for got in stack.ordinary.received[before.ordinary :]:
            assert got.rcpt_tos == [other], f"{mail} / {final}: delivered to {got.rcpt_tos}"


# -- injection attempts ---------------------------------------------------------------------


async def test_pipelined_mail_with_size_then_rcpt_in_one_write() -> None:
    # Two commands in one write are two commands; SIZE=1 is not passed upstream.
    async with hostile_stack() as stack:
        before = counts(stack)
        client = await session(stack)
        try:
            await client.send(f"MAIL FROM:<{DR}> SIZE=1\r\nRCPT TO:<{GMAIL}>\r\n".encode())
            mail, rcpt = await client.replies(2)
            assert (mail.code, rcpt.code) == (250, 250)
            raw = message_lines(DR, GMAIL, "Pipeline")
            assert (await client.command("DATA")).code == 354
            await client.send(data_payload(raw))
            final = await client.reply()
        finally:
            await client.close()
        assert_outcome(stack, before, final, Route.ORDINARY, raw, [GMAIL], "accept")
        assert not any("SIZE" in o for o in stack.ordinary.received[-1].mail_options)
        await assert_still_serves(stack)


async def test_crlf_inside_rcpt_to_never_adds_a_recipient() -> None:
    # "RCPT TO:<x@y.fr\r\nBcc: z@w.fr>" is two lines: aiosmtpd takes "<x@y.fr" (250) and
    # answers the second with 500 "command not recognized"; z@w.fr is never a recipient.
    async with hostile_stack() as stack:
        before = counts(stack)
        client = await session(stack)
        try:
            assert (await client.command(f"MAIL FROM:<{DR}>")).code == 250
            await client.send(b"RCPT TO:<x@y.fr\r\nBcc: z@w.fr>\r\n")
            first, second = await client.replies(2)
            assert_definite(first)
            assert second.code == 500
            raw = message_lines(DR, "x@y.fr", "Bcc")
            final = await client.command("DATA")
            if final.code == 354:
                await client.send(data_payload(raw))
                final = await client.reply()
        finally:
            await client.close()
        assert_definite(final)
        for got in stack.ordinary.received + stack.mssante.received:
            assert "z@w.fr" not in " ".join(got.rcpt_tos)
        if final.code == 250:
            assert_delivered_once(stack, before, Route.ORDINARY, raw, ["x@y.fr"])
        else:
            assert_nothing_delivered(stack, before)
        await assert_still_serves(stack)


@pytest.mark.parametrize(
    ("injected", "expect"),
    [(f"Cc: {CONFRERE}", "refuse"), ("Bcc: autre@gmail.com", "accept")],
    ids=["cc_mssante", "bcc_ordinary"],
)
async def test_crlf_in_a_display_name(injected: str, expect: str) -> None:
    # The injected line is a real header of the message: an MSSanté Cc makes it mixed (550
    # mixed_recipients); a Bcc header adds no recipient (only the envelope counts).
    raw = injected_display_name(DR, GMAIL, injected)
    reply = await hostile_message_case(raw, Route.ORDINARY, expect)
    if expect == "refuse":
        assert "mixed_recipients" in reply.text


# -- size limits and memory -----------------------------------------------------------------


async def _measured(
    listen: Mapping[str, object] | None, raw: bytes, mail_params: str = ""
) -> tuple[Transaction, int, Stack, Counts]:
    """Send ``raw`` to an ordinary recipient with tracemalloc on; return the peak too."""
    payload = data_payload(raw)
    async with hostile_stack(listen) as stack:
        before = counts(stack)
        tracemalloc.start()
        try:
            result = await send_one(stack, DR, [GMAIL], payload, mail_params=mail_params)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert_nothing_delivered(stack, before)
        await assert_still_serves(stack)
        return result, peak, stack, before


MIB = 1024 * 1024


def _bound(size: int) -> int:
    return 4 * size + 8 * MIB


async def test_1mb_header_line_is_refused_in_bounded_memory() -> None:
    # Observed: "500 Line too long (see RFC5321 4.5.3.1.6)" (aiosmtpd, max_line_length 8192).
    raw = huge_header_line(DR, GMAIL, MIB)
    result, peak, _, _ = await _measured(None, raw)
    assert result.final is not None
    assert_definite(result.final)
    assert result.final.code == 500
    print(f"1 MB header line: {result.final}; tracemalloc peak {peak / MIB:.1f} MiB")
    assert peak < _bound(len(raw)), peak


async def test_1mb_header_block_is_refused_in_bounded_memory() -> None:
    # Observed: "552 5.3.4 En-tetes du message trop volumineux." (max_header_size 256 KiB).
    raw = huge_header_block(DR, GMAIL, MIB)
    result, peak, _, _ = await _measured(None, raw)
    assert result.final is not None
    assert (result.final.code, result.final.text[:5]) == (552, "5.3.4")
    print(f"1 MB header block: {result.final}; tracemalloc peak {peak / MIB:.1f} MiB")
    assert peak < _bound(len(raw)), peak


@pytest.mark.parametrize("declared", [False, True], ids=["no_size", "size_declared"])
async def test_oversize_message_is_552_in_bounded_memory(declared: bool) -> None:
    # Observed: with SIZE=, "552 Error: message size exceeds fixed maximum message size" at
    # MAIL; without, "552 Error: Too much mail data" after the final dot (aiosmtpd).
    raw = oversize(DR, GMAIL, 200 * 1024)
    params = f"SIZE={len(raw)}" if declared else ""
    result, peak, _, _ = await _measured({"max_message_size": 64 * 1024}, raw, params)
    assert_definite(result.last)
    assert result.last.code == 552, result.last
    print(f"200 KiB > 64 KiB ({params or 'no SIZE'}): {result.last}; peak {peak / MIB:.1f} MiB")
    assert peak < _bound(len(raw)), peak


# -- recipients -----------------------------------------------------------------------------


async def test_too_many_recipients_452_then_the_whole_message_refused() -> None:
    # Observed: 5 x "250 2.1.5 OK", 3 x "452 4.5.3 Trop de destinataires (5 au plus par
    # message).", DATA: "550 5.7.1 Envoi refuse : un destinataire a ete refuse (a5@gmail.com)".
    rcpts = [f"a{i}@gmail.com" for i in range(8)]
    async with hostile_stack({"max_recipients": 5}) as stack:
        before = counts(stack)
        raw = message_lines(DR, rcpts[0], "Nombreux")
        result = await send_one(stack, DR, rcpts, data_payload(raw))
        assert [r.code for r in result.rcpts] == [250] * 5 + [452] * 3
        assert all(r.text.startswith("4.5.3") for r in result.rcpts[5:])
        assert result.final is not None
        assert_outcome(stack, before, result.final, Route.ORDINARY, raw, rcpts, "refuse")
        await assert_still_serves(stack)


async def test_200_pipelined_rcpts() -> None:
    # Default max_recipients (100): 100 x 250, 100 x 452 4.5.3, then the message is refused.
    rcpts = [f"r{i}@gmail.com" for i in range(200)]
    async with hostile_stack() as stack:
        before = counts(stack)
        client = await session(stack)
        try:
            started = time.monotonic()
            lines = "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
            await client.send(f"MAIL FROM:<{DR}>\r\n{lines}".encode())
            replies = await client.replies(201, timeout=10)
            assert time.monotonic() - started < 10
            assert [r.code for r in replies] == [250] * 101 + [452] * 100
            raw = message_lines(DR, rcpts[0], "Deux cents")
            assert (await client.command("DATA")).code == 354
            await client.send(data_payload(raw))
            final = await client.reply()
        finally:
            await client.close()
        assert_outcome(stack, before, final, Route.ORDINARY, raw, rcpts, "refuse")
        await assert_still_serves(stack)


# -- hostile sessions -----------------------------------------------------------------------


@pytest.mark.parametrize(("command", "limit"), [(b"NOOP", 100), (b"RSET", 200)])
async def test_pipelined_flood_of_5000_commands_is_closed_with_421(
    command: bytes, limit: int
) -> None:
    # Observed: `limit` x 250, then "421 4.7.0 NOOP|RSET sent too many times" and close.
    async with hostile_stack() as stack:
        client = await session(stack)
        try:
            started = time.monotonic()
            await client.send(noop_rset_flood(5000, command))
            replies = await client.until_closed(timeout=10)
            assert time.monotonic() - started < 10
        finally:
            await client.close()
        assert [r.code for r in replies[:limit]] == [250] * limit
        assert replies[-1].code == 421, replies[-1]
        assert len(replies) < 5000
        await assert_still_serves(stack)


async def test_silent_client_is_cut_by_client_timeout() -> None:
    # Observed: the 220 banner, then the connection is closed after client_timeout (aiosmtpd
    # closes without a 421).
    async with hostile_stack({"client_timeout": 1}, timeout=0.5) as stack:
        client, banner = await RawSmtp.connect(stack.port)
        try:
            assert banner.code == 220
            started = time.monotonic()
            late = await client.until_closed(timeout=5)
            elapsed = time.monotonic() - started
        finally:
            await client.close()
        assert 0.5 < elapsed < 4, elapsed
        assert all(r.code == 421 for r in late), late
        await assert_still_serves(stack)


async def test_garbage_bytes_as_commands() -> None:
    # Observed: "500 Error: bad syntax" or "500 Error: command ... not recognized" for every
    # line (5 unknown ASCII commands would close with 502 5.5.1); QUIT still gets 221.
    garbage = garbage_commands(60, seed=7)
    lines = garbage.count(b"\r\n")
    async with hostile_stack() as stack:
        client = await session(stack)
        try:
            await client.send(garbage)
            replies: list[Reply] = []
            try:
                replies = await client.replies(lines, timeout=10)
            except (TimeoutError, ConnectionClosed):
                replies = client.received[2:]
                assert replies and replies[-1].code == 502, replies[-1:]
            else:
                assert (await client.command("QUIT")).code == 221
        finally:
            await client.close()
        assert replies
        for reply in replies:
            assert_definite(reply)
            assert 500 <= reply.code < 600
            assert reply.raw.isascii()
        await assert_still_serves(stack)


async def test_100kb_command_line() -> None:
    # Observed: "500 Command line too long"; the session goes on (NOOP: 250).
    async with hostile_stack() as stack:
        client = await session(stack)
        try:
            reply = await client.command(b"MAIL FROM:<" + b"a" * 100_000 + b"@gmail.com>")
            assert reply.code == 500 and b"too long" in reply.raw
            assert (await client.command("NOOP")).code == 250
        finally:
            await client.close()
        await assert_still_serves(stack)
