"""A small authoritative DNS server for the tests, on 127.0.0.1 only (UDP and TCP, one port).

Built with dnspython's ``dns.message``: each query is parsed, answered with
``dns.message.make_response`` and the zone's RRsets, and recorded in :attr:`DnsServer.queries`.

* a name absent from the zone: NXDOMAIN;
* a name present without the asked type: NOERROR with an empty answer (NoAnswer);
* ``servfail`` / ``refused`` names: SERVFAIL / REFUSED; ``silent`` names: never answered;
* a UDP answer over 512 octets (the client sent no EDNS) or over the client's EDNS payload is
  truncated (TC flag), so that the client retries over TCP.

Zone data should use documentation addresses (192.0.2.x, 2001:db8::x).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import struct
from collections.abc import Collection, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

HOST = "127.0.0.1"
TTL = 300


def _key(name: dns.name.Name | str) -> str:
    return str(name).lower().rstrip(".")


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._server._spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        wire = await self._server._respond(data, tcp=False)
        if wire is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


class DnsServer:
    """An authoritative DNS server on 127.0.0.1, started on a free port by ``async with``."""

    def __init__(
        self,
        zone: Mapping[str, Mapping[str, Sequence[str]]],
        *,
        servfail: Collection[str] = (),
        silent: Collection[str] = (),
        refused: Collection[str] = (),
        delay: float = 0.0,
    ) -> None:
        """``zone``: ``{"gmail.com": {"MX": ["5 gmail-smtp-in.l.google.com."]}, ...}``.

        ``delay``: seconds to wait before each answer (to make lookups overlap in tests).
        """
        self._rrsets: dict[str, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        for name, records in zone.items():
            owner = dns.name.from_text(name)
            by_type = self._rrsets.setdefault(_key(owner), {})
            for type_text, rdatas in records.items():
                rdtype = dns.rdatatype.from_text(type_text)
                rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype)
                for text in rdatas:
                    rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text), TTL)
                by_type[rdtype] = rrset
        self._servfail = {_key(n) for n in servfail}
        self._silent = {_key(n) for n in silent}
        self._refused = {_key(n) for n in refused}
        self._delay = delay
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        """(name, type) of every query received, e.g. ``("gmail.com", "MX")``."""
        self.tcp_queries = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def nameserver(self) -> str:
        """``"127.0.0.1:<port>"``, for ``DnsCheckConfig.nameservers``."""
        return f"{HOST}:{self.port}"

    async def __aenter__(self) -> DnsServer:
        """Bind UDP and TCP on one free port of 127.0.0.1."""
        loop = asyncio.get_running_loop()
        for _ in range(50):
            udp, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(HOST, 0)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._serve_tcp, HOST, port)
            except OSError as error:
                udp.close()
                if error.errno == errno.EADDRINUSE:
                    continue
                raise
            self._udp, self._tcp, self.port = udp, tcp, port
            return self
        raise RuntimeError("no free port for both UDP and TCP on 127.0.0.1")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop listening and drop the pending (silent or delayed) answers."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                wire = await self._respond(await reader.readexactly(length), tcp=True)
                if wire is None:  # silent: keep the connection open, answer nothing
                    await asyncio.Event().wait()
                    return
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _respond(self, data: bytes, *, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None  # not worth an answer
        if tcp:
            self.tcp_queries += 1
        if self._delay:
            await asyncio.sleep(self._delay)
        response = dns.message.make_response(query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = _key(question.name)
        self.queries.append((name, dns.rdatatype.to_text(question.rdtype)))
        if name in self._silent:
            return None
        if name in self._servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name in self._refused or question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
        elif name not in self._rrsets:
            response.flags |= dns.flags.AA
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.flags |= dns.flags.AA
            rrset = self._rrsets[name].get(question.rdtype)
            if rrset is not None:
                response.answer.append(rrset)
        if tcp:
            return response.to_wire()
        max_size = max(512, query.payload) if query.edns >= 0 else 512
        return response.to_wire(max_size=max_size, prefer_truncation=True)
