"""Hostile input for the gateway: malformed messages and raw SMTP sessions.

The message builders return complete messages as bytes (CRLF line endings unless the point of
the builder is another ending). :class:`RawSmtp` is a bare asyncio SMTP client that reads
every reply with a time bound and keeps the raw bytes of each reply line, so that a test can
tell a definite SMTP answer from a hang or a silent close, and check the octets the client got.
All connections go to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.smtp_peers import LOOPBACK

CRLF = b"\r\n"


# -- messages -------------------------------------------------------------------------------


def _head(sender: str, to: str, subject: str, extra: Sequence[str] = ()) -> bytes:
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        "Message-ID: <hostile@cabinet-gare.fr>",
        "Date: Tue, 25 Nov 2025 10:00:00 +0100",
        "MIME-Version: 1.0",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def missing_final_boundary(sender: str, to: str) -> bytes:
    """A multipart/mixed whose closing ``--b1--`` delimiter never comes."""
    return _head(sender, to, "Sans fin", ['Content-Type: multipart/mixed; boundary="b1"']) + (
        b"\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPremiere partie.\r\n"
        b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0xLjQK\r\n"
    )


def boundary_never_used(sender: str, to: str) -> bytes:
    """A multipart/mixed announcing a boundary that no line of the body uses."""
    return _head(sender, to, "Jamais", ['Content-Type: multipart/mixed; boundary="absent"']) + (
        b"\r\nCeci n'est pas une partie.\r\n--autre\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    )


def boundary_in_header_only(sender: str, to: str) -> bytes:
    """The boundary string appears in a header value only, never as a delimiter line."""
    head = _head(
        sender,
        to,
        "--b1",
        ["X-Note: --b1-- --b1", 'Content-Type: multipart/mixed; boundary="b1"'],
    )
    return head + b"\r\nPas de delimiteur ici.\r\n"


BROKEN_BOUNDARIES = {
    "missing_final_boundary": missing_final_boundary,
    "boundary_never_used": boundary_never_used,
    "boundary_in_header_only": boundary_in_header_only,
}
"""Builders of messages with broken MIME boundaries, by name."""


def nested_multiparts(sender: str, to: str, depth: int = 100) -> bytes:
    """A text/plain part inside ``depth`` nested multipart/mixed containers."""
    inner = b"Content-Type: text/plain; charset=utf-8\r\n\r\nAu fond.\r\n"
    for level in range(depth - 1, 0, -1):
        boundary = f"n{level}".encode()
        inner = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
            b"--" + boundary + CRLF + inner + b"--" + boundary + b"--\r\n"
        )
    head = _head(sender, to, "Poupees russes", ['Content-Type: multipart/mixed; boundary="n0"'])
    return head + b"\r\n--n0\r\n" + inner + b"--n0--\r\n"


def bad_base64(sender: str, to: str, where: str) -> bytes:
    """Invalid base64 (bad characters, wrong padding) in a ``text`` part or an ``attachment``."""
    junk = b"SGVsbG8@@@!!\x7f*==x=\r\nnot*base64====\r\n"
    text = (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + junk
        if where == "text"
        else b"Content-Type: text/plain; charset=utf-8\r\n\r\nVoir la piece jointe.\r\n"
    )
    attachment = (
        b"Content-Type: application/pdf; name=cr.pdf\r\n"
        b"Content-Disposition: attachment; filename=cr.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + (junk if where == "attachment" else b"JVBERi0xLjQK\r\n")
    )
    head = _head(sender, to, "Base64", ['Content-Type: multipart/mixed; boundary="b64"'])
    return head + b"\r\n--b64\r\n" + text + b"--b64\r\n" + attachment + b"--b64--\r\n"


def bogus_charset(sender: str, to: str, charset: str) -> bytes:
    """A text/plain part in an unknown or malformed charset (written as given, NUL included)."""
    head = _head(
        sender,
        to,
        "Charset",
        [f"Content-Type: text/plain; charset={charset}", "Content-Transfer-Encoding: 8bit"],
    )
    return head + b"\r\nCaf\xe9 cr\xe8me \xff\xfe\r\n"


def nul_bytes(sender: str, to: str) -> bytes:
    """NUL bytes in a header value and in the body."""
    head = _head(sender, to, "Nul\x00 ici", ["X-Nul: a\x00b", "Content-Type: text/plain"])
    return head + b"\r\nCorps\x00avec\x00des NUL.\r\n\x00\r\n"


def bare_lf(sender: str, to: str) -> bytes:
    """A short message whose lines end with bare LF (on the wire: one long 'line')."""
    return message_lines(sender, to, "LF seuls").replace(b"\r\n", b"\n")


def bare_cr_inside_lines(sender: str, to: str) -> bytes:
    """CRLF line endings, with bare CRs inside a header value and inside body lines."""
    head = _head(sender, to, "CR\rseul", ["Content-Type: text/plain", "X-CR: a\rb"])
    return head + b"\r\nligne\rcoupee\r\nautre\r\r ligne\r\n"


def eight_bit(sender: str, to: str) -> bytes:
    """An 8-bit body (UTF-8 and a stray Latin-1 byte) for a client that did not say 8BITMIME."""
    head = _head(
        sender,
        to,
        "=?utf-8?q?=C3=89t=C3=A9?=",
        ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"],
    )
    return head + "\r\nÉté très chaud, à bientôt.\r\n".encode() + b"Octet seul : \xe9\r\n"


def message_lines(sender: str, to: str, subject: str, body: str = "Bonjour,\r\n") -> bytes:
    """A plain, well-formed text/plain message (CRLF)."""
    head = _head(sender, to, subject, ["Content-Type: text/plain; charset=utf-8"])
    return head + b"\r\n" + body.encode("utf-8")


def injected_display_name(sender: str, to: str, injected: str) -> bytes:
    """A From display name carrying CRLF and a forged header line (``injected``)."""
    head = f'From: "Dr Martin\r\n{injected}" <{sender}>\r\nTo: {to}\r\nSubject: Injection\r\n'
    return (
        head.encode("utf-8") + b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nBonjour\r\n"
    )


def huge_header_line(sender: str, to: str, size: int = 1024 * 1024) -> bytes:
    """One header line of ``size`` octets (no folding)."""
    return _head(sender, to, "Long") + b"X-Long: " + b"a" * size + b"\r\n\r\nCorps.\r\n"


def huge_header_block(sender: str, to: str, size: int = 1024 * 1024) -> bytes:
    """A header block of ``size`` octets made of ordinary 78-octet folded lines."""
    line = b"\t" + b"b" * 75 + b"\r\n"
    folded = b"X-Many: debut\r\n" + line * (size // len(line))
    return _head(sender, to, "Gros en-tete") + folded + b"\r\nCorps.\r\n"


def oversize(sender: str, to: str, size: int) -> bytes:
    """A well-formed text message of about ``size`` octets (76-character lines)."""
    line = b"0123456789" * 7 + b"abcdef\r\n"
    return message_lines(sender, to, "Gros") + line * (size // len(line) + 1)


# -- raw SMTP -------------------------------------------------------------------------------


def data_payload(message: bytes) -> bytes:
    """The DATA bytes for ``message``: dot-stuffed, ending with CRLF and the final dot."""
    body = message if message.endswith(CRLF) else message + CRLF
    lines = body.split(CRLF)
    stuffed = CRLF.join(b"." + line if line.startswith(b".") else line for line in lines)
    return stuffed + b".\r\n"


def noop_rset_flood(count: int, command: bytes = b"NOOP") -> bytes:
    """``count`` copies of one command, for a single pipelined write."""
    return (command + CRLF) * count


def garbage_commands(count: int, seed: int = 1) -> bytes:
    """``count`` lines of random binary bytes (deterministic for a seed), CRLF-terminated."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        lines.append(raw.replace(b"\n", b"?").replace(b"\r", b"?") + CRLF)
    return b"".join(lines)


