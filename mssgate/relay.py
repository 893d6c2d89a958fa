"""Delivering an accepted message: to an upstream SMTP server (aiosmtplib) or to an outbox.

All third-party errors are mapped here, at one boundary, to :class:`RelayFailure` (an SMTP reply
for the client): an upstream 4xx stays a 4xx, a 5xx a 5xx with the upstream's text, an
unreachable or timed-out upstream a 451. A message goes upstream only when the upstream accepted
*every* recipient: a partial acceptance is rolled back with RSET and reported, so that the
client's retry never duplicates a message and no refused recipient is ever reported accepted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

from mssgate.model import Delivery, Route
from mssgate.policy import Policy
from mssgate.schema import RouteConfig, TLSMode, UpstreamConfig
from mssgate.wire import dot_stuffed

log = logging.getLogger("mssgate.relay")
_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\s+")
_UNSAFE = re.compile(rb"[\r\n\x00]")


_JOIN_BELOW = 256 * 1024
"""Messages smaller than this are joined with their final dot and written once."""


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """The upstream's acceptance of one delivery."""

    route: Route
    detail: str
    """The upstream's reply text (queue id...) or the outbox file."""


@dataclass(frozen=True, slots=True)
class DeliveryHooks:
    """What the caller of :meth:`SmtpRelay.deliver` is told along the way (both optional)."""

    written: Callable[[], None] | None = None
    """The message and its final dot were written: the gateway now waits on the upstream."""
    accepted: Callable[[str], None] | None = None
    """The upstream's 250 to the message, with its text, as soon as it is read (before the
    delivery's coroutines unwind: the client can be answered at once)."""


class RelayFailure(Exception):
    """A delivery that did not happen, as the SMTP reply the client must get."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def temporary(self) -> bool:
        """True for a 4xx: the client keeps the message and retries."""
        return 400 <= self.code < 500


class Relay(Protocol):
    """Something that delivers one :class:`Delivery` or raises :class:`RelayFailure`."""

    route: Route

    async def deliver(
        self, mail_from: str, delivery: Delivery, mail_options: tuple[str, ...]
    ) -> RelayOutcome:
        """Deliver, and return only once the target has accepted the message."""
        ...


def split_enhanced(text: str, default: str) -> tuple[str, str]:
    """Separate an upstream's enhanced status code from its text."""
    match = _ENHANCED.match(text)
    if match:
        return match.group(1), text[match.end() :].strip()
    return default, text.strip()


def upstream_failure(route: Route, code: int, message: str, what: str = "") -> RelayFailure:
    """The client-facing failure for an upstream SMTP error reply."""
    default = "4.0.0" if 400 <= code < 500 else "5.0.0"
    if not 400 <= code < 600:
        # An answer that is neither 4xx nor 5xx where one was expected: fail closed, retry.
        code, default = 451, "4.4.0"
    enhanced, text = split_enhanced(message, default)
    prefix = f"{what} : " if what else ""
    return RelayFailure(code, enhanced, f"serveur {route.value} : {prefix}{text}")


class OutboxRelay:
    """Writes each delivery as one ``.eml`` file (demo and tests): an upstream that is a folder.

    The file starts with ``Return-Path`` and one ``Delivered-To`` per recipient, as a local
    delivery agent writes them, followed by the message byte for byte.
    """

    def __init__(self, route: Route, directory: str | Path) -> None:
        self.route = route
        self.directory = Path(directory)

    def _write(self, mail_from: str, delivery: Delivery) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        final = self.directory / f"{stamp}-{uuid.uuid4().hex[:12]}.eml"
        head = f"Return-Path: <{mail_from}>\r\n" + "".join(
            f"Delivered-To: {r}\r\n" for r in delivery.recipients
        )
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(head.encode("utf-8"))
                handle.write(delivery.message)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    async def deliver(
        self, mail_from: str, delivery: Delivery, mail_options: tuple[str, ...]
    ) -> RelayOutcome:
        """Write the file (in a worker thread); a disk error is a temporary failure."""
        try:
            path = await asyncio.to_thread(self._write, mail_from, delivery)
        except OSError as exc:
            raise RelayFailure(451, "4.3.0", f"boîte de dépôt {self.route.value} : {exc}") from exc
        return RelayOutcome(self.route, f"déposé dans {path.name}")


