"""Trust over real TLS on 127.0.0.1: no open relay, AUTH only over TLS, who may send as which
BAL, upstream certificates, and the listener's limits."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mssgate.auth import AuthThrottle, hash_password
from mssgate.config import load_policy_text
from mssgate.policy import Policy
from mssgate.relay import build_relays
from mssgate.server import Gateway
from tests.conftest import PEOPLE
from tests.messages import message
from tests.smtp_peers import LOOPBACK, CaptureUpstream
from tests.tls_material import TlsFiles, make_tls_files

PASSWORDS = {"a.martin": "correct horse 1", "sophie": "battery staple 2", "b.durand": "x" * 12}
HASHES = {login: hash_password(pw) for login, pw in PASSWORDS.items()}
PERSON = {"a.martin": "martin", "sophie": "sophie", "b.durand": "durand"}

BAL = "alice.martin@medecin.mssante.fr"
CABINET_BAL = "cabinet.gare@cabinet.mssante.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
GMAIL = "patient.ami@gmail.com"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA and certificates, written once for the module."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def security_policy(
    tls: TlsFiles, mssante: int, ordinary: int, listen: str = "", route: str = ""
) -> str:
    users = "".join(
        f"  - {{login: {login}, person: {PERSON[login]}, password_hash: '{HASHES[login]}'}}\n"
        for login in PASSWORDS
    )
    return f"""
version: 1
listen:
  host: 127.0.0.1
  port: 0
  hostname: mssgate.test
  trust_loopback: false
  client_timeout: 30
  tls:
    cert_file: {tls.server_cert}
    key_file: {tls.server_key}
    implicit_port: 0
  auth_failures: {{free_attempts: 1, delay: 0.2, max_attempts: 3, window: 60}}
{listen}
routes:
  mssante:
    upstream: {{host: {LOOPBACK}, port: {mssante}, tls: none, timeout: 5}}
  ordinary:
    upstream: {{host: {LOOPBACK}, port: {ordinary}, tls: none, timeout: 5{route}}}