class ConnectionClosed(Exception):
    """The server closed the connection where a reply was expected."""


@dataclass
class Reply:
    """One SMTP reply: its code and its raw lines (without CRLF)."""

    code: int
    lines: list[bytes] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The reply's text after the codes, lines joined by spaces."""
        return " ".join(line[4:].decode("utf-8", "replace") for line in self.lines)

    @property
    def raw(self) -> bytes:
        """The octets of the reply as received, CRLFs included."""
        return b"".join(line + CRLF for line in self.lines)

    def __str__(self) -> str:
        return " / ".join(line.decode("utf-8", "replace") for line in self.lines)


class RawSmtp:
    """A minimal SMTP client on asyncio streams, every read bounded in time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received: list[Reply] = []
        """Every reply read on this connection, in order."""

    @classmethod
    async def connect(cls, port: int, timeout: float = 5) -> tuple[RawSmtp, Reply]:
        """Connect to 127.0.0.1:port and read the banner."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, port, limit=4 * 1024 * 1024), timeout
        )
        client = cls(reader, writer)
        return client, await client.reply(timeout)

    async def reply(self, timeout: float = 10) -> Reply:
        """Read one (possibly multi-line) reply; TimeoutError if none comes in time."""
        return await asyncio.wait_for(self._reply(), timeout)

    async def _reply(self) -> Reply:
        lines: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionClosed(b"".join(lines).decode("utf-8", "replace"))
            line = line.rstrip(b"\r\n")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        head = lines[-1][:3]
        code = int(head) if head.isdigit() else -1
        reply = Reply(code, lines)
        self.received.append(reply)
        return reply

    async def replies(self, count: int, timeout: float = 10) -> list[Reply]:
        """Read ``count`` replies within ``timeout`` seconds in all."""

        async def read_all() -> list[Reply]:
            return [await self._reply() for _ in range(count)]

        return await asyncio.wait_for(read_all(), timeout)

    async def send(self, data: bytes) -> None:
        """Write raw bytes (anything: several pipelined commands, garbage...)."""
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str | bytes, timeout: float = 10) -> Reply:
        """Send one command line (CRLF added) and read its reply."""
        data = line.encode("utf-8") if isinstance(line, str) else line
        await self.send(data + CRLF)
        return await self.reply(timeout)

    async def until_closed(self, timeout: float = 10) -> list[Reply]:
        """Read replies until the server closes the connection (TimeoutError if it never does)."""

        async def drain() -> list[Reply]:
            got: list[Reply] = []
            while True:
                try:
                    got.append(await self._reply())
                except (ConnectionClosed, ConnectionResetError):
                    return got

        return await asyncio.wait_for(drain(), timeout)

    async def close(self) -> None:
        """Close the connection (errors ignored: the server may have closed first)."""
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