def read_credentials(config: UpstreamConfig, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The upstream login and password, from the environment or a file, never from the YAML."""
    username = config.username
    if config.username_env:
        username = env.get(config.username_env)
        if not username:
            raise ValueError(f"variable d'environnement {config.username_env} absente ou vide")
    password: str | None = None
    if config.password_env:
        password = env.get(config.password_env)
        if not password:
            raise ValueError(f"variable d'environnement {config.password_env} absente ou vide")
    elif config.password_file:
        try:
            password = Path(config.password_file).read_text("utf-8").strip()
        except OSError as exc:
            raise ValueError(f"fichier de mot de passe illisible : {exc}") from exc
    if username is None or password is None:
        return None
    return username, password


def upstream_tls_context(config: UpstreamConfig, route: Route) -> ssl.SSLContext | None:
    """The client-side TLS context of a route, built once at start.

    Certificate and host name are verified (against ``ca_file`` when given, e.g. IGC-Santé's
    CAs, else the system's), TLS 1.2 at least, and a client certificate is presented when the
    operator authenticates software so. ``verify: false`` is an explicit, logged opt-out.
    """
    if config.tls is TLSMode.NONE:
        return None
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
        if config.client_cert and config.client_key:
            context.load_cert_chain(config.client_cert, config.client_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"certificats de la route {route.value} illisibles : {exc}") from exc
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if config.min_tls_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    if not config.verify:
        log.warning(
            "route %s: upstream certificate NOT verified (verify: false in the policy)",
            route.value,
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpRelay:
    """Relays to an upstream SMTP server, one connection per delivery."""

    def __init__(
        self,
        route: Route,
        config: UpstreamConfig,
        local_hostname: str,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.route = route
        self.config = config
        self.local_hostname = local_hostname
        self.credentials = credentials
        self.tls_context = upstream_tls_context(config, route)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._last: tuple[Policy, dict[Route, Relay]] | None = None

    def _client(self) -> aiosmtplib.SMTP:
        config = self.config
        return aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            # aiosmtplib's default looks up the host name on every connection.
            local_hostname=self.local_hostname,
            timeout=config.timeout,
            use_tls=config.tls is TLSMode.IMPLICIT,
            start_tls=config.tls is TLSMode.STARTTLS,
            tls_context=self.tls_context,
            username=self.credentials[0] if self.credentials else None,
            password=self.credentials[1] if self.credentials else None,
        )

    async def deliver(
        self,
        mail_from: str,
        delivery: Delivery,
        mail_options: tuple[str, ...],
        prepared: asyncio.Task[PreparedTransaction] | None = None,
        hooks: DeliveryHooks | None = None,
    ) -> RelayOutcome:
        """One whole upstream transaction within the route's time budget.

        ``hooks``: told when the message is written and when the upstream accepted it
        (:class:`DeliveryHooks`).

        ``prepared``: the envelope already opened by :meth:`prepare` while the message came
        in; used when it got as far as DATA for these very recipients, recently, else closed
        (nothing was sent on it) and the transaction made from the start.

        On any failure the connection is dropped at once, without QUIT: an upstream that has
        not answered the final dot yet must not take a later QUIT for consent. A warm
        connection found closed by the upstream is replaced once, before anything was sent.
        """
        ready: PreparedTransaction | None = None
        if prepared is not None:
            try:
                # Its failure (refusal, timeout...) is this delivery's: not asked twice.
                ready = await self._ready(prepared, delivery)
            except _CannotPrepare:
                ready = None
            except BaseException as exc:
                raise self._failure(exc) from exc
        client: aiosmtplib.SMTP | None = None
        try:
            async with asyncio.timeout(self.config.timeout):
                if ready is not None:
                    client = ready.client
                    detail = await self._send_message(client, delivery, ready.sent_size, hooks)
                else:
                    client, reused = await self._acquire()
                    try:
                        detail = await self._transaction(
                            client, mail_from, delivery, mail_options, hooks
                        )
                    except _StaleConnection:
                        if not reused:
                            raise
                        client.close()
                        client, _ = await self._acquire(fresh=True)
                        detail = await self._transaction(
                            client, mail_from, delivery, mail_options, hooks
                        )
        except BaseException as exc:
            if client is not None:
                client.close()
            raise self._failure(exc) from exc
        self._release(client)
        return RelayOutcome(self.route, detail)

    def prepare(
        self, mail_from: str, recipients: tuple[str, ...], mail_options: tuple[str, ...]
    ) -> asyncio.Task[PreparedTransaction]:
        """Open the upstream transaction (MAIL, RCPT, DATA) in the background, while the
        client is still sending: once the message is decided, only the message itself and
        the final dot remain. Hand the task to :meth:`deliver`, or to :func:`discard`."""
        return asyncio.get_running_loop().create_task(
            self._open(mail_from, recipients, mail_options)
        )

    async def _open(
        self, mail_from: str, recipients: tuple[str, ...], mail_options: tuple[str, ...]
    ) -> PreparedTransaction:
        client: aiosmtplib.SMTP | None = None
        try:
            async with asyncio.timeout(self.config.timeout):
                client, reused = await self._acquire()
                if not _pipelining_possible(client):
                    raise _CannotPrepare
                try:
                    await self._open_data(client, mail_from, recipients, mail_options)
                except _StaleConnection:
                    if not reused:
                        raise
                    client.close()
                    client, _ = await self._acquire(fresh=True)
                    await self._open_data(client, mail_from, recipients, mail_options)
        except BaseException:
            if client is not None:
                client.close()
            raise
        return PreparedTransaction(client, recipients, time.monotonic())

    async def _ready(
        self, prepared: asyncio.Task[PreparedTransaction], delivery: Delivery
    ) -> PreparedTransaction | None:
        """The prepared transaction when it can carry ``delivery``; None (closed) when it is
        for other recipients or too old; its failure raised as it is."""
        ready = await prepared
        if (
            ready.recipients != delivery.recipients
            or time.monotonic() - ready.opened > PREPARED_MAX_AGE
            or not ready.client.is_connected
            or (ready.sent_size and not ready.starts(delivery.message))
        ):
            # (What was sent ahead is not the start of the message decided: the upstream
            # drops it with the connection, no final dot having been sent.)
            ready.client.close()
            return None
        return ready

    def _failure(self, exc: BaseException) -> BaseException:
        """Map a third-party error to the client-facing failure (one boundary)."""
        if isinstance(exc, RelayFailure | asyncio.CancelledError):
            return exc
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return upstream_failure(self.route, exc.code, exc.message)
        if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
            return RelayFailure(
                451, "4.4.2", f"serveur {self.route.value} : délai dépassé, rien n'a été envoyé"
            )
        if isinstance(exc, UnicodeEncodeError):
            return RelayFailure(
                553,
                "5.6.7",
                f"serveur {self.route.value} : adresse internationalisée sans SMTPUTF8",
            )
        if isinstance(exc, aiosmtplib.SMTPException | OSError | _StaleConnection):
            return RelayFailure(
                451, "4.4.1", f"serveur {self.route.value} injoignable ({type(exc).__name__})"
            )
        return exc

    async def _acquire(self, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        """A connected client: a warm idle one when there is one, else a new connection."""
        now = time.monotonic()
        while self._idle and not fresh:
            client, since = self._idle.pop()
            if client.is_connected and now - since < self.config.idle_timeout:
                return client, True
            client.close()
        client = self._client()
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                # The extensions decide MAIL FROM's parameters: greet before asking.
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except BaseException:
            client.close()  # a half-open connection (timeout in the greeting...) is dropped
            raise
        return client, False

    def _release(self, client: aiosmtplib.SMTP) -> None:
        """Keep a healthy connection warm for the next message, or close it."""
        if (
            self.config.reuse_connections
            and client.is_connected
            and len(self._idle) < self.config.max_idle_connections
        ):
            self._idle.append((client, time.monotonic()))
        else:
            self._quit_later(client)

    def _quit_later(self, client: aiosmtplib.SMTP) -> None:
        """QUIT in the background: the message is already accepted, nothing may wait on it."""
        task = asyncio.get_running_loop().create_task(_quit(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """QUIT the warm connections (at shutdown or when a reload replaced this route)."""
        while self._idle:
            self._quit_later(self._idle.pop()[0])
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5)

    async def _transaction(
        self,
        client: aiosmtplib.SMTP,
        mail_from: str,
        delivery: Delivery,
        mail_options: tuple[str, ...],
        hooks: DeliveryHooks | None = None,
    ) -> str:
        if not _pipelining_possible(client):
            # An aiosmtplib without the internals used here: its own DATA (the message is
            # already CRLF, so its normalisation changes nothing; it stuffs the dots).
            await self._open_data(client, mail_from, delivery.recipients, mail_options, data=False)
            return str((await client.data(delivery.message)).message)
        await self._open_data(client, mail_from, delivery.recipients, mail_options)
        return await self._send_message(client, delivery, 0, hooks)

    async def _open_data(
        self,
        client: aiosmtplib.SMTP,
        mail_from: str,
        recipients: tuple[str, ...],
        mail_options: tuple[str, ...],
        data: bool = True,
    ) -> None:
        """MAIL FROM, every RCPT TO and (``data``) DATA, up to the upstream's 354; all in one
        write when the upstream offers PIPELINING (RFC 2920), else one command at a time.

        All or nothing: any refusal raises, and the caller drops the connection before any
        message byte is sent (an upstream that said 354 anyway never gets a final dot).
        A connection found closed at the first command raises :class:`_StaleConnection`.
        """
        options: list[str] = []
        wants = {o.upper() for o in mail_options}
        if "BODY=8BITMIME" in wants and client.supports_extension("8BITMIME"):
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if "SMTPUTF8" in wants:
            needs_utf8 = not (mail_from + "".join(recipients)).isascii()
            if client.supports_extension("SMTPUTF8"):
                options.append("SMTPUTF8")
                encoding = "utf-8"
            elif needs_utf8:
                raise RelayFailure(
                    553,
                    "5.6.7",
                    f"serveur {self.route.value} : adresses internationalisées non prises "
                    "en charge (SMTPUTF8)",
                )
        commands = [
            b" ".join(
                [b"MAIL FROM:" + envelope_address(mail_from, encoding)]
                + [o.encode("ascii") for o in options]
            )
        ]
        commands += [b"RCPT TO:" + envelope_address(r, encoding) for r in recipients]
        if any(_UNSAFE.search(c) for c in commands):
            raise ValueError("envelope address with a control character")
        if data:
            commands.append(b"DATA")
        if data and client.supports_extension("PIPELINING"):
            answers = await self._exchange(client, commands, pipelined=True)
        else:
            answers = await self._exchange(client, commands, pipelined=False)
        mail = answers[0]
        if mail.code != 250:
            raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, mail_from)
        refused = [
            (rcpt, a.code, a.message)
            for rcpt, a in zip(recipients, answers[1 : 1 + len(recipients)], strict=False)
            if a.code not in (250, 251)
        ]
        if refused:
            permanent = [r for r in refused if r[1] >= 500]
            rcpt, code, message = (permanent or refused)[0]
            raise upstream_failure(self.route, code, message, what=f"destinataire {rcpt}")
        if data:
            start = answers[-1]
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)

    async def _exchange(
        self, client: aiosmtplib.SMTP, commands: list[bytes], pipelined: bool
    ) -> list[aiosmtplib.SMTPResponse]:
        """Send ``commands`` (all in one write when ``pipelined``) and read their replies;
        one at a time, a refused MAIL (or DATA) ends the exchange."""
        timeout = self.config.timeout
        protocol: Any = client.protocol
        answers: list[aiosmtplib.SMTPResponse] = []
        if not _pipelining_possible(client):  # an aiosmtplib without the internals used below
            for command in commands:
                try:
                    answers.append(await client.execute_command(command, timeout=timeout))
                except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                    if not answers:
                        raise _StaleConnection from exc
                    raise
                if answers[0].code != 250:
                    return answers
            if any(a.code not in (250, 251) for a in answers[1:]):
                await client.rset()  # a recipient was refused (the connection is dropped next)
            return answers
        async with protocol._command_lock:
            protocol._response_pending = True
            try:
                if pipelined:
                    protocol.write(b"".join(c + b"\r\n" for c in commands))
                else:
                    protocol.write(commands[0] + b"\r\n")
                answers.append(await next_response(protocol))
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                raise _StaleConnection from exc
            if pipelined:
                while len(answers) < len(commands):
                    answers.append(await next_response(protocol))
                return answers
            if answers[0].code != 250:
                return answers
            for command in commands[1:]:
                if command == b"DATA" and any(a.code not in (250, 251) for a in answers[1:]):
                    # A recipient was refused: no DATA; RSET (the connection is dropped next).
                    command = b"RSET"
                protocol._response_pending = True
                protocol.write(command + b"\r\n")
                answers.append(await next_response(protocol))
        return answers

    async def _send_message(
        self,
        client: aiosmtplib.SMTP,
        delivery: Delivery,
        skip: int = 0,
        hooks: DeliveryHooks | None = None,
    ) -> str:
        """After the upstream's 354: the message (from ``skip``, what was sent ahead), the
        final dot (one write), its reply (a 250 also told to the hooks, first thing)."""
        protocol: Any = client.protocol
        if skip >= len(delivery.message):
            # All of it went ahead (it ended at a line end): only the final dot is left.
            pieces = [b".\r\n"]
        else:
            rest = delivery.message[skip:] if skip else delivery.message
            pieces = dot_stuffed(rest, delivery.dot_free)
        async with protocol._command_lock:
            protocol._response_pending = True
            write_all(protocol, pieces)
            accepted = None
            if hooks is not None:
                if hooks.written is not None:
                    hooks.written()
                if hooks.accepted is not None:
                    accepted = _on_250(hooks.accepted)
            response = await next_response(protocol, accepted)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return str(response.message)


@dataclass(slots=True)
class PreparedTransaction:
    """An upstream connection that said 354 to a transaction for ``recipients``, and what
    was already written on it ahead of the decision (see :mod:`mssgate.ahead`)."""

    client: aiosmtplib.SMTP
    recipients: tuple[str, ...]
    opened: float
    """``time.monotonic()`` when the upstream said 354 or last got bytes."""
    sent: list[bytes | memoryview] = field(default_factory=list)
    """The message's first bytes, already written (dot-stuffing needed none, and they end at
    a line end): a delivery goes on from there only if its message starts with them."""
    sent_size: int = 0
    whole: bytes | None = None
    """The message all of whose bytes were written (:meth:`send_rest`): known to start with
    what was sent, without comparing them again."""

    def send_ahead(self, piece: bytes | memoryview) -> None:
        """Write the next bytes of the message (no line of them may start with a dot)."""
        protocol: Any = self.client.protocol
        transport: Any = protocol.transport if protocol is not None else None
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        transport.write(piece)
        self.sent.append(piece)
        self.sent_size += len(piece)
        self.opened = time.monotonic()

    def starts(self, message: bytes) -> bool:
        """``message`` begins with exactly the bytes sent ahead."""
        if message is self.whole:
            return True
        if len(message) < self.sent_size:
            return False
        at = 0
        for piece in self.sent:
            if not message.startswith(piece, at):  # (memcmp; a memoryview == is per byte)
                return False
            at += len(piece)
        return True

    def send_rest(self, message: bytes) -> bool:
        """Write what is not upstream yet of ``message`` (CRLF line endings, no line starting
        with a dot), when what was sent ahead is its beginning: the upstream then holds the
        whole message but its final dot. True when written (False also when the connection
        is gone: the delivery finds that out and opens another)."""
        if not message.endswith(b"\r\n") or not self.starts(message):
            return False
        if self.sent_size < len(message):
            try:
                self.send_ahead(memoryview(message)[self.sent_size :])
            except aiosmtplib.SMTPServerDisconnected:
                return False
        self.whole = message
        return True


PREPARED_MAX_AGE = 20.0
"""Seconds a prepared transaction may wait for its message: past that, the upstream may have
given up on it (its own timeout), and a fresh transaction is safer than a doubtful one."""


OPEN_TURNS = 3
"""Turns of the loop given to a prepared transaction whose upstream reply may be read but not
yet handed to it (see :func:`opened`)."""


async def opened(prepared: asyncio.Task[PreparedTransaction]) -> PreparedTransaction | None:
    """The prepared transaction if the upstream has said 354 by now, else None (the delivery
    will wait for it as usual). A reply already read by the loop reaches the task one or two
    turns later: a few turns are given, never a wait on the upstream."""
    for _ in range(OPEN_TURNS):
        if prepared.done():
            break
        await asyncio.sleep(0)
    if not prepared.done() or prepared.cancelled() or prepared.exception() is not None:
        return None
    return prepared.result()


def discard(prepared: asyncio.Task[PreparedTransaction]) -> None:
    """Give up a prepared transaction: its connection is closed (no final dot was sent, so
    the upstream drops what it holds), now or as soon as the opening ends."""

    def close(task: asyncio.Task[PreparedTransaction]) -> None:
        if not task.cancelled() and task.exception() is None:
            task.result().client.close()

    if prepared.done():
        close(prepared)
    else:
        prepared.add_done_callback(close)


def _pipelining_possible(client: aiosmtplib.SMTP) -> bool:
    """The aiosmtplib internals :meth:`SmtpRelay._exchange` uses are there."""
    protocol = client.protocol
    return all(
        hasattr(protocol, name)
        for name in ("_command_lock", "_response_pending", "_read_response_from_buffer")
    ) and isinstance(getattr(protocol, "_command_lock", None), asyncio.Lock)


def _on_250(
    accepted: Callable[[str], None],
) -> Callable[[aiosmtplib.SMTPResponse], None]:
    def told(response: aiosmtplib.SMTPResponse) -> None:
        if response.code == 250:
            accepted(str(response.message))

    return told


async def next_response(
    protocol: Any, first: Callable[[aiosmtplib.SMTPResponse], None] | None = None
) -> aiosmtplib.SMTPResponse:
    """The next reply of a pipelined group: one already received, or the next to come.

    ``first``: given the reply as soon as it is read, before the awaiting task resumes (a
    callback of the reply's future, put ahead of the task's own).

    The wait is bounded by the caller's ``asyncio.timeout`` (the route's budget for the
    whole transaction): no timer of its own per reply.
    """
    response: aiosmtplib.SMTPResponse | None = protocol._read_response_from_buffer()
    if response is not None:
        if first is not None:
            first(response)
        return response
    waiter = protocol._response_waiter
    if waiter is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    if first is not None:
        told = first

        def tell(done: asyncio.Future[aiosmtplib.SMTPResponse]) -> None:
            if not done.cancelled() and done.exception() is None:
                told(done.result())

        waiter.add_done_callback(tell)
    protocol._response_pending = True
    try:
        response = await waiter
    finally:
        # As aiosmtplib's read_response: a fresh waiter for the next reply.
        protocol._response_pending = False
        protocol._response_waiter = (
            None if protocol.transport is None else asyncio.get_running_loop().create_future()
        )
    return response


def envelope_address(address: str, encoding: str) -> bytes:
    """``<address>`` for MAIL FROM / RCPT TO.

    The addresses come from mssgate's own SMTP parser and were classified by the policy:
    they are passed as they are, without aiosmtplib's re-parsing through the email package
    (which costs more than the whole decision on a small message). CR, LF and NUL never reach
    here (aiosmtpd splits commands on CRLF) and aiosmtplib refuses them again.
    """
    return b"<" + address.encode(encoding) + b">"


def write_all(protocol: Any, pieces: list[bytes]) -> None:
    """Write ``pieces`` in one go: one ``writev`` on uvloop (no copy of a large message), one
    write of the joined bytes for small ones elsewhere."""
    transport = protocol.transport
    if transport is not None and len(pieces) > 1 and len(pieces[0]) > _JOIN_BELOW:
        if transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        transport.writelines(pieces)
    else:
        protocol.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))


class _CannotPrepare(Exception):
    """This aiosmtplib lacks what opening a transaction ahead needs: deliver as usual."""


class _StaleConnection(Exception):
    """A warm connection the upstream had closed: nothing was sent, try a fresh one."""


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT politely; any error is only the end of a connection."""
    try:
        await client.quit(timeout=5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


def build_relays(
    routes: Mapping[Route, RouteConfig], local_hostname: str, env: Mapping[str, str]
) -> dict[Route, Relay]:
    """One relay per route, credentials read now so that a missing secret stops the start."""
    relays: dict[Route, Relay] = {}
    for route, config in routes.items():
        if config.outbox is not None:
            relays[route] = OutboxRelay(route, config.outbox)
        else:
            assert config.upstream is not None
            try:
                credentials = read_credentials(config.upstream, env)
            except ValueError as exc:
                raise ValueError(f"route {route.value} : {exc}") from exc
            relays[route] = SmtpRelay(route, config.upstream, local_hostname, credentials)
    return relays


class RelayRegistry:
    """The relays of the policy in force, rebuilt for a route whose configuration changed.

    A reload that moves an upstream takes effect for the next transaction; the previous
    relay's warm connections are closed (transactions under way on it finish normally).
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self._relays: dict[tuple[Route, RouteConfig, str], Relay] = {}
        self._current: dict[Route, tuple[Route, RouteConfig, str]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._last: tuple[Policy, dict[Route, Relay]] | None = None

    def relays_for(self, policy: Policy) -> dict[Route, Relay]:
        """The relay of each route; raises ValueError when a route's secrets are missing.

        Asked on every message: the answer for the policy asked last is kept.
        """
        last = self._last
        if last is not None and last[0] is policy:
            return last[1]
        result = self._relays_for(policy)
        self._last = (policy, result)
        return result

    def _relays_for(self, policy: Policy) -> dict[Route, Relay]:
        hostname = policy.document.listen.hostname
        result: dict[Route, Relay] = {}
        for route, config in policy.route_configs().items():
            key = (route, config, hostname)
            relay = self._relays.get(key)
            if relay is None:
                relay = build_relays({route: config}, hostname, self.env)[route]
                self._relays[key] = relay
            previous = self._current.get(route)
            if previous is not None and previous != key:
                old = self._relays.pop(previous, None)
                if isinstance(old, SmtpRelay):
                    task = asyncio.get_running_loop().create_task(old.close())
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
            self._current[route] = key
            result[route] = relay
        return result

    async def close(self) -> None:
        """Close every relay's warm connections."""
        for relay in list(self._relays.values()):
            if isinstance(relay, SmtpRelay):
                await relay.close()
