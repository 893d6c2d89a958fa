"""The byte-level helpers of the hot path: line endings before deciding, dots on the way out."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.wire import (
    DataReader,
    dot_stuff,
    dot_stuffed,
    is_crlf_only,
    normalize_line_endings,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb"),
        (b"", b""),
    ],
)
def test_normalize_line_endings(raw: bytes, expected: bytes) -> None:
    assert normalize_line_endings(raw) == expected


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".a\r\n..b\r\n.\r\n", b"..a\r\n...b\r\n..\r\n.\r\n"),
        (b"no final line end", b"no final line end\r\n.\r\n"),
        (b"", b"\r\n.\r\n"),
    ],
)
def test_dot_stuff(message: bytes, payload: bytes) -> None:
    assert dot_stuff(message) == payload


@given(
    st.lists(
        st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        min_size=1,
    )
)
def test_dot_stuffing_round_trips_like_a_receiver_unstuffs(lines: list[bytes]) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    payload = dot_stuff(message)
    assert payload.endswith(b"\r\n.\r\n")
    body = payload[: -len(b".\r\n")]
    received = [line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n")]
    assert b"\r\n".join(received) == message


class _NoHandler:
    """aiosmtpd needs a handler object to build a protocol."""


@given(st.text(alphabet=st.sampled_from(list("<>@.-+_ aAzZ09\"'\t=é[]:,")), max_size=40))
def test_address_fast_path_agrees_with_aiosmtpd(arg: str) -> None:
    """MAIL FROM / RCPT TO parsing: the plain form read directly gives what aiosmtpd's full
    parser gives (and anything else goes to that parser)."""
    from aiosmtpd.smtp import SMTP

    from mssgate.server import GatewaySMTP

    stock = SMTP(_NoHandler())
    fast = GatewaySMTP.__new__(GatewaySMTP)
    fast.local_part_limit = stock.local_part_limit
    try:
        expected = SMTP._getaddr(stock, arg)
    except Exception as exc:  # aiosmtpd's parser raises IndexError on "0@": so do we
        with pytest.raises(type(exc)):
            GatewaySMTP._getaddr(fast, arg)
        return
    assert GatewaySMTP._getaddr(fast, arg) == expected


# --- DataReader: the DATA transfer read chunk by chunk ----------------------------------------

_PIECES = [b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"\r\n..", b"x" * 40]


def _reference(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """What the reader must find, computed on the whole transfer at once: (message, bytes
    after the final dot, the message's wire form before unstuffing) or None (no end yet)."""
    stream = b"\r\n" + data
    end = stream.find(b"\r\n.\r\n")
    if end < 0:
        return None
    wire = stream[: end + 2]
    message = normalize_line_endings(wire.replace(b"\r\n.", b"\r\n")[2:])
    return message, stream[end + 5 :], wire[2:]


def _cut(pieces: list[bytes], cuts: list[int]) -> tuple[bytes, list[bytes]]:
    """The transfer, and the chunks the network delivers it in (cut at ``cuts``)."""
    data = b"".join(pieces)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


def _feed(reader: DataReader, chunks: list[bytes]) -> int:
    """Feed chunks until the reader is done; how many it took (-1: never done)."""
    for n, chunk in enumerate(chunks):
        if reader.feed(chunk):
            return n
    return -1


def _read_cut(
    reader: DataReader, pieces: list[bytes], cuts: list[int]
) -> tuple[int, list[bytes], tuple[bytes, bytes, bytes] | None]:
    """The transfer made of ``pieces``, cut at ``cuts``, fed to ``reader``: (chunks it took,
    the chunks, what a reading of the whole finds). With no end of data in the transfer, the
    reader must not have found one."""
    data, chunks = _cut(pieces, cuts)
    last = _feed(reader, chunks)
    expected = _reference(data)
    if expected is None:
        assert last == -1 and not reader.done
    return last, chunks, expected


@given(
    st.lists(st.sampled_from(_PIECES), max_size=40),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_data_reader_agrees_with_the_whole_transfer_read_at_once(
    pieces: list[bytes], cuts: list[int]
) -> None:
    """However the network cuts the transfer, the reader finds the same end of data, message
    and next command as a reading of the whole at once."""
    reader = DataReader()
    last, chunks, expected = _read_cut(reader, pieces, cuts)
    if expected is None:
        return
    message, after, wire = expected
    assert last >= 0
    assert reader.message() == message
    assert reader.leftover + b"".join(chunks[last + 1 :]) == after
    assert reader.received == len(wire)
    if reader.dot_free:
        assert b"\r\n." not in b"\r\n" + message
    if normalize_line_endings(wire) == wire:
        assert reader.crlf_only
        assert reader.dot_free == (b"\r\n." not in b"\r\n" + wire)
    else:
        assert not reader.crlf_only and not reader.dot_free


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"\n\r"]), max_size=30))
def test_is_crlf_only_agrees_with_a_regular_expression(pieces: list[bytes]) -> None:
    content = b"".join(pieces)
    assert is_crlf_only(content) == (re.search(rb"\r(?!\n)|(?<!\r)\n", content) is None)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 65536])
