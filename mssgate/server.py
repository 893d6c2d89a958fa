"""The SMTP listener: an aiosmtpd handler around the pure decision core.

It keeps per-transaction state (the policy in force when the transaction started, recipients
refused at RCPT time), asks the core for decisions, and answers the client only once every
upstream accepted the message. Anything unexpected becomes a ``451`` (the client retries),
never aiosmtpd's permanent ``500`` and never an unfiltered relay.

It also holds the listener's defences: TLS (STARTTLS and implicit), AUTH only over TLS,
sender authorisation, connection limits per client and in total, command and DATA timeouts,
header and line size limits, and slowed-down then refused failed AUTH attempts.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import ipaddress
import logging
import os
import re
import ssl
import time
import uuid
from base64 import b64decode
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mssgate.ahead import SendAhead
from mssgate.auth import AuthThrottle, verify_password
from mssgate.commands import envelope_command
from mssgate.decide import (
    Draft,
    check_recipient,
    check_sender,
    draft,
    judge,
    may_go_ahead,
    recipients_by_route,
    route_of,
)
from mssgate.dnscheck import DomainChecker
from mssgate.events import DecisionEvent, HeldReports, Observers
from mssgate.memory import collect_if_due
from mssgate.model import Action, Decision, Envelope, Route, Verdict
from mssgate.policy import Policy
from mssgate.privacy import pseudonymise
from mssgate.relay import (
    DeliveryHooks,
    PreparedTransaction,
    Relay,
    RelayFailure,
    SmtpRelay,
    discard,
    opened,
)
from mssgate.schema import ListenConfig
from mssgate.texts import render, smtp_reply
from mssgate.wire import DataReader, longest_header_line

log = logging.getLogger("mssgate.server")

DraftFn = Callable[[Policy, Envelope, bytes], Draft]
"""Reads a message and prepares its deliveries (:func:`mssgate.decide.draft`)."""
JudgeFn = Callable[[Policy, Draft], Decision]
"""Decides on a drafted message (:func:`mssgate.decide.judge`)."""
RelaySource = Mapping[Route, Relay] | Callable[[Policy], Mapping[Route, Relay]]
"""Fixed relays, or the relays of a given policy (they follow reloads)."""
DomainCheckFn = Callable[[str], Awaitable[str]]
"""Recipient domain -> ``"exists"``, ``"missing"`` or ``"tempfail"``."""

ONE_ROUTE = "one_route_per_message"
AHEAD_MAX_TRANSFERS = 2
"""The upstream transaction is opened, and big messages sent, ahead (see :mod:`mssgate.ahead`)
only with at most this many DATA transfers under way."""
AHEAD_WAIT = 1.0
"""Seconds the client may be held while the upstream opens, for a message to go ahead."""
_PUSH_BUFFER = 64 * 1024
"""Bytes of replies not yet sent past which a reply waits for the client to read them."""
COPIES_IN_FLIGHT = 3
"""How many times a message's size counts against ``listen.max_inflight_bytes``."""
_MARGIN = 15.0
"""Seconds left to answer the client after the upstream budget ran out."""
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
"""The reply to DATA (aiosmtpd's text)."""
_CALL_LIMITS = {
    "NOOP": 100,
    "RSET": 200,
    "VRFY": 10,
    "EXPN": 10,
    "HELP": 10,
    "HELO": 20,
    "EHLO": 20,
    "AUTH": 20,
    "STARTTLS": 5,
    "*": 1_000_000,
}
"""Commands a session may repeat before it is closed (floods of cheap commands)."""


class TransactionState(SmtpEnvelope):
    """aiosmtpd's envelope plus what mssgate remembers during one transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.policy: Policy | None = None
        self.refused: list[str] = []
        self.tempfailed: list[str] = []
        self.dot_free = False
        """No line of the message starts with a dot (see :attr:`DataReader.dot_free`)."""
        self.prepared: dict[Route, asyncio.Task[PreparedTransaction]] = {}
        """Upstream transactions opened while the message comes in (see ``prepare``)."""
        self.answered: str | None = None
        """The reply to the message, once written to the client ahead of the unwinding of
        the delivery (see ``GatewayHandler._data``); smtp_DATA then writes nothing."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def session_peer(server: SMTP) -> Any:
    """The connection's ``peer`` (address, port), or None before the session exists."""
    return server.session.peer if server.session is not None else None


@functools.lru_cache(maxsize=1024)
def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def peer_ip(peer: Any) -> IPAddress | None:
    """The client's IP address from aiosmtpd's ``session.peer``."""
    if not isinstance(peer, tuple) or not peer:
        return None
    return _ip(str(peer[0]))


