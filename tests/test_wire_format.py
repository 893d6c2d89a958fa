"""The byte-level helpers of the hot path: line endings before deciding, dots on the way out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.wire import dot_stuff, normalize_line_endings


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