users:
{users}
{PEOPLE}
"""


@dataclass
class SecureStack:
    gateway: Gateway
    mssante: CaptureUpstream
    ordinary: CaptureUpstream
    policy: Policy
    tls: TlsFiles

    def delivered(self) -> int:
        return len(self.mssante.received) + len(self.ordinary.received)


@asynccontextmanager
async def secure_stack(tls: TlsFiles, listen: str = "") -> AsyncIterator[SecureStack]:
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        text = security_policy(tls, mssante.port, ordinary.port, listen)
        policy = load_policy_text(text, "securite.yaml").policy
        relays = build_relays(policy.route_configs(), "mssgate.test", {})
        async with Gateway(lambda: policy, relays, host=LOOPBACK, port=0) as gateway:
            yield SecureStack(gateway, mssante, ordinary, policy, tls)


@dataclass
class Outcome:
    code: int
    text: str
    step: str


def _session(
    stack: SecureStack,
    *,
    login: str | None,
    mail_from: str,
    rcpts: list[str],
    body: bytes,
    starttls: bool = True,
    implicit: bool = False,
    password: str | None = None,
) -> Outcome:
    """One client session, step by step, returning the first refusal (or the final 250)."""
    context = stack.tls.client_context()
    if implicit:
        assert stack.gateway.implicit_port is not None
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            LOOPBACK, stack.gateway.implicit_port, context=context, timeout=20
        )
    else:
        client = smtplib.SMTP(LOOPBACK, stack.gateway.port, timeout=20)
    with client:
        client.ehlo("poste.cabinet")
        if starttls and not implicit:
            client.starttls(context=context)
            client.ehlo("poste.cabinet")
        if login is not None:
            try:
                client.login(login, password or PASSWORDS[login])
            except smtplib.SMTPAuthenticationError as exc:
                return Outcome(exc.smtp_code, exc.smtp_error.decode(), "auth")
        code, text = client.mail(mail_from)
        if code != 250:
            return Outcome(code, text.decode(), "mail")
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return Outcome(code, text.decode(), "rcpt")
        code, text = client.data(body)
        return Outcome(code, text.decode(), "data")


async def session(stack: SecureStack, **kw: object) -> Outcome:
    return await asyncio.to_thread(_session, stack, **kw)  # type: ignore[arg-type]


# -- no open relay ----------------------------------------------------------------------------


async def test_no_relay_without_authentication(tls: TlsFiles) -> None:
    async with secure_stack(tls) as stack:
        out = await session(
            stack,
            login=None,
            mail_from="x@gmail.com",
            rcpts=[GMAIL],
            body=message("x@gmail.com", GMAIL),
        )
    assert (out.step, out.code) == ("mail", 530)
    assert stack.delivered() == 0


async def test_auth_before_starttls_is_refused(tls: TlsFiles) -> None:
    async with secure_stack(tls) as stack:

        def attempt() -> tuple[bool, int, bytes]:
            with smtplib.SMTP(LOOPBACK, stack.gateway.port, timeout=10) as client:
                client.ehlo("poste.cabinet")
                offered = client.has_extn("auth")
                code, text = client.docmd("AUTH", "PLAIN AGEubWFydGluAGNvcnJlY3QgaG9yc2UgMQ==")
                return offered, code, text

        offered, code, text = await asyncio.to_thread(attempt)
    assert not offered  # AUTH is not even advertised before TLS
    assert code == 538 and b"5.7.11" in text


async def test_auth_is_offered_after_starttls_and_on_implicit_tls(tls: TlsFiles) -> None:
    async with secure_stack(tls) as stack:
        out = await session(
            stack, login="a.martin", mail_from=BAL, rcpts=[CONFRERE], body=message(BAL, CONFRERE)
        )
        assert (out.step, out.code) == ("data", 250)
        out = await session(
            stack,
            login="a.martin",
            implicit=True,
            mail_from=BAL,
            rcpts=[CONFRERE],
            body=message(BAL, CONFRERE),
        )
        assert (out.step, out.code) == ("data", 250)
        assert len(stack.mssante.received) == 2


async def test_wrong_password_is_refused_then_throttled(tls: TlsFiles) -> None:
    import base64

    def attempts() -> list[int]:
        codes = []
        with smtplib.SMTP(LOOPBACK, stack.gateway.port, timeout=20) as client:
            client.starttls(context=tls.client_context())
            client.ehlo("poste.cabinet")
            for password in ("wrong", "wrong", "wrong", "wrong", PASSWORDS["a.martin"]):
                token = base64.b64encode(f"\0a.martin\0{password}".encode()).decode()
                codes.append(client.docmd("AUTH", f"PLAIN {token}")[0])
        return codes

    async with secure_stack(tls) as stack:
        loop = asyncio.get_running_loop()
        start = loop.time()
        codes = await asyncio.to_thread(attempts)
        elapsed = loop.time() - start
    # max_attempts 3: refused, refused (delayed), refused (delayed), then blocked, even with
    # the right password.
    assert codes == [535, 535, 535, 454, 454]
    assert elapsed >= 0.2  # the third answer waited (one attempt over the free one)
    assert stack.delivered() == 0


def test_auth_throttle_delays_then_refuses() -> None:
    now = [0.0]
    throttle = AuthThrottle(
        free_attempts=2, delay=1.5, max_attempts=4, window=60, clock=lambda: now[0]
    )
    assert throttle.delay_before_answer("192.0.2.1") == 0
    for _ in range(3):
        throttle.failed("192.0.2.1")
    assert throttle.delay_before_answer("192.0.2.1") == 1.5
    throttle.failed("192.0.2.1")
    assert throttle.blocked("192.0.2.1") and not throttle.blocked("192.0.2.2")
    now[0] = 61.0
    assert not throttle.blocked("192.0.2.1")


# -- who may send as which BAL ----------------------------------------------------------------


async def test_user_cannot_send_as_a_bal_they_do_not_hold(tls: TlsFiles) -> None:
    async with secure_stack(tls) as stack:
        out = await session(
            stack, login="sophie", mail_from=BAL, rcpts=[CONFRERE], body=message(BAL, CONFRERE)
        )
    assert (out.step, out.code) == ("mail", 550)
    assert "5.7.1" in out.text and "sophie" in out.text and BAL in out.text
    assert stack.delivered() == 0


async def test_header_from_is_checked_too(tls: TlsFiles) -> None:
    async with secure_stack(tls) as stack:
        out = await session(
            stack,
            login="sophie",
            mail_from=CABINET_BAL,
            rcpts=[CONFRERE],
            body=message(BAL, CONFRERE),
        )
    assert (out.step, out.code) == ("data", 550)
    assert BAL in out.text
    assert stack.delivered() == 0


async def test_delegate_of_the_cabinet_bal_can_send_as_it(tls: TlsFiles) -> None:
    async with secure_stack(tls) as stack:
        out = await session(
            stack,
            login="sophie",
            mail_from=CABINET_BAL,
            rcpts=[CONFRERE],
            body=message(CABINET_BAL, CONFRERE),
        )
        assert (out.step, out.code) == ("data", 250)
        # and as her own ordinary address, where the signature names the cabinet BAL
        out = await session(
            stack,
            login="sophie",
            mail_from="secretariat@cabinet-gare.fr",
            rcpts=[GMAIL],
            body=message("secretariat@cabinet-gare.fr", GMAIL),
        )
        assert (out.step, out.code) == ("data", 250)
    (got,) = stack.mssante.received
    assert got.mail_from == CABINET_BAL
    (signed,) = stack.ordinary.received
    assert CABINET_BAL.encode() in signed.data


async def test_co_holder_can_send_as_the_cabinet_bal(tls: TlsFiles) -> None:
    async with secure_stack(tls) as stack:
        out = await session(
            stack,
            login="b.durand",
            mail_from=CABINET_BAL,
            rcpts=[CONFRERE],
            body=message(CABINET_BAL, CONFRERE),
        )
    assert (out.step, out.code) == ("data", 250)


# -- limits -----------------------------------------------------------------------------------


async def test_connections_per_client_are_limited(tls: TlsFiles) -> None:
    async with secure_stack(tls, listen="  max_connections_per_client: 2") as stack:
        opened = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(LOOPBACK, stack.gateway.port)
            assert (await reader.readline()).startswith(b"220")
            opened.append(writer)
        reader, writer = await asyncio.open_connection(LOOPBACK, stack.gateway.port)
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"421 4.7.0")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        writer.close()
        for w in opened:
            w.close()
        await asyncio.sleep(0.1)
        # once they are gone, a new connection is welcome again
        reader, writer = await asyncio.open_connection(LOOPBACK, stack.gateway.port)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220")
        writer.close()


async def test_a_slow_data_sender_is_cut_off(tls: TlsFiles) -> None:
    listen = "  data_timeout: 1\n  trust_loopback: true"
    async with secure_stack(tls, listen=listen.replace("  trust_loopback: true", "")) as stack:
        reader, writer = await asyncio.open_connection(LOOPBACK, stack.gateway.port)
        await reader.readline()
        writer.write(b"EHLO slow\r\n")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        writer.write(b"STARTTLS\r\n")
        assert (await reader.readline()).startswith(b"220")
        await writer.start_tls(stack.tls.client_context())
        writer.write(b"EHLO slow\r\n")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        import base64

        token = base64.b64encode(b"\x00a.martin\x00" + PASSWORDS["a.martin"].encode())
        writer.write(b"AUTH PLAIN " + token + b"\r\n")
        assert (await reader.readline()).startswith(b"235")
        for line in (f"MAIL FROM:<{BAL}>", f"RCPT TO:<{CONFRERE}>", "DATA"):
            writer.write(line.encode() + b"\r\n")
            await reader.readline()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            for _ in range(20):  # one header line every 0.3 s: the DATA budget is 1 s
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                await asyncio.sleep(0.3)
                if reader.at_eof():
                    raise ConnectionError("closed")
        assert loop.time() - start < 4
        writer.close()
    assert stack.delivered() == 0


async def test_oversize_headers_are_refused(tls: TlsFiles) -> None:
    async with secure_stack(tls, listen="  max_header_size: 2048") as stack:
        big = "X-Padding: " + "a" * 900 + "\n"
        body = message(BAL, CONFRERE, extra_headers=big * 4)
        out = await session(stack, login="a.martin", mail_from=BAL, rcpts=[CONFRERE], body=body)
    assert (out.step, out.code) == ("data", 552)
    assert stack.delivered() == 0


# -- upstream TLS -----------------------------------------------------------------------------


@asynccontextmanager
async def tls_upstream_stack(
    tls: TlsFiles, route: str, require_client_cert: bool = False, secured: str = "ordinary"
) -> AsyncIterator[tuple[Gateway, CaptureUpstream]]:
    """The ``secured`` route's upstream speaks STARTTLS (with ``route``'s extra settings);
    the other route goes to a plain upstream."""
    context = tls.server_context(require_client_cert=require_client_cert)
    async with CaptureUpstream(tls_context=context) as upstream, CaptureUpstream() as other:
        with_tls = f"{{host: {LOOPBACK}, port: {upstream.port}, tls: starttls, timeout: 5{route}}}"
        plain = f"{{host: {LOOPBACK}, port: {other.port}, tls: none, timeout: 5}}"
        text = f"""