class ConnectionCounter:
    """Open connections, in total and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self.per_client: dict[str, int] = {}

    def try_open(self, client: str, listen: ListenConfig) -> bool:
        """Count a new connection, or refuse it when a limit is reached."""
        if self.total >= listen.max_connections:
            return False
        if self.per_client.get(client, 0) >= listen.max_connections_per_client:
            return False
        self.total += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return True

    def close(self, client: str) -> None:
        """Release a counted connection."""
        self.total -= 1
        left = self.per_client.get(client, 1) - 1
        if left > 0:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)


class InflightBudget:
    """Message bytes held in memory by all sessions together (bounded under concurrency)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        """The most ever held at once (what the memory test and the benchmark read)."""
        self.transfers = 0
        """DATA transfers under way (all sessions)."""

    def full(self) -> bool:
        """True when no new DATA may start."""
        return self.used >= self.limit

    def take(self, size: int) -> bool:
        """Account for ``size`` more bytes; False when that crosses the limit."""
        self.used += size
        if self.used <= self.limit:
            self.peak = max(self.peak, self.used)
            return True
        return False

    def give(self, size: int) -> None:
        """Release bytes that are no longer held."""
        self.used -= size


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"\s*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")
"""``<dot-atom@domain>``: the form every mail client sends."""


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol with mssgate's per-connection defences and transaction state."""

    def __init__(
        self,
        handler: GatewayHandler,
        listen: ListenConfig,
        counter: ConnectionCounter,
        *,
        implicit_tls: bool,
        observers: Observers,
        budget: InflightBudget,
        **kwargs: Any,
    ) -> None:
        # Read by aiosmtpd's __init__ (the stream reader's limit): set it first.
        self.line_length_limit = listen.max_line_length
        super().__init__(handler, **kwargs)
        self.listen = listen
        self.counter = counter
        self.observers = observers
        self.budget = budget
        self.implicit_tls = implicit_tls
        self.counted_client: str | None = None
        self.over_limit = False
        self._transfer: DataReader | None = None
        self._ahead: SendAhead | None = None
        self._transfer_done: asyncio.Future[None] | None = None
        self._held = 0
        self._idle_deadline = 0.0
        self._reports = handler.held
        self._dialogue = 0
        """AUTH dialogues under way (their lines are not commands)."""
        self._fast_commands = 0
        """Commands answered by :meth:`_answer_now` (MAIL and RCPT: counted against the
        call limit; aiosmtpd counts the DATA lines, which go on to it)."""
        self._data_announced = False
        """The 354 of the DATA line under way was written by :meth:`_answer_now`."""

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timer, moved without a new timer per command: the one armed
        fires at its time and re-arms itself if the deadline moved on meanwhile."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(deadline, self._idle_timer)

    def _idle_timer(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer)
        else:
            self._timeout_cb()  # type: ignore[no-untyped-call]

    def _create_envelope(self) -> TransactionState:
        return TransactionState()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """MAIL FROM / RCPT TO's address: the plain ``<local@domain>`` form directly, anything
        else (quoted local parts, source routes, no brackets...) by aiosmtpd's full parser,
        which goes through the email package and costs more than a whole decision."""
        m = _PLAIN_PATH.match(arg)
        if m is None:
            result: tuple[str | None, str | None] = super()._getaddr(arg)
            return result
        address = m.group(1)
        limit = self.local_part_limit
        if limit and len(address.rpartition("@")[0]) > limit:
            return None, None
        return address, arg[m.end() :].lstrip()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Apply the connection limits and the TLS rules that depend on the client."""
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if not first:
            return  # the same connection after STARTTLS
        if self.session is not None:
            self.session.mssgate_id = uuid.uuid4().hex[:12]  # type: ignore[attr-defined]
        ip = peer_ip(session_peer(self))
        client = str(ip) if ip is not None else "?"
        if self.counter.try_open(client, self.listen):
            self.counted_client = client
            self.observers.connection(True)
        else:
            self.over_limit = True
            self.observers.connection(True, refused=True)
        loopback = ip is not None and ip.is_loopback
        # AUTH is offered only over TLS, except on loopback when the policy says so.
        self._auth_require_tls = not (
            self.implicit_tls or (loopback and self.listen.auth_without_tls_on_loopback)
        )
        tls = self.listen.tls
        self.require_starttls = bool(
            self.tls_context and tls is not None and tls.required and not loopback
        )

    async def _handle_client(self) -> None:
        if self.over_limit:
            log.warning("%s connection refused: too many connections", session_peer(self))
            await self.push("421 4.7.0 Trop de connexions, reessayez plus tard")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        """Release the connection's place in the limits."""
        if self.counted_client is not None:
            self.counter.close(self.counted_client)
            self.counted_client = None
            self.observers.connection(False)
        self._reports.soon()
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        """One reply line to the client: aiosmtpd's, without the drain (and its coroutine)
        while the transport's buffer is below its high-water mark."""
        if not self.write_reply(status):
            await super().push(status)  # (aiosmtpd's own path and errors)
            return
        if self.transport.get_write_buffer_size() > _PUSH_BUFFER:  # type: ignore[union-attr]
            await self._writer.drain()

    def write_reply(self, status: AnyStr) -> bool:
        """Write one reply line now, without a coroutine; False (nothing written) when the
        connection is closing or gone."""
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            return False
        if isinstance(status, str):
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = bytes(status)
        transport.write(response + b"\r\n")
        return True

    def data_received(self, data: bytes) -> None:
        """During DATA, the bytes go straight to the transfer's reader (no stream buffer, no
        copy); a plain MAIL FROM or RCPT TO is answered at once (:meth:`_answer_now`);
        anything else goes to aiosmtpd's command reader."""
        if self._transfer is not None:
            self._feed_transfer(data)
        elif not self._answer_now(data):
            super().data_received(data)

    def _answer_now(self, data: bytes) -> bool:
        """Answer ``data`` here when it is one plain MAIL FROM or RCPT TO line
        (:mod:`mssgate.commands`) arriving while the session waits for its next command in
        a state where aiosmtpd would hand it straight to the handler: the same checks and
        the same reply, without waking the session's task and its parser (a third of a
        command's time). False, with nothing done, in every other case; except that a
        ``DATA`` line that :meth:`smtp_DATA` would accept gets its 354 at once, and goes
        on to it (which then writes no 354 of its own)."""
        reader: Any = self._reader
        handler = self.event_handler
        session = self.session
        envelope = self.envelope
        transport: Any = self.transport
        if (
            self._dialogue
            or self._fast_commands >= _CALL_LIMITS["*"]
            or not isinstance(handler, GatewayHandler)
            or not isinstance(envelope, TransactionState)
            or session is None
            or not session.host_name  # (no HELO yet, or the PROXY header still to come)
            or (self._auth_required and not session.authenticated)
            or not self._tls_handshake_okay
            or (self.require_starttls and not self._tls_protocol)
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
            or reader._buffer
            or reader._waiter is None  # (the session's task is not waiting for a command)
            or reader._exception is not None
        ):
            return False
        command = envelope_command(data, self.local_part_limit)
        if command is None:
            if (
                len(data) == 6
                and data.upper() == b"DATA\r\n"
                and envelope.rcpt_tos
                and not self.budget.full()
            ):
                # The 354 now; the line still goes to aiosmtpd, whose smtp_DATA (below)
                # sets the transfer up while the client starts sending.
                self.write_reply(START_DATA)
                self._data_announced = True
                self._fast_commands += 1
            return False
        if command.verb == "MAIL":
            limit = self.data_size_limit
            if envelope.mail_from or (limit and command.size is not None and command.size > limit):
                return False
        elif not envelope.mail_from or handler.domain_check is not None:
            return False
        try:
            if command.verb == "MAIL":
                envelope.smtp_utf8 = False
                options = list(command.options)
                reply = handler.mail_reply(session, envelope, command.address, options)
            else:
                reply = handler.rcpt_reply(session, envelope, command.address, [])
        except Exception as error:
            reply = handler.exception_reply(error)
        self._fast_commands += 1
        self._reset_timeout()
        self.write_reply(reply)
        return True

    async def challenge_auth(self, *args: Any, **kwargs: Any) -> Any:
        """aiosmtpd's AUTH dialogue: the client's lines are answers, never commands."""
        self._dialogue += 1
        try:
            return await super().challenge_auth(*args, **kwargs)
        finally:
            self._dialogue -= 1

    def _feed_transfer(self, data: bytes) -> None:
        reader = self._transfer
        assert reader is not None
        if reader.refusal is None:
            # A message is held about three times while it is read, decided (signature: a
            # rewritten copy) and relayed (what the socket has not sent yet).
            cost = COPIES_IN_FLIGHT * len(data)
            self._held += cost
            if not self.budget.take(cost):
                reader.refuse("busy")
                self.budget.give(self._held)
                self._held = 0
        if not reader.feed(data):
            if self._ahead is not None:
                self._ahead.feed(reader, data)
                if self._ahead.waiting(reader):
                    self._pause_until(self._ahead)
        else:
            self._transfer = None
            if self._transfer_done is not None and not self._transfer_done.done():
                self._transfer_done.set_result(None)
            if reader.leftover:
                # What the client sent after its final dot is its next command.
                super().data_received(reader.leftover)

    def _pause_until(self, ahead: SendAhead) -> None:
        """Read nothing more from the client until the upstream said 354 (at most
        ``AHEAD_WAIT`` seconds: past that, nothing goes ahead for this message)."""
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        resumed = False

        def resume(_: object = None) -> None:
            nonlocal resumed
            if resumed:
                return
            resumed = True
            timer.cancel()
            if not ahead.prepared.done():
                ahead.stop()  # a slow upstream: the message goes the usual way
            current: Any = self.transport
            if current is transport and not current.is_closing():
                current.resume_reading()

        timer = self.loop.call_later(AHEAD_WAIT, resume)
        ahead.prepared.add_done_callback(resume)

    def _start_transfer(self, reader: DataReader) -> asyncio.Future[None]:
        """Route the connection's bytes to ``reader``, starting with any already buffered."""
        self._transfer = reader
        self._held = 0
        self.budget.transfers += 1
        done: asyncio.Future[None] = self.loop.create_future()
        self._transfer_done = done
        stream: Any = self._reader
        buffered = bytes(stream._buffer)
        if buffered:
            stream._buffer.clear()
            resume = getattr(stream, "_maybe_resume_transport", None)
            if resume is not None:
                resume()
            self._feed_transfer(buffered)
        return done

    def _end_transfer(self) -> None:
        if self._transfer_done is not None:
            self.budget.transfers -= 1
        self._transfer = None
        self._transfer_done = None
        self._ahead = None
        self.budget.give(self._held)
        self._held = 0

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in chunks as they arrive (not line by line), with its own time budget for
        the whole transfer, the message size limit and the in-flight memory budget."""
        announced, self._data_announced = self._data_announced, False
        messages = self.event_handler.current_policy().document.messages
        if not announced:
            # (Announced: these checks passed when the 354 was written, and nothing may
            # refuse the DATA now that the client sends the message.)
            if await self.check_helo_needed():
                return
            if await self.check_auth_needed("DATA"):
                return
            assert self.envelope is not None
            if not self.envelope.rcpt_tos:
                await self.push("503 Error: need RCPT command")
                return
            if arg:
                await self.push("501 Syntax: DATA")
                return
            if self.budget.full():
                await self.push(smtp_reply(452, "4.3.1", messages.busy))
                return
        assert self.envelope is not None
        reader = DataReader(self.data_size_limit or 0)
        transaction = self.envelope
        try:
            done = self._start_transfer(reader)
            if not announced:
                await self.push(START_DATA)
            self._prepare_upstream()
            self._reset_timeout(self.listen.data_timeout)
            # The client going away cancels this task (aiosmtpd's connection_lost).
            await done
            problem = self._refusal(reader, messages.busy)
            content = reader.message() if problem is None else b""
            # The header block is what the filter parses: its lines are bounded (RFC 5321).
            if problem is None and longest_header_line(content) > self.listen.max_line_length - 2:
                problem = "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
            if problem is not None:
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                await self.push(problem)
                return
            self.envelope.content = content
            self.envelope.original_content = content
            if isinstance(self.envelope, TransactionState):
                self.envelope.dot_free = reader.dot_free
            status = await self._call_handler_hook("DATA")
        finally:
            self._end_transfer()
            if isinstance(transaction, TransactionState):
                GatewayHandler.discard_prepared(transaction)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        if isinstance(transaction, TransactionState) and transaction.answered is not None:
            return  # (written as soon as the upstream accepted)
        await self.push("250 OK" if status is MISSING else status)

    def _prepare_upstream(self) -> None:
        """Let the handler open the upstream side while the message comes in (an error here
        only means the delivery opens it later, as usual)."""
        envelope = self.envelope
        if isinstance(envelope, TransactionState) and isinstance(
            self.event_handler, GatewayHandler
        ):
            handler = self.event_handler
            session = self.session
            if self.budget.transfers > AHEAD_MAX_TRANSFERS:
                # Opening ahead shortens a message's trip when the gateway has time to spare;
                # with many transfers at once, the processor is the limit and it only costs.
                return
            try:
                handler.prepare(envelope)
                if len(envelope.prepared) == 1 and session is not None:
                    ((route, task),) = envelope.prepared.items()
                    if not may_go_ahead(route):
                        return  # (the envelope only: the content waits for the decision)
                    self._ahead = SendAhead(
                        task, lambda beginning: handler.predict(session, envelope, route, beginning)
                    )
            except Exception:
                log.exception("opening the upstream ahead failed; it will be opened later")
                GatewayHandler.discard_prepared(envelope)

    def _refusal(self, reader: DataReader, busy: str) -> str | None:
        """The reply to a transfer that will not be decided on, or None."""
        if reader.refusal == "busy":
            return smtp_reply(452, "4.3.1", busy)
        if reader.refusal is not None:
            limit = self.data_size_limit
            return f"552 5.3.4 Message trop volumineux ({limit} octets au plus)"
        return None


def _mail_from(envelope: SmtpEnvelope) -> str:
    """MAIL FROM as relayed ("" for the null sender)."""
    return "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)


class GatewayHandler:
    """aiosmtpd handler hooks: AUTH, MAIL, RCPT and DATA checked by the policy."""

    def __init__(
        self,
        current_policy: Callable[[], Policy],
        relays: RelaySource,
        draft_fn: DraftFn = draft,
        judge_fn: JudgeFn = judge,
        *,
        domain_check: DomainCheckFn | None = None,
        throttle: AuthThrottle | None = None,
        pseudonym_key: bytes | None = None,
        observers: Observers | None = None,
    ) -> None:
        self.current_policy = current_policy
        self.relays = relays
        self.draft_fn = draft_fn
        self.judge_fn = judge_fn
        self.domain_check = domain_check
        self.observers = observers or Observers()
        self.held = HeldReports()
        """Reports (audit, metrics) of answered decisions, made once the gateway is free."""
        self.throttle = throttle or AuthThrottle()
        self.pseudonym_key = pseudonym_key or os.urandom(32)

    # -- helpers -----------------------------------------------------------------------------

    def _upstream_reading(self) -> None:
        """A message was just written upstream and the gateway waits for its reply, its
        longest wait: the held reports are made now, then a garbage collection that is due
        (:func:`collect_if_due`), rather than in a later message's way."""
        self.held.soon()
        asyncio.get_running_loop().call_soon(collect_if_due)

    @staticmethod
    def _reply(code: int, enhanced: str, text: str, envelope: Any) -> str:
        return smtp_reply(code, enhanced, text, utf8=bool(getattr(envelope, "smtp_utf8", False)))

    def _verdict_reply(self, verdict: Verdict, envelope: Any) -> str:
        return self._reply(verdict.smtp_code, verdict.enhanced_code, verdict.reply, envelope)

    def _loggable(self, address: str) -> str:
        return pseudonymise(address, self.pseudonym_key)

    def _emit(
        self,
        session: Session,
        envelope: TransactionState,
        stage: str,
        reply: str,
        *,
        rule: str | None,
        recipients: tuple[tuple[str, str], ...],
        decision: Decision | None = None,
        upstream: str | None = None,
        size_in: int = 0,
        size_out: int = 0,
        duration: float = 0.0,
    ) -> None:
        """Report one answered decision to the observers (audit trail, metrics) once the
        gateway is free (:class:`HeldReports`): what may change by then (the time, the
        authenticated user, the envelope's sender) is taken now."""
        sender = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        self.held.add(
            self._decided,
            session,
            (time.time(), self._login(session), sender),
            stage,
            reply,
            rule,
            recipients,
            decision,
            upstream,
            size_in,
            size_out,
            duration,
        )

    def _decided(
        self,
        session: Session,
        answered: tuple[float, str | None, str],
        stage: str,
        reply: str,
        rule: str | None,
        recipients: tuple[tuple[str, str], ...],
        decision: Decision | None,
        upstream: str | None,
        size_in: int,
        size_out: int,
        duration: float,
    ) -> None:
        """The event of one answered decision, to every observer."""
        when, user, sender = answered
        code = int(reply[:3])
        rest = reply[4:].split(" ", 1)
        enhanced = rest[0] if rest and rest[0][:1].isdigit() else ""
        action = "accept" if code < 300 else "tempfail" if code < 500 else "reject"
        self.observers.decision(
            DecisionEvent(
                time=when,
                session=str(getattr(session, "mssgate_id", "")),
                peer=str(getattr(session, "peer", "")),
                user=user,
                stage=stage,
                sender=sender,
                recipients=recipients,
                action=action,
                rule=rule,
                smtp_code=code,
                enhanced_code=enhanced,
                routes=tuple(d.route.value for d in decision.deliveries) if decision else (),
                upstream=upstream,
                size_in=size_in,
                size_out=size_out,
                message_id=decision.message_id if decision else None,
                signature_added=decision.signature_added if decision else False,
                duration=duration,
            )
        )

    @staticmethod
    def _client_allowed(policy: Policy, session: Session) -> bool:
        """True when the client may relay without AUTH (trusted network or loopback)."""
        ip = peer_ip(getattr(session, "peer", None))
        if ip is None:
            return False
        listen = policy.document.listen
        if ip.is_loopback and listen.trust_loopback:
            return True
        return any(ip in net for net in listen.client_networks)

    @staticmethod
    def _login(session: Session) -> str | None:
        if not getattr(session, "authenticated", False):
            return None
        data = getattr(session, "auth_data", None)
        return data if isinstance(data, str) else None

    @staticmethod
    def _envelope(state: TransactionState, rcpts: list[str], login: str | None) -> Envelope:
        return Envelope(
            mail_from="" if state.mail_from in (None, "<>") else state.mail_from,
            rcpt_tos=tuple(rcpts),
            auth_user=login,
            mail_options=tuple(state.mail_options),
            dot_free=state.dot_free,
        )

    # -- AUTH --------------------------------------------------------------------------------

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH PLAIN (RFC 4616), checked against the policy's users."""
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        fields = blob.split(b"\x00")
        if len(fields) != 3:
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, fields[1], fields[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH LOGIN, checked against the policy's users."""
        if len(args) == 1:
            login = await server.challenge_auth(server.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, login, password)

    async def _authenticate(self, server: SMTP, login_b: bytes, password_b: bytes) -> AuthResult:
        peer = session_peer(server)
        ip = peer_ip(peer)
        client = str(ip) if ip is not None else "?"
        if self.throttle.blocked(client):
            log.warning("%s AUTH refused: too many failures", peer)
            return AuthResult(
                success=False,
                handled=False,
                message="454 4.7.0 Trop d'echecs d'authentification, reessayez plus tard",
            )
        delay = self.throttle.delay_before_answer(client)
        if delay:
            await asyncio.sleep(delay)
        try:
            login = login_b.decode("utf-8")
            password = password_b.decode("utf-8")
        except UnicodeDecodeError:
            login, password = "", ""
        account = self.current_policy().users.get(login)
        ok = await asyncio.to_thread(
            verify_password, account.password_hash if account else None, password
        )
        if not ok:
            self.throttle.failed(client)
            log.warning("%s AUTH failed for login %r", peer, login[:64])
            return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8
        self.throttle.succeeded(client)
        log.info("%s AUTH ok: %s", peer, login)
        return AuthResult(success=True, auth_data=login)

    # -- hooks -------------------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: TransactionState,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Pin the policy for this transaction; check the client and the sender."""
        return self.mail_reply(session, envelope, address, mail_options)

    def mail_reply(
        self, session: Session, envelope: TransactionState, address: str, mail_options: list[str]
    ) -> str:
        """:meth:`handle_MAIL`'s reply, the transaction started when it is a 250."""
        policy = self.current_policy()
        messages = policy.document.messages
        login = self._login(session)
        mail_from = "" if address == "<>" else address
        if login is None and not self._client_allowed(policy, session):
            log.warning("%s relay refused: not authenticated", session.peer)
            if policy.users:
                reply = self._reply(530, "5.7.0", messages.auth_required, envelope)
            else:
                reply = self._reply(554, "5.7.1", messages.not_allowed_client, envelope)
            self._emit(session, envelope, "mail", reply, rule="client", recipients=())
            return reply
        verdict = check_sender(policy, mail_from, login)
        if verdict is not None:
            log.warning(
                "%s MAIL FROM %s refused by %s (user %s)",
                session.peer,
                self._loggable(mail_from),
                verdict.rule,
                login,
            )
            reply = self._verdict_reply(verdict, envelope)
            envelope.mail_from = mail_from
            self._emit(session, envelope, "mail", reply, rule=verdict.rule, recipients=())
            envelope.mail_from = None
            return reply
        if not mail_from.isascii() and not any(o.upper() == "SMTPUTF8" for o in mail_options):
            # After the policy (a lookalike gets its suggestion): a permanent refusal, never a
            # 451 the client would retry forever.
            return smtp_reply(553, "5.6.7", render(messages.needs_smtputf8, address=mail_from))
        envelope.mail_from = mail_from or "<>"
        envelope.mail_options.extend(mail_options)
        envelope.policy = policy
        envelope.refused = []
        envelope.tempfailed = []
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: TransactionState,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Check one recipient against those already accepted; remember any refusal."""
        policy = envelope.policy or self.current_policy()
        reply, rule = self._recipient_refusal(policy, session, envelope, address)
        if reply is None and self.domain_check is not None:
            reply, rule = await self._domain_refusal(policy, envelope, address)
        return self._recipient_reply(policy, session, envelope, address, rcpt_options, reply, rule)

    def rcpt_reply(
        self, session: Session, envelope: TransactionState, address: str, rcpt_options: list[str]
    ) -> str:
        """:meth:`handle_RCPT`'s reply when there is no DNS check (nothing to wait for)."""
        assert self.domain_check is None
        policy = envelope.policy or self.current_policy()
        refusal = self._recipient_refusal(policy, session, envelope, address)
        return self._recipient_reply(policy, session, envelope, address, rcpt_options, *refusal)

    def _recipient_reply(
        self,
        policy: Policy,
        session: Session,
        envelope: TransactionState,
        address: str,
        rcpt_options: list[str],
        reply: str | None,
        rule: str | None,
    ) -> str:
        """The recipient taken (250) or its refusal remembered and reported, once the
        limits, the policy and the DNS check said ``reply`` (None: nothing against it) and
        the route is checked (:meth:`_route_refusal`)."""
        if reply is None:
            reply, rule = self._route_refusal(policy, envelope, address)
        if reply is None:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return "250 2.1.5 OK"
        if rule == ONE_ROUTE:
            pass  # deferred, not refused: the accepted recipients' message goes on
        elif rule == "dns_check" and reply.startswith("4"):
            envelope.tempfailed.append(address)  # the whole message will be a 451
        else:
            envelope.refused.append(address)
        kind = policy.classify(address).kind.value
        self._emit(session, envelope, "rcpt", reply, rule=rule, recipients=((address, kind),))
        return reply

    def _recipient_refusal(
        self, policy: Policy, session: Session, envelope: TransactionState, address: str
    ) -> tuple[str | None, str | None]:
        """The refusal of one recipient by the limits and the policy (reply, rule), or
        (None, None)."""
        messages = policy.document.messages
        limit = policy.document.listen.max_recipients
        if len(envelope.rcpt_tos) + len(envelope.refused) + len(envelope.tempfailed) >= limit:
            text = render(messages.too_many_recipients, max=str(limit))
            # Counted as refused: the whole message will be refused at DATA (all or nothing).
            return self._reply(452, "4.5.3", text, envelope), "max_recipients"
        current = self._envelope(envelope, envelope.rcpt_tos, self._login(session))
        verdict = check_recipient(policy, current, address)
        if verdict is not None:
            log.info(
                "%s RCPT %s refused by %s", session.peer, self._loggable(address), verdict.rule
            )
            return self._verdict_reply(verdict, envelope), verdict.rule
        if not address.isascii() and not envelope.smtp_utf8:
            text = render(messages.needs_smtputf8, address=address)
            return smtp_reply(553, "5.6.7", text), "smtputf8"
        return None, None

    async def _domain_refusal(
        self, policy: Policy, envelope: TransactionState, address: str
    ) -> tuple[str | None, str | None]:
        """The refusal of one recipient whose domain the DNS check did not find, or
        (None, None)."""
        assert self.domain_check is not None
        messages = policy.document.messages
        domain = policy.classify(address).normalized.rpartition("@")[2]
        status = await self.domain_check(domain)
        if status == "missing":
            text = render(messages.domain_missing, address=address)
            return self._reply(550, "5.1.2", text, envelope), "dns_check"
        if status != "exists":
            text = render(messages.dns_tempfail, address=address)
            return self._reply(451, "4.4.3", text, envelope), "dns_check"
        return None, None

    def _route_refusal(
        self, policy: Policy, envelope: TransactionState, address: str
    ) -> tuple[str | None, str | None]:
        """A recipient for another route than the message's first one, deferred with a 452
        (None, None otherwise)."""
        messages = policy.document.messages
        if envelope.rcpt_tos and route_of(policy, address) != route_of(
            policy, envelope.rcpt_tos[0]
        ):
            # Only when the rules let both spaces in one message: one upstream transaction per
            # message, so that one route's failure never leaves the other delivered (RFC 5321
            # 452: the client sends this recipient in a later transaction).
            text = render(messages.other_route, address=address)
            return self._reply(452, "4.5.3", text, envelope), ONE_ROUTE
        return None, None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: TransactionState) -> str:
        """Decide on the whole message, relay it, and answer only after the upstream did."""
        started = time.monotonic()
        raw = envelope.original_content or b""
        reply, rule, decision, upstream, size_out = await self._data(server, session, envelope, raw)
        # (The observers hear of it once the gateway is free: see _emit.)
        if decision is not None:
            recipients = tuple((c.address, c.kind.value) for c in decision.recipients)
        else:
            policy = envelope.policy or self.current_policy()
            recipients = tuple(
                (r, policy.classify(r).kind.value)
                for r in (*envelope.rcpt_tos, *envelope.refused, *envelope.tempfailed)
            )
        self._emit(
            session,
            envelope,
            "data",
            reply,
            rule=rule,
            recipients=recipients,
            decision=decision,
            upstream=upstream,
            size_in=len(raw),
            size_out=size_out,
            duration=time.monotonic() - started,
        )
        return reply

    async def _data(
        self, server: SMTP, session: Session, envelope: TransactionState, raw: bytes
    ) -> tuple[str, str | None, Decision | None, str | None, int]:
        """(reply, rule, decision, upstream answer, bytes relayed) for one message."""
        policy = envelope.policy or self.current_policy()
        messages = policy.document.messages
        header_end = raw.find(b"\r\n\r\n")
        header_size = header_end if header_end >= 0 else len(raw)
        if header_size > policy.document.listen.max_header_size:
            reply = self._reply(552, "5.3.4", messages.header_too_large, envelope)
            return reply, "max_header_size", None, None, 0
        login = self._login(session)
        attempted = [*envelope.rcpt_tos, *envelope.refused, *envelope.tempfailed]
        if envelope.prepared:
            await self._write_ahead(envelope, raw)
        try:
            drafted = self.draft_fn(policy, self._envelope(envelope, attempted, login), raw)
            decision = self.judge_fn(policy, drafted)
        except Exception:
            log.exception("%s filter failed; message not relayed (451)", session.peer)
            return (
                self._reply(451, "4.3.0", messages.tempfail, envelope),
                "filter_error",
                None,
                None,
                0,
            )

        if decision.action is not Action.ACCEPT:
            log.info("%s message refused by %s", session.peer, decision.rule)
            reply = self._reply(
                decision.smtp_code, decision.enhanced_code, decision.reply, envelope
            )
            return reply, decision.rule, decision, None, 0
        if envelope.refused:
            # The client went on after a refused RCPT: nothing goes to anyone.
            text = render(messages.refused_earlier, address=envelope.refused[0])
            return self._reply(550, "5.7.1", text, envelope), "refused_earlier", decision, None, 0
        if envelope.tempfailed:
            text = render(messages.dns_tempfail, address=envelope.tempfailed[0])
            return self._reply(451, "4.4.3", text, envelope), "dns_check", decision, None, 0

        budget = sum(self._budget(policy, d.route) for d in decision.deliveries) + _MARGIN
        if hasattr(server, "_reset_timeout"):
            # aiosmtpd's idle timer covers DATA plus our relay: give the upstream its budget.
            server._reset_timeout(budget)
        details: list[str] = []
        size_out = 0
        relays = self.relays(policy) if callable(self.relays) else self.relays

        def answer(detail: str) -> None:
            # The one upstream accepted: the client is told at once, before the delivery's
            # coroutines unwind (its reply is the one audited, whatever happens after).
            reply = self._accepted_reply(decision, [detail], envelope)
            if isinstance(server, GatewaySMTP) and server.write_reply(reply):
                envelope.answered = reply

        for delivery in decision.deliveries:
            relay = relays[delivery.route]
            began = time.monotonic()
            prepared = envelope.prepared.pop(delivery.route, None)
            try:
                if isinstance(relay, SmtpRelay):
                    outcome = await relay.deliver(
                        _mail_from(envelope),
                        delivery,
                        tuple(envelope.mail_options),
                        prepared=prepared,
                        hooks=DeliveryHooks(
                            written=self._upstream_reading,
                            accepted=answer if len(decision.deliveries) == 1 else None,
                        ),
                    )
                else:
                    outcome = await relay.deliver(
                        _mail_from(envelope), delivery, tuple(envelope.mail_options)
                    )
            except Exception as exc:
                if envelope.answered is not None:
                    # (The upstream had accepted: what fails after is only bookkeeping.)
                    log.exception(
                        "%s relay to %s raised after its 250", session.peer, delivery.route.value
                    )
                    return envelope.answered, None, decision, None, len(delivery.message)
                failure = (
                    exc
                    if isinstance(exc, RelayFailure)
                    else RelayFailure(451, "4.3.0", messages.tempfail)
                )
                if not isinstance(exc, RelayFailure):
                    log.exception("%s relay to %s raised", session.peer, delivery.route.value)
                kind = "tempfail" if failure.temporary else "permfail"
                self.held.add(
                    self.observers.relay, delivery.route.value, time.monotonic() - began, kind
                )
                log.warning(
                    "%s relay to %s failed: %s", session.peer, delivery.route.value, failure.code
                )
                reply = self._reply(failure.code, failure.enhanced, failure.text, envelope)
                return reply, "upstream", decision, failure.text, size_out
            self.held.add(
                self.observers.relay, delivery.route.value, time.monotonic() - began, "ok"
            )
            details.append(outcome.detail)
            size_out += len(delivery.message)
        # Per-message success is the audit trail's job; the log keeps what needs attention.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s message relayed via %s%s",
                session.peer,
                "+".join(d.route.value for d in decision.deliveries),
                " (signature added)" if decision.signature_added else "",
            )
        reply = envelope.answered or self._accepted_reply(decision, details, envelope)
        return reply, None, decision, " ; ".join(details), size_out

    def _accepted_reply(self, decision: Decision, details: list[str], envelope: Any) -> str:
        """The 250 of a relayed message: the decision's text, then each upstream's answer."""
        text = decision.reply + (" ; " + " ; ".join(details) if details else "")
        return self._reply(250, "2.0.0", text, envelope)

    @staticmethod
    async def _write_ahead(envelope: TransactionState, raw: bytes) -> None:
        """Before deciding: each upstream transaction opened while the message came in gets
        the few loop turns that bring in a 354 already received (:func:`opened`, never a wait
        on the upstream), so that the message goes upstream as soon as it is decided, without
        another turn of the loop. A message for the MSSanté route then goes to its upstream,
        so that the upstream reads it while the filter decides. Nothing is final: the
        upstream gets the final dot only if the message is accepted and relayed as exactly
        these bytes (:meth:`SmtpRelay.deliver`), else the connection is dropped and the
        upstream forgets it. An ordinary upstream never gets content ahead
        (:func:`may_go_ahead`)."""
        for route, task in list(envelope.prepared.items()):
            ready = await opened(task)
            if ready is not None and envelope.dot_free and may_go_ahead(route):
                # (Not when lines need dot-stuffing on the way out, or bare line endings
                # were made CRLF.)
                ready.send_rest(raw)

    def prepare(self, envelope: TransactionState) -> None:
        """Open the upstream transactions this message will need if accepted (the routes
        and recipients depend on the envelope alone) while it is still coming in; what the
        decision does not use is discarded (:meth:`discard_prepared`)."""
        if envelope.refused or envelope.tempfailed or envelope.prepared:
            return
        policy = envelope.policy or self.current_policy()
        relays = self.relays(policy) if callable(self.relays) else self.relays
        plan = recipients_by_route(
            policy,
            Envelope(mail_from=_mail_from(envelope), rcpt_tos=tuple(envelope.rcpt_tos)),
        )
        for route, recipients in plan:
            relay = relays.get(route)
            if isinstance(relay, SmtpRelay):
                envelope.prepared[route] = relay.prepare(
                    _mail_from(envelope), recipients, tuple(envelope.mail_options)
                )

    def predict(
        self, session: Session, envelope: TransactionState, route: Route, beginning: bytes
    ) -> bytes | None:
        """What would be relayed on ``route`` for a message that began with ``beginning``
        (None: nothing); see :mod:`mssgate.ahead`."""
        policy = envelope.policy or self.current_policy()
        attempted = [*envelope.rcpt_tos, *envelope.refused, *envelope.tempfailed]
        envelope_now = self._envelope(envelope, attempted, self._login(session))
        decision = self.judge_fn(policy, self.draft_fn(policy, envelope_now, beginning))
        if decision.action is not Action.ACCEPT:
            return None
        return next((d.message for d in decision.deliveries if d.route is route), None)

    @staticmethod
    def discard_prepared(envelope: TransactionState) -> None:
        """Close the prepared upstream transactions no delivery used (no final dot sent)."""
        while envelope.prepared:
            discard(envelope.prepared.popitem()[1])

    @staticmethod
    def _budget(policy: Policy, route: Route) -> float:
        config = getattr(policy.document.routes, route.value)
        return float(config.upstream.timeout) if config.upstream is not None else 30.0

    async def handle_exception(self, error: Exception) -> str:
        """Anything unexpected is a temporary failure (aiosmtpd would say a permanent 500)."""
        return self.exception_reply(error)

    def exception_reply(self, error: Exception) -> str:
        """:meth:`handle_exception`'s reply (the error's type logged, never its text)."""
        log.error("session error: %s", type(error).__name__)
        return smtp_reply(451, "4.3.0", self.current_policy().document.messages.tempfail)