def test_data_reader_with_any_chunk_size(size: int) -> None:
    body = b"From: a@b.fr\r\n\r\nLigne 1.\r\n..cachee\r\n..\r\nfin.\r\n"
    data = body + b".\r\nQUIT\r\n"
    reader = DataReader()
    last = _feed(reader, [data[i : i + size] for i in range(0, len(data), size)])
    assert last >= 0
    assert reader.message() == b"From: a@b.fr\r\n\r\nLigne 1.\r\n.cachee\r\n.\r\nfin.\r\n"
    assert not reader.dot_free  # a line still starts with a dot once unstuffed


def test_data_reader_empty_message_and_pipelined_command() -> None:
    reader = DataReader()
    assert reader.feed(b".\r\nQUIT\r\n")
    assert reader.message() == b""
    assert reader.leftover == b"QUIT\r\n"


def test_data_reader_bare_line_endings_are_made_crlf() -> None:
    reader = DataReader()
    assert reader.feed(b"a\nb\rc\r\n.\r\n")
    assert not reader.crlf_only and not reader.dot_free
    assert reader.message() == b"a\r\nb\r\nc\r\n"


def test_data_reader_base64_attachment_has_no_dot_to_stuff() -> None:
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrL0FCQ0RFRkdISUpLTE1OT1BRUlNUVVZX\r\n"
    data = b"Subject: x\r\n\r\n" + line * 2000 + b".\r\n"
    reader = DataReader()
    _feed(reader, [data[i : i + 1000] for i in range(0, len(data), 1000)])
    assert reader.done and reader.dot_free and reader.crlf_only
    assert reader.message() == data[:-3]


def test_data_reader_size_limit_reads_on_to_the_end_keeping_nothing() -> None:
    reader = DataReader(size_limit=100)
    assert not reader.feed(b"x" * 60 + b"\r\n")
    assert not reader.feed(b"y" * 60 + b"\r\n")
    assert reader.refusal == "size"
    assert reader.feed(b"z\r\n.\r\nQUIT\r\n")
    assert reader.leftover == b"QUIT\r\n"
    with pytest.raises(ValueError, match="no message"):
        reader.message()


def test_data_reader_message_exactly_at_the_size_limit_is_taken() -> None:
    body = b"x" * 98 + b"\r\n"
    reader = DataReader(size_limit=100)
    assert not reader.feed(body + b".\r")  # the final CRLF "." CRLF cut in the middle
    assert reader.feed(b"\n")
    assert reader.refusal is None and reader.message() == body


def test_data_reader_refused_midway_keeps_reading_for_the_final_dot() -> None:
    reader = DataReader()
    reader.feed(b"a\r\n" * 10)
    reader.refuse("busy")
    assert not reader.feed(b"b\r\n" * 10)
    assert reader.feed(b".\r\n")
    assert reader.refusal == "busy"


def test_dot_stuffed_skips_the_scan_only_when_told_dot_free() -> None:
    assert dot_stuffed(b"a\r\nb\r\n", dot_free=True) == [b"a\r\nb\r\n", b".\r\n"]
    assert b"".join(dot_stuffed(b"a\r\n.b\r\n")) == b"a\r\n..b\r\n.\r\n"