@dataclass
class Transaction:
    """The replies of one raw SMTP transaction."""

    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None
    """The reply to DATA (354 when the message was sent)."""
    final: Reply | None = None
    """The reply after the final dot, when the message was sent."""

    @property
    def last(self) -> Reply:
        """The last reply the client got in the transaction."""
        for reply in (self.final, self.data):
            if reply is not None:
                return reply
        if self.rcpts:
            return self.rcpts[-1]
        assert self.mail is not None
        return self.mail


async def transaction(
    client: RawSmtp,
    mail_from: str,
    rcpts: Sequence[str],
    payload: bytes,
    *,
    mail_params: str = "",
    timeout: float = 20,
) -> Transaction:
    """MAIL, RCPT..., DATA and ``payload`` (raw DATA bytes, see :func:`data_payload`).

    Stops at the first refusal of MAIL or when no RCPT was accepted; DATA is sent when at
    least one RCPT was accepted (as real clients do), and the payload only after a 354.
    """
    result = Transaction()
    params = f" {mail_params}" if mail_params else ""
    result.mail = await client.command(f"MAIL FROM:<{mail_from}>{params}", timeout)
    if result.mail.code != 250:
        return result
    for rcpt in rcpts:
        result.rcpts.append(await client.command(f"RCPT TO:<{rcpt}>", timeout))
    if not any(r.code == 250 for r in result.rcpts):
        return result
    result.data = await client.command("DATA", timeout)
    if result.data.code != 354:
        return result
    await client.send(payload)
    result.final = await client.reply(timeout)
    return result