def listener_tls_context(listen: ListenConfig) -> ssl.SSLContext | None:
    """The server-side TLS context of the listener (None without ``listen.tls``)."""
    if listen.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(listen.tls.cert_file, listen.tls.key_file)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if listen.tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    return context


class Gateway:
    """A listening mssgate: the aiosmtpd protocol on asyncio servers in the current loop."""

    def __init__(
        self,
        current_policy: Callable[[], Policy],
        relays: RelaySource,
        *,
        host: str | None = None,
        port: int | None = None,
        draft_fn: DraftFn = draft,
        judge_fn: JudgeFn = judge,
        domain_check: DomainCheckFn | None = None,
        pseudonym_key: bytes | None = None,
        observers: Observers | None = None,
    ) -> None:
        self.current_policy = current_policy
        self.observers = observers or Observers()
        policy = current_policy()
        listen = policy.document.listen
        failures = listen.auth_failures
        dns = policy.document.dns_check
        if domain_check is None and dns is not None and dns.enabled:
            domain_check = DomainChecker(dns).check
        self.handler = GatewayHandler(
            current_policy,
            relays,
            draft_fn,
            judge_fn,
            domain_check=domain_check,
            throttle=AuthThrottle(
                free_attempts=failures.free_attempts,
                delay=failures.delay,
                max_attempts=failures.max_attempts,
                window=failures.window,
            ),
            pseudonym_key=pseudonym_key,
            observers=self.observers,
        )
        self.host = host if host is not None else listen.host
        self.port = port if port is not None else listen.port
        self.implicit_port: int | None = listen.tls.implicit_port if listen.tls else None
        self.tls_context = listener_tls_context(listen)
        self.counter = ConnectionCounter()
        self.budget = InflightBudget(listen.max_inflight_bytes)
        self._servers: list[asyncio.Server] = []

    def _protocol(self, implicit_tls: bool) -> GatewaySMTP:
        policy = self.current_policy()
        listen = policy.document.listen
        return GatewaySMTP(
            self.handler,
            listen,
            self.counter,
            implicit_tls=implicit_tls,
            observers=self.observers,
            budget=self.budget,
            hostname=listen.hostname,
            ident="mssgate",
            data_size_limit=listen.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=listen.client_timeout,
            tls_context=None if implicit_tls else self.tls_context,
            auth_exclude_mechanism=() if policy.users else ("PLAIN", "LOGIN"),
            command_call_limit=_CALL_LIMITS,
        )

    async def start(self) -> None:
        """Listen; ``self.port`` (and ``self.implicit_port``) are the real ports afterwards."""
        # aiosmtpd logs every command (addresses, patients' INS) at INFO and every DATA line
        # at DEBUG: health data must never reach a log, whatever the logging set-up.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: self._protocol(False), host=self.host, port=self.port
        )
        self._servers.append(server)
        self.port = int(server.sockets[0].getsockname()[1])
        if self.implicit_port is not None and self.tls_context is not None:
            implicit = await loop.create_server(
                lambda: self._protocol(True),
                host=self.host,
                port=self.implicit_port,
                ssl=self.tls_context,
            )
            self._servers.append(implicit)
            self.implicit_port = int(implicit.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close the servers; the reports still held are made."""
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()
        self.handler.held.flush()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