version: 1
listen: {{host: 127.0.0.1, port: 0, client_timeout: 30}}
routes:
  mssante:
    upstream: {with_tls if secured == "mssante" else plain}
  ordinary:
    upstream: {with_tls if secured == "ordinary" else plain}
"""
        policy = load_policy_text(text, "upstream-tls.yaml").policy
        relays = build_relays(policy.route_configs(), "mssgate.test", {})
        async with Gateway(lambda: policy, relays, host=LOOPBACK, port=0) as gateway:
            yield gateway, upstream


def _plain_send(port: int) -> tuple[int, str]:
    with smtplib.SMTP(LOOPBACK, port, timeout=20) as client:
        try:
            client.sendmail("a@exemple.fr", [GMAIL], message("a@exemple.fr", GMAIL))
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, ""


async def test_upstream_certificate_verified_with_the_route_ca(tls: TlsFiles) -> None:
    async with tls_upstream_stack(tls, f", ca_file: {tls.ca}") as (gateway, upstream):
        code, _ = await asyncio.to_thread(_plain_send, gateway.port)
    assert code == 250
    assert upstream.tls_sessions == 1 and len(upstream.received) == 1


async def test_unverifiable_upstream_certificate_fails_closed(tls: TlsFiles) -> None:
    async with tls_upstream_stack(tls, "") as (gateway, upstream):
        code, _ = await asyncio.to_thread(_plain_send, gateway.port)
    assert code == 451
    assert upstream.received == []


async def test_verify_false_is_an_explicit_logged_opt_out(
    tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mssgate.relay")
    async with tls_upstream_stack(tls, ", verify: false") as (gateway, upstream):
        code, _ = await asyncio.to_thread(_plain_send, gateway.port)
    assert code == 250 and len(upstream.received) == 1
    assert any("NOT verified" in r.getMessage() for r in caplog.records)


async def test_client_certificate_presented_to_the_operator(tls: TlsFiles) -> None:
    route = f", ca_file: {tls.ca}, client_cert: {tls.client_cert}, client_key: {tls.client_key}"
    async with tls_upstream_stack(tls, route, require_client_cert=True) as (gateway, upstream):
        code, _ = await asyncio.to_thread(_plain_send, gateway.port)
    assert code == 250 and len(upstream.received) == 1
    async with tls_upstream_stack(tls, f", ca_file: {tls.ca}", require_client_cert=True) as (
        gateway,
        upstream,
    ):
        code, _ = await asyncio.to_thread(_plain_send, gateway.port)
    assert code == 451 and upstream.received == []


# -- privacy of the logs ----------------------------------------------------------------------


async def test_logs_hold_no_body_no_secret_no_ins(
    tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    patient = "279035121518989@patient.mssante.fr"
    bad_key = "288091234567823@patient.mssante.fr"
    async with secure_stack(tls) as stack:
        body = message(BAL, patient, body="SECRET-CLINICAL-TEXT HbA1c 9,1 %\n")
        ok = await session(stack, login="a.martin", mail_from=BAL, rcpts=[patient], body=body)
        refused = await session(stack, login="a.martin", mail_from=BAL, rcpts=[bad_key], body=body)
        wrong = await session(
            stack, login="a.martin", password="wrong-password-9", mail_from=BAL, rcpts=[], body=b""
        )
    assert ok.code == 250 and refused.code == 550 and wrong.code == 535
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SECRET-CLINICAL-TEXT" not in logged
    assert PASSWORDS["a.martin"] not in logged and "wrong-password-9" not in logged
    assert "279035121518989" not in logged and "288091234567823" not in logged
    assert "ins-" in logged  # the refused patient address, pseudonymised


def test_pseudonyms_are_stable_per_key_and_hide_the_ins() -> None:
    from mssgate.privacy import pseudonymise

    a = pseudonymise("279035121518989@patient.mssante.fr", b"k1")
    assert a == pseudonymise("279035121518989@PATIENT.mssante.fr", b"k1")
    assert a != pseudonymise("279035121518989@patient.mssante.fr", b"k2")
    assert "279035121518989" not in a and a.endswith("@patient.mssante.fr")
    assert "2790351215189" not in pseudonymise("2790351215189@patient.msante.fr", b"k1")
    assert pseudonymise("dr.martin@cabinet-gare.fr", b"k1") == "dr.martin@cabinet-gare.fr"


def test_policy_with_users_on_a_network_needs_tls(tmp_path: Path) -> None:
    from mssgate.config import ConfigError

    users = f"users:\n  - {{login: x, person: martin, password_hash: '{HASHES['sophie']}'}}\n"
    text = (
        "version: 1\nlisten: {host: 0.0.0.0}\nroutes:\n  mssante: {outbox: a}\n"
        f"  ordinary: {{outbox: b}}\n{users}{PEOPLE}"
    )
    with pytest.raises(ConfigError) as info:
        load_policy_text(text, "p.yaml")
    assert "TLS" in str(info.value)


async def test_connections_in_total_are_limited(tls: TlsFiles) -> None:
    async with secure_stack(tls, listen="  max_connections: 3") as stack:
        writers = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(LOOPBACK, stack.gateway.port)
            assert (await reader.readline()).startswith(b"220")
            writers.append(writer)
        reader, writer = await asyncio.open_connection(LOOPBACK, stack.gateway.port)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"421 4.7.0")
        writer.close()
        for w in writers:
            w.close()


async def test_big_message_sent_ahead_over_upstream_starttls(
    tls: TlsFiles, sent_ahead: list[int]
) -> None:
    """A big MSSanté message goes upstream while it comes in over the route's TLS session
    too, and arrives exactly as received."""
    from tests.test_send_ahead import big_message

    sender, rcpt = "a@medecin.mssante.fr", "b@medecin.mssante.fr"
    raw = big_message(sender, rcpt)

    def send_big(port: int) -> None:
        with smtplib.SMTP(LOOPBACK, port, timeout=20) as client:
            client.sendmail(sender, [rcpt], raw)

    tls_route = f", ca_file: {tls.ca}"
    async with tls_upstream_stack(tls, tls_route, secured="mssante") as (gateway, upstream):
        await asyncio.to_thread(send_big, gateway.port)
    assert upstream.tls_sessions == 1
    assert [r.data for r in upstream.received] == [raw]
    assert sum(sent_ahead) > len(raw) // 2


async def test_an_auth_dialogue_answer_is_never_taken_for_a_command(tls: TlsFiles) -> None:
    # A plain MAIL FROM line is answered as soon as it arrives (mssgate.commands), except
    # where the session waits for something else: here, AUTH LOGIN's user name.
    async with secure_stack(tls) as stack:
        reader, writer = await asyncio.open_connection(LOOPBACK, stack.gateway.port)
        await reader.readline()

        async def say(line: str) -> bytes:
            writer.write(line.encode() + b"\r\n")
            while (reply := await asyncio.wait_for(reader.readline(), 5))[3:4] == b"-":
                pass
            return reply

        await say("EHLO client.test")
        assert (await say("STARTTLS")).startswith(b"220")
        await writer.start_tls(stack.tls.client_context())
        await say("EHLO client.test")
        assert (await say(f"MAIL FROM:<{BAL}>")).startswith(b"530")  # (not authenticated)
        assert (await say("AUTH LOGIN")).startswith(b"334")
        answer = await say(f"MAIL FROM:<{BAL}>")  # as the user name: not base64
        assert answer[:1] in (b"5", b"4") and not answer.startswith(b"250")
        import base64

        token = base64.b64encode(b"\x00a.martin\x00" + PASSWORDS["a.martin"].encode())
        assert (await say("AUTH PLAIN " + token.decode())).startswith(b"235")
        assert (await say(f"MAIL FROM:<{BAL}>")).startswith(b"250")
        assert (await say(f"RCPT TO:<{CONFRERE}>")).startswith(b"250")
        writer.close()
    assert stack.delivered() == 0
