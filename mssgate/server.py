"""The SMTP listener: an aiosmtpd handler around the pure decision core.

It keeps per-transaction state (the policy in force when the transaction started, recipients
refused at RCPT time), asks the core for decisions, and answers the client only once every
upstream accepted the message. Anything unexpected becomes a ``451`` (the client retries),
never aiosmtpd's permanent ``500`` and never an unfiltered relay.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mssgate.decide import check_recipient, check_sender, decide
from mssgate.model import Action, Decision, Envelope, Route, Verdict
from mssgate.policy import Policy
from mssgate.relay import Relay, RelayFailure
from mssgate.texts import render, smtp_reply

log = logging.getLogger("mssgate.server")

DecideFn = Callable[[Policy, Envelope, bytes], Decision]
_MARGIN = 15.0
"""Seconds left to answer the client after the upstream budget ran out."""


class TransactionState(SmtpEnvelope):
    """aiosmtpd's envelope plus what mssgate remembers during one transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.policy: Policy | None = None
        self.refused: list[str] = []


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol with mssgate's transaction state."""

    def _create_envelope(self) -> TransactionState:
        return TransactionState()


def _peer_ip(session: Session) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    peer = getattr(session, "peer", None)
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        return ipaddress.ip_address(peer[0])
    except ValueError:
        return None


class GatewayHandler:
    """aiosmtpd handler hooks: MAIL, RCPT and DATA checked by the policy."""

    def __init__(
        self,
        current_policy: Callable[[], Policy],
        relays: Mapping[Route, Relay],
        decide_fn: DecideFn = decide,
    ) -> None:
        self.current_policy = current_policy
        self.relays = relays
        self.decide_fn = decide_fn

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _reply(code: int, enhanced: str, text: str, envelope: Any) -> str:
        return smtp_reply(code, enhanced, text, utf8=bool(getattr(envelope, "smtp_utf8", False)))

    def _verdict_reply(self, verdict: Verdict, envelope: Any) -> str:
        return self._reply(verdict.smtp_code, verdict.enhanced_code, verdict.reply, envelope)

    @staticmethod
    def _client_allowed(policy: Policy, session: Session) -> bool:
        ip = _peer_ip(session)
        if ip is None:
            return False
        if ip.is_loopback:
            return True
        return any(ip in net for net in policy.document.listen.client_networks)

    @staticmethod
    def _envelope(state: TransactionState, rcpts: list[str]) -> Envelope:
        return Envelope(
            mail_from=state.mail_from or "",
            rcpt_tos=tuple(rcpts),
            auth_user=None,
            mail_options=tuple(state.mail_options),
        )

    # -- hooks -------------------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: TransactionState,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Pin the policy for this transaction and check the sender."""
        policy = self.current_policy()
        if not self._client_allowed(policy, session):
            log.warning("relay refused to client %s", session.peer)
            text = render(policy.document.messages.not_allowed_client)
            return self._reply(554, "5.7.1", text, envelope)
        mail_from = "" if address == "<>" else address
        verdict = check_sender(policy, mail_from) if mail_from else None
        if verdict is not None:
            log.info("%s MAIL FROM refused by %s", session.peer, verdict.rule)
            return self._verdict_reply(verdict, envelope)
        envelope.mail_from = mail_from or "<>"
        envelope.mail_options.extend(mail_options)
        envelope.policy = policy
        envelope.refused = []
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
        limit = policy.document.listen.max_recipients
        if len(envelope.rcpt_tos) + len(envelope.refused) >= limit:
            envelope.refused.append(address)
            text = render(policy.document.messages.too_many_recipients, max=str(limit))
            return self._reply(452, "4.5.3", text, envelope)
        current = self._envelope(envelope, envelope.rcpt_tos)
        verdict = check_recipient(policy, current, address)
        if verdict is not None:
            envelope.refused.append(address)
            log.info("%s RCPT refused by %s", session.peer, verdict.rule)
            return self._verdict_reply(verdict, envelope)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: TransactionState) -> str:
        """Decide on the whole message, relay it, and answer only after the upstream did."""
        policy = envelope.policy or self.current_policy()
        messages = policy.document.messages
        raw = envelope.original_content or b""
        attempted = [*envelope.rcpt_tos, *envelope.refused]
        try:
            decision = self.decide_fn(policy, self._envelope(envelope, attempted), raw)
        except Exception:
            log.exception("%s filter failed; message not relayed (451)", session.peer)
            return self._reply(451, "4.3.0", messages.tempfail, envelope)

        if decision.action is not Action.ACCEPT:
            log.info("%s message refused by %s", session.peer, decision.rule)
            return self._reply(decision.smtp_code, decision.enhanced_code, decision.reply, envelope)
        if envelope.refused:
            # The client went on after a refused RCPT: nothing goes to anyone.
            text = render(messages.refused_earlier, address=envelope.refused[0])
            return self._reply(550, "5.7.1", text, envelope)

        budget = sum(self._budget(policy, d.route) for d in decision.deliveries) + _MARGIN
        if hasattr(server, "_reset_timeout"):
            # aiosmtpd's idle timer covers DATA plus our relay: give the upstream its budget.
            server._reset_timeout(budget)
        details = []
        for delivery in decision.deliveries:
            relay = self.relays[delivery.route]
            try:
                outcome = await relay.deliver(
                    "" if envelope.mail_from in (None, "<>") else envelope.mail_from,
                    delivery,
                    tuple(envelope.mail_options),
                )
            except RelayFailure as failure:
                log.warning(
                    "%s relay to %s failed: %s", session.peer, delivery.route.value, failure.code
                )
                return self._reply(failure.code, failure.enhanced, failure.text, envelope)
            details.append(outcome.detail)
        log.info(
            "%s message relayed via %s%s",
            session.peer,
            "+".join(d.route.value for d in decision.deliveries),
            " (signature added)" if decision.signature_added else "",
        )
        text = decision.reply + (" ; " + " ; ".join(details) if details else "")
        return self._reply(250, "2.0.0", text, envelope)

    @staticmethod
    def _budget(policy: Policy, route: Route) -> float:
        config = getattr(policy.document.routes, route.value)
        return float(config.upstream.timeout) if config.upstream is not None else 30.0

    async def handle_exception(self, error: Exception) -> str:
        """Anything unexpected is a temporary failure (aiosmtpd would say a permanent 500)."""
        log.error("session error: %s", type(error).__name__)
        return smtp_reply(451, "4.3.0", self.current_policy().document.messages.tempfail)


class Gateway:
    """A listening mssgate: the aiosmtpd protocol on an asyncio server in the current loop."""

    def __init__(
        self,
        current_policy: Callable[[], Policy],
        relays: Mapping[Route, Relay],
        *,
        host: str | None = None,
        port: int | None = None,
        decide_fn: DecideFn = decide,
    ) -> None:
        self.current_policy = current_policy
        self.handler = GatewayHandler(current_policy, relays, decide_fn)
        listen = current_policy().document.listen
        self.host = host if host is not None else listen.host
        self.port = port if port is not None else listen.port
        self._server: asyncio.Server | None = None

    def _protocol(self) -> GatewaySMTP:
        listen = self.current_policy().document.listen
        return GatewaySMTP(
            self.handler,
            hostname=listen.hostname,
            ident="mssgate",
            data_size_limit=listen.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=listen.client_timeout,
        )

    async def start(self) -> None:
        """Listen; ``self.port`` is the real port afterwards (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host=self.host, port=self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close the server."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
