"""Helpers for the MIME tests: sample messages, the byte-identity checker, stdlib re-parsing."""

from __future__ import annotations

import email
import email.message
import email.policy
import html
import re

from mssgate.mime import ParsedMessage, Part, body_parts, parse_message, walk

PREFERRED = "dr.martin@medecin.mssante.fr"
SIG_TEXT = (
    "Pour les professionnels équipés d'une Messagerie Sécurisée MSSanté :\n"
    "dr.martin@medecin.mssante.fr"
)
SIG_HTML = (
    "<p>Pour les professionnels équipés d'une Messagerie Sécurisée MSSanté : "
    '<a href="mailto:dr.martin@medecin.mssante.fr">dr.martin@medecin.mssante.fr</a></p>'
)
MARKER_LINE = b"X-MSSGate-Signature: added"


def crlf(text: str, le: bytes = b"\r\n") -> bytes:
    """Encode a sample written with ``\\n`` as UTF-8 bytes with the line ending ``le``."""
    return text.encode("utf-8").replace(b"\n", le)


def le_bytes(sample: bytes, le: bytes) -> bytes:
    """Re-write a ``\\n`` bytes sample with the line ending ``le``."""
    return sample.replace(b"\n", le)


# --------------------------------------------------------------------------------------------
# Byte identity
# --------------------------------------------------------------------------------------------


def _header_fields(block: bytes) -> list[bytes]:
    """Split a header block into its fields (continuation lines joined), blank lines dropped."""
    fields: list[bytes] = []
    for line in re.findall(rb"[^\n]*\n|[^\n]+$", block):
        if line in (b"\r\n", b"\n"):
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def _contains(part: Part, ids: set[int]) -> bool:
    return any(id(p) in ids for p in walk(part))


def assert_byte_identity(
    orig: bytes,
    new: bytes,
    before: ParsedMessage | None = None,
    after: ParsedMessage | None = None,
    marker_line: bytes | None = MARKER_LINE,
) -> None:
    """Assert that only the body parts (and the one marker header line) changed.

    Every part outside ``body_parts(before)`` keeps its exact bytes (headers and body),
    containers keep their preamble, boundaries and epilogue, and the top-level header block is
    the same field for field, except the added marker line and, when the top-level entity is
    itself the rewritten text part, its own Content-Type / Content-Transfer-Encoding fields.
    """
    before = before if before is not None else parse_message(orig)
    after = after if after is not None else parse_message(new)
    body_ids = {id(p) for p in body_parts(before)}

    # top-level header block
    old_fields = _header_fields(orig[before.root.header_start : before.root.body_start])
    new_fields = _header_fields(new[after.root.header_start : after.root.body_start])
    if new != orig and marker_line is not None:
        markers = [f for f in new_fields if f.rstrip(b"\r\n") == marker_line]
        assert len(markers) == 1, "exactly one marker line must be added"
        assert new_fields[-1] == markers[0], "the marker goes at the end of the header block"
        new_fields = [f for f in new_fields if f.rstrip(b"\r\n") != marker_line]
    if id(before.root) in body_ids:
        mime = {b"content-type", b"content-transfer-encoding"}
        old_fields = [f for f in old_fields if _name(f) not in mime]
        new_fields = [f for f in new_fields if _name(f) not in mime]
    assert len(old_fields) == len(new_fields), "top-level header fields added or removed"
    for index, (old, now) in enumerate(zip(old_fields, new_fields, strict=True)):
        if index == len(old_fields) - 1 and not old.endswith(b"\n"):
            # a header block that ended the data: its last line gains a line ending
            assert now in (old + b"\r\n", old + b"\n"), "top-level header field changed"
        else:
            assert old == now, f"top-level header field changed: {old!r} -> {now!r}"

    def compare(a: Part, b: Part, is_root: bool) -> None:
        assert a.content_type == b.content_type, (a.content_type, b.content_type)
        if id(a) in body_ids:
            assert not b.children
            return
        if not _contains(a, body_ids):
            old = orig[a.header_start : a.body_end]
            now = new[b.header_start : b.body_end]
            assert old == now, f"{a.content_type} part at {a.header_start} changed"
            return
        if not is_root:
            assert orig[a.header_start : a.body_start] == new[b.header_start : b.body_start]
        assert len(a.children) == len(b.children), "the structure changed"
        # preamble, boundaries, epilogue: everything between the children
        old_cut = [a.body_start]
        new_cut = [b.body_start]
        for ca, cb in zip(a.children, b.children, strict=True):
            old_cut += [ca.header_start, ca.body_end]
            new_cut += [cb.header_start, cb.body_end]
        old_cut.append(a.body_end)
        new_cut.append(b.body_end)
        for i in range(0, len(old_cut), 2):
            gap_old = orig[old_cut[i] : old_cut[i + 1]]
            gap_new = new[new_cut[i] : new_cut[i + 1]]
            assert gap_old == gap_new, f"bytes between parts of {a.content_type} changed"
        for ca, cb in zip(a.children, b.children, strict=True):
            compare(ca, cb, False)

    compare(before.root, after.root, True)
    assert orig[before.root.body_end :] == new[after.root.body_end :]


# --------------------------------------------------------------------------------------------
# Stdlib re-parsing
# --------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def stdlib_parts(data: bytes) -> list[email.message.EmailMessage]:
    """The stdlib's parts of ``data`` in depth-first order (the order of ``mime.walk``)."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return [p for p in msg.walk() if isinstance(p, email.message.EmailMessage)]


def assert_stdlib_signed(
    new: bytes, sig_text: str = SIG_TEXT, sig_html: str = SIG_HTML
) -> list[email.message.EmailMessage]:
    """Re-parse with the stdlib and check every body part carries the signature.

    Returns the stdlib parts that were checked.
    """
    after = parse_message(new)
    mine = list(walk(after.root))
    theirs = stdlib_parts(new)
    assert len(mine) == len(theirs), "stdlib and mime.py disagree on the structure"
    checked = []
    for body in body_parts(after):
        index = next(i for i, p in enumerate(mine) if p is body)
        part = theirs[index]
        assert part.get_content_type() == body.content_type
        charset = part.get_content_charset() or "us-ascii"
        "x".encode(charset)  # a charset the stdlib knows
        content = part.get_content()
        assert isinstance(content, str)
        if body.content_type == "text/plain":
            assert _norm(content).rstrip().endswith(_norm(sig_text)), content[-300:]
        else:
            assert html.unescape(sig_html) in html.unescape(_norm(content))
        checked.append(part)
    return checked
