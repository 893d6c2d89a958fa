"""mssgate.mime on real-world messages (../shared/corpus): parse, sign, keep every other byte."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from mssgate.mime import (
    add_signature,
    body_parts,
    decoded_text,
    forward_origins,
    parse_message,
    walk,
)
from tests.mime_samples import (
    PREFERRED,
    SIG_HTML,
    SIG_TEXT,
    assert_byte_identity,
    assert_stdlib_signed,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
FILES = sorted(p.name for p in CORPUS.glob("*.eml")) if CORPUS.is_dir() else []
pytestmark = pytest.mark.skipif(
    not FILES, reason=f"corpus folder {CORPUS} is absent (expected beside the repository)"
)
DKIM_SIGNED = {name for name in FILES if name.startswith("dkim-")} | {"rfc-8463.eml"}


def _load(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@pytest.mark.parametrize("name", FILES)
def test_corpus_parse_and_sign(name: str) -> None:
    raw = _load(name)
    msg = parse_message(raw)
    for part in walk(msg.root):
        assert 0 <= part.header_start <= part.body_start <= part.body_end <= len(raw)
        decoded_text(msg, part)
    forward_origins(msg)
    result = add_signature(msg, SIG_TEXT, SIG_HTML, PREFERRED)
    assert not result.reason.startswith("error"), result.reason
    if not result.added:
        assert result.message == raw
        return
    after = parse_message(result.message)
    assert_byte_identity(raw, result.message, msg, after)
    assert_stdlib_signed(result.message)
    assert any(PREFERRED in decoded_text(after, p) for p in body_parts(after))
    again = add_signature(after, SIG_TEXT, SIG_HTML, PREFERRED)
    assert (again.added, again.reason) == (False, "already_signed")


@pytest.mark.parametrize("name", sorted(DKIM_SIGNED))
def test_corpus_dkim_signed_untouched_by_default(name: str) -> None:
    raw = _load(name)
    msg = parse_message(raw)
    assert msg.header("DKIM-Signature") is not None
    result = add_signature(msg, SIG_TEXT, SIG_HTML, PREFERRED)
    assert (result.added, result.reason) == (False, "dkim_signed")
    assert result.message == raw
    forced = add_signature(msg, SIG_TEXT, SIG_HTML, PREFERRED, skip_dkim_signed=False)
    if forced.added:
        assert_byte_identity(raw, forced.message)
        assert_stdlib_signed(forced.message)


def test_corpus_torture_test() -> None:
    raw = _load("torture-test.eml")
    msg = parse_message(raw)
    parts = list(walk(msg.root))
    stdlib = email.message_from_bytes(raw, policy=email.policy.default)
    assert len(parts) == len(list(stdlib.walk())) == 52
    assert msg.root.content_type == "multipart/mixed"
    assert sum(1 for p in parts if p.content_type == "message/rfc822") == 10
    assert [p.content_type for p in body_parts(msg)] == ["text/plain"]
    assert body_parts(msg)[0] is msg.root.children[0]
    origins = {o.address for o in forward_origins(msg) if o.kind == "attached_message"}
    assert "nsb@thumper.bellcore.com" in origins
    result = add_signature(msg, SIG_TEXT, SIG_HTML, PREFERRED)
    assert result.added
    after = parse_message(result.message)
    assert_byte_identity(raw, result.message, msg, after)
    assert_stdlib_signed(result.message)
    # only the explanation text part grew: the rest of the 1.8 MB is the same bytes
    first = msg.root.children[0]
    new_first = after.root.children[0]
    marked = raw[: first.header_start].replace(
        b'name="torture"\r\n\r\n', b'name="torture"\r\nX-MSSGate-Signature: added\r\n\r\n'
    )
    assert result.message[: new_first.header_start] == marked
    tail = raw[first.body_end :]
    assert result.message.endswith(tail)


def test_corpus_unknown_cte_left_alone() -> None:
    raw = _load("unknown-cte.eml")
    result = add_signature(parse_message(raw), SIG_TEXT, SIG_HTML, PREFERRED)
    assert (result.added, result.reason) == (False, "unsupported_encoding")


def test_corpus_multi_part_base64_keeps_nul_byte() -> None:
    raw = _load("multi-part-base64.eml")
    msg = parse_message(raw)
    _, second = msg.root.children
    assert decoded_text(msg, second) == "hell\x00 w\x00rld"
    result = add_signature(msg, SIG_TEXT, SIG_HTML, PREFERRED)
    assert result.added
    after = parse_message(result.message)
    assert decoded_text(after, after.root.children[1]).startswith("hell\x00 w\x00rld")


def test_corpus_rich_attachment_is_not_a_body() -> None:
    raw = _load("christmas-tree.eml")
    msg = parse_message(raw)
    assert msg.root.disposition == "attachment"
    assert body_parts(msg) == ()
    assert add_signature(msg, SIG_TEXT, SIG_HTML, PREFERRED).reason == "no_body_part"


@pytest.mark.parametrize("name", FILES)
def test_corpus_part_headers_read_from_the_cache_as_fresh(name: str) -> None:
    """A part's header block is read once per distinct block (the same few, message after
    message): a message parsed with every block already known, or with none, is the same tree,
    with the same header lookups."""
    from mssgate import mime

    raw = _load(name)
    mime._part_head.cache_clear()
    fresh = parse_message(raw)
    cached = parse_message(raw)
    mime._part_head.cache_clear()
    assert cached == fresh
    for a, b in zip(walk(cached.root), walk(fresh.root), strict=True):
        assert a.first_values == b.first_values
        assert a.header("content-type") == b.header("content-type")
