"""Pure MIME core: read the structure a rule needs, insert the signature byte-exactly.

The gateway relays health messages; every byte it does not deliberately rewrite must go out
unchanged. So this module never re-serialises a message with :mod:`email.generator`: it parses
the raw bytes into a tree of :class:`Part` objects carrying byte offsets, and rewrites by
splicing new bytes into the original ones.

Everything here is a pure function on plain data (no I/O, no logging). Parsing never raises,
whatever the input.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import html
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import NamedTuple, TypeVar, overload

import stringzilla as sz

__all__ = [
    "ForwardOrigin",
    "Params",
    "ParsedMessage",
    "Part",
    "SignatureResult",
    "add_signature",
    "body_is_empty",
    "body_parts",
    "decoded_text",
    "forward_origins",
    "has_mssante_markers",
    "header_addresses",
    "is_signed_or_encrypted",
    "parse_message",
    "walk",
]

_T = TypeVar("_T")

_MAX_DEPTH_CAP = 100
"""Hard cap on nesting, whatever the caller asks: keeps recursion far from Python's limit."""

# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


class Params(Mapping[str, str]):
    """An immutable, hashable mapping of Content-Type / Content-Disposition parameters."""

    __slots__ = ("_dict", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        """Build from ``(key, value)`` pairs; the first occurrence of a key wins."""
        d: dict[str, str] = {}
        for key, value in items:
            d.setdefault(key, value)
        self._dict = d
        self._items = tuple(d.items())

    def __getitem__(self, key: str) -> str:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __contains__(self, key: object) -> bool:
        return key in self._dict

    @overload
    def get(self, key: str, /) -> str | None: ...

    @overload
    def get(self, key: str, /, default: str | _T) -> str | _T: ...

    def get(self, key: str, /, default: object = None) -> object:
        """The value of ``key``, or ``default`` (Mapping's own runs interpreted when compiled)."""
        return self._dict.get(key, default)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Params):
            return self._items == other._items
        if isinstance(other, Mapping):
            return dict(self._dict) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Params({self._dict!r})"


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME entity of a message, with byte offsets into the raw message."""

    content_type: str
    """Lower-case ``type/subtype``."""
    params: Mapping[str, str]
    """Content-Type parameters, lower-case keys, RFC 2231 decoded."""
    disposition: str | None
    """``attachment``, ``inline`` (lower-case) or None."""
    filename: str | None
    """From Content-Disposition ``filename`` or Content-Type ``name`` (RFC 2231/2047 decoded)."""
    transfer_encoding: str
    """Lower-case Content-Transfer-Encoding, ``7bit`` by default."""
    header_start: int
    body_start: int
    body_end: int
    children: tuple[Part, ...]
    """Sub-parts of a multipart; for ``message/rfc822`` the attached message's top part."""
    headers: tuple[tuple[str, str], ...]
    """Header fields: name as written, value unfolded and RFC 2047 decoded."""
    first_values: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """The first value of each field by lower-case name (built from ``headers``)."""
    fields_start: int = field(default=-1, compare=False, repr=False)
    """Where the header fields start (after a top-level mbox ``From `` line); -1: unknown."""
    fields_end: int = field(default=-1, compare=False, repr=False)
    """Where the last header line ends (a field added goes there); -1: unknown."""

    def __init__(
        self,
        content_type: str,
        params: Mapping[str, str],
        disposition: str | None,
        filename: str | None,
        transfer_encoding: str,
        header_start: int,
        body_start: int,
        body_end: int,
        children: tuple[Part, ...],
        headers: tuple[tuple[str, str], ...],
        first_values: Mapping[str, str] | None = None,
        fields_start: int = -1,
        fields_end: int = -1,
    ) -> None:
        # (Written out: the one dataclasses generates runs interpreted in the compiled build,
        # ten times slower; tests/test_records.py keeps it the same.)
        object.__setattr__(self, "content_type", content_type)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "disposition", disposition)
        object.__setattr__(self, "filename", filename)
        object.__setattr__(self, "transfer_encoding", transfer_encoding)
        object.__setattr__(self, "header_start", header_start)
        object.__setattr__(self, "body_start", body_start)
        object.__setattr__(self, "body_end", body_end)
        object.__setattr__(self, "children", children)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "first_values", {} if first_values is None else first_values)
        object.__setattr__(self, "fields_start", fields_start)
        object.__setattr__(self, "fields_end", fields_end)

    def header(self, name: str) -> str | None:
        """First value of this part's header ``name`` (case-insensitive), or None."""
        if self.first_values or not self.headers:
            return self.first_values.get(name.lower())
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """A message's raw bytes and the tree of its parts."""

    raw: bytes
    root: Part
    line_ending: bytes
    """``b"\\r\\n"`` or ``b"\\n"``, detected from the header block."""
    defects: tuple[str, ...]
    raw_headers: tuple[tuple[str, str], ...] = ()
    """Top-level fields as (lower-case name, unfolded value *not* RFC 2047-decoded): what
    address parsing needs, read once."""
    texts: dict[tuple[int, int, bool], str] = field(default_factory=dict, compare=False, repr=False)
    """Decoded body texts already computed, by (body start, body end, as plain text): the
    rules and the signature read the same parts."""

    def __init__(
        self,
        raw: bytes,
        root: Part,
        line_ending: bytes,
        defects: tuple[str, ...],
        raw_headers: tuple[tuple[str, str], ...] = (),
        texts: dict[tuple[int, int, bool], str] | None = None,
    ) -> None:
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "line_ending", line_ending)
        object.__setattr__(self, "defects", defects)
        object.__setattr__(self, "raw_headers", raw_headers)
        object.__setattr__(self, "texts", {} if texts is None else texts)

    def header(self, name: str) -> str | None:
        """First top-level value of header ``name`` (case-insensitive), or None."""
        return self.root.header(name)

    def header_all(self, name: str) -> tuple[str, ...]:
        """Every top-level value of header ``name`` (case-insensitive), in order."""
        lname = name.lower()
        return tuple(v for k, v in self.root.headers if k.lower() == lname)


@dataclass(frozen=True, slots=True)
class ForwardOrigin:
    """Where forwarded or quoted content came from."""

    kind: str
    """``resent`` | ``attached_message`` | ``inline_forward`` | ``quoted_reply``."""
    address: str
    """addr-spec of the origin."""

    def __init__(self, kind: str, address: str) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "address", address)


@dataclass(frozen=True, slots=True)
class SignatureResult:
    """The outcome of :func:`add_signature`."""

    message: bytes
    added: bool
    reason: str
    dot_safe: bool = True
    """True when every line of ``message`` that starts with a dot was already such a line of
    the original (what lets the relay skip the dot-stuffing scan)."""

    def __init__(self, message: bytes, added: bool, reason: str, dot_safe: bool = True) -> None:
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "added", added)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "dot_safe", dot_safe)


# --------------------------------------------------------------------------------------------
# Header blocks
# --------------------------------------------------------------------------------------------

# A header field line (name then colon) or a continuation line, each up to and including \n
# (or the end of the scanned range).
_HEADER_BLOCK_RE = re.compile(rb"(?:(?:[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t])[^\n]*(?:\n|\Z))*")
_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:([^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*)")
_UNFOLD_RE = re.compile(r"\r?\n(?=[ \t])")


@dataclass(frozen=True, slots=True)
class _HeaderScan:
    fields_start: int
    """Start of the first field (after a leading mbox ``From `` line)."""
    fields_end: int
    """End of the last header line (where a new field line is inserted)."""
    body_start: int
    had_blank: bool

    def __init__(
        self, fields_start: int, fields_end: int, body_start: int, had_blank: bool
    ) -> None:
        object.__setattr__(self, "fields_start", fields_start)
        object.__setattr__(self, "fields_end", fields_end)
        object.__setattr__(self, "body_start", body_start)
        object.__setattr__(self, "had_blank", had_blank)


class _RawField(NamedTuple):
    name: str
    value: bytes
    start: int
    end: int


def _scan_header(raw: bytes, start: int, end: int, allow_unix_from: bool = False) -> _HeaderScan:
    pos = start
    if (
        allow_unix_from
        and raw.startswith(b"From ", start)
        and not re.match(rb"From[ \t]*:", raw[start : start + 64])
    ):
        nl = raw.find(b"\n", start, end)
        pos = end if nl < 0 else nl + 1
    m = _HEADER_BLOCK_RE.match(raw, pos, end)
    fields_end = m.end() if m else pos
    if raw.startswith(b"\r\n", fields_end) and fields_end + 2 <= end:
        return _HeaderScan(pos, fields_end, fields_end + 2, True)
    if raw.startswith(b"\n", fields_end) and fields_end + 1 <= end:
        return _HeaderScan(pos, fields_end, fields_end + 1, True)
    return _HeaderScan(pos, fields_end, fields_end, False)


def _raw_fields(raw: bytes, start: int, end: int) -> list[_RawField]:
    """The header fields in ``raw[start:end]``, which holds only field and continuation lines."""
    out: list[_RawField] = []
    pos = start
    for found in _FIELD_RE.finditer(raw, start, end):
        if found.start() != pos:
            break  # (a stray continuation line: read from there one line at a time)
        # (A field name is printable ASCII.)
        out.append(_RawField(found.group(1).decode("ascii"), found.group(2), pos, found.end()))
        pos = found.end()
    while pos < end:
        m = _FIELD_RE.match(raw, pos, end)
        if m is None:  # a stray continuation line before the first field
            nl = raw.find(b"\n", pos, end)
            pos = end if nl < 0 else nl + 1
            continue
        out.append(_RawField(_bytes_to_str(m.group(1)), m.group(2), m.start(), m.end()))
        pos = m.end()
    return out


def _fields(raw: bytes, scan: _HeaderScan) -> list[_RawField]:
    return _raw_fields(raw, scan.fields_start, scan.fields_end)


def _bytes_to_str(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _unfold(value: bytes) -> str:
    return _unfold_text(_bytes_to_str(value))


def _unfold_text(text: str) -> str:
    if text.count("\n") > 1 or not text.endswith("\n"):
        text = _UNFOLD_RE.sub("", text)  # folded (or unusual): the full treatment
    return text.strip()


_FIELD_TEXT_RE = re.compile(_FIELD_RE.pattern.decode("ascii"))
""":data:`_FIELD_RE` on the decoded header block (UTF-8 never puts an ASCII byte inside a
character: the fields are where they are in the bytes)."""


def _unfolded_fields(raw: bytes, start: int, end: int) -> list[tuple[str, str]]:
    """(name, unfolded value) of each header field in ``raw[start:end]``: the block decoded
    at once when it is UTF-8 and made only of fields (nearly always), else field by field."""
    try:
        text: str | None = raw[start:end].decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        pairs: list[tuple[str, str]] = []
        pos = 0
        for found in _FIELD_TEXT_RE.finditer(text):
            if found.start() != pos:
                break
            pairs.append((found.group(1), _unfold_text(found.group(2))))
            pos = found.end()
        if pos == len(text):
            return pairs
    return [(f.name, _unfold(f.value)) for f in _raw_fields(raw, start, end)]


_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_BETWEEN_WORDS_RE = re.compile(r"[ \t\r\n]*")


def _decode_word(charset: str, encoding: str, text: str) -> str | None:
    codec = _text_codec(charset.partition("*")[0])  # RFC 2231 language suffix
    if codec is None:
        return None
    if encoding in "Bb":
        data = _b64decode(text.encode("ascii", "replace"))
    else:
        data = binascii.a2b_qp(text.replace("_", " ").encode("ascii", "replace"))
    try:
        return data.decode(codec, "replace")
    except Exception:
        return None


def _decode_2047(value: str) -> str:
    """Decode RFC 2047 encoded words; whitespace between two adjacent words is dropped."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pos = 0
    previous_end = -1
    for m in _ENCODED_WORD_RE.finditer(value):
        decoded = _decode_word(m.group(1), m.group(2), m.group(3))
        if decoded is None:
            continue
        gap = value[pos : m.start()]
        if not (previous_end == pos and _BETWEEN_WORDS_RE.fullmatch(gap)):
            out.append(gap)
        out.append(decoded)
        pos = previous_end = m.end()
    out.append(value[pos:])
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Parameters (RFC 2045 / RFC 2231)
# --------------------------------------------------------------------------------------------


_PARAM_PIECE = re.compile(r'(?:[^;"]++|"(?:[^"\\]|\\[\s\S]?)*+(?:"|\Z))*+')
"""One parameter: anything but ``;`` outside quoted strings (escapes only inside quotes; an
unclosed quote runs to the end). Possessive: one pass, no backtracking."""


def _split_params(value: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    if '"' not in value:
        return value.split(";")
    out: list[str] = []
    pos = 0
    while True:
        m = _PARAM_PIECE.match(value, pos)
        assert m is not None  # the pattern matches the empty string
        out.append(m.group(0))
        pos = m.end() + 1  # past the ";" that stopped it
        if pos > len(value):
            return out


_QUOTED_PAIR = re.compile(r"\\(.)")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner
    if value.startswith('"'):
        return value[1:]
    return value


def _pct_decode(value: str) -> bytes:
    data = value.encode("utf-8", "surrogateescape")
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes((int(m.group(1), 16),)), data)


def _parse_structured(value: str) -> tuple[str, Params]:
    """Split a Content-Type / Content-Disposition value into its main token and params."""
    pieces = _split_params(value)
    main = pieces[0].strip().lower()
    simple: list[tuple[str, str]] = []
    extended: dict[str, list[tuple[int, bool, str]]] = {}
    for piece in pieces[1:]:
        if "=" not in piece:
            continue
        key, _, val = piece.partition("=")
        key = key.strip().lower()
        if not key:
            continue
        m = re.fullmatch(r"([^*]+)\*(?:(\d+)(\*)?|)", key) if "*" in key else None
        if m is None:
            simple.append((key, _unquote(val)))
            continue
        base = m.group(1)
        if m.group(2) is None:
            extended.setdefault(base, []).append((0, True, val.strip()))
        else:
            extended.setdefault(base, []).append(
                (int(m.group(2)) if len(m.group(2)) < 6 else 99999, m.group(3) is not None, val)
            )
    items: list[tuple[str, str]] = []
    for base, segs in extended.items():
        segs.sort(key=lambda s: s[0])
        charset = ""
        chunks: list[bytes] = []
        for index, (_, encoded, val) in enumerate(segs):
            raw_val = _unquote(val)
            if encoded:
                if index == 0 and raw_val.count("'") >= 2:
                    charset, _, rest = raw_val.partition("'")
                    _, _, raw_val = rest.partition("'")
                chunks.append(_pct_decode(raw_val))
            else:
                chunks.append(raw_val.encode("utf-8", "surrogateescape"))
        codec = _text_codec(charset) or "utf-8"
        try:
            items.append((base, b"".join(chunks).decode(codec, "replace")))
        except Exception:
            items.append((base, b"".join(chunks).decode("utf-8", "replace")))
    items.extend(simple)  # RFC 2231 forms take precedence over the plain ones
    return main, Params(items)


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------

_MULTIPART_OPAQUE_CTES = frozenset({"7bit", "8bit", "binary"})


def _detect_line_ending(raw: bytes) -> bytes:
    nl = raw.find(b"\n")
    if nl < 0:
        return b"\r\n"
    return b"\r\n" if nl > 0 and raw[nl - 1 : nl] == b"\r" else b"\n"


_MEDIA_TYPE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+/[!#$%&'*+\-.^_`|~0-9a-z]+")
_TOKEN_END = re.compile(r"[\s(;]")


class _Head(NamedTuple):
    """What a part's header block says (everything of a :class:`Part` but its offsets)."""

    content_type: str
    params: Params
    disposition: str | None
    filename: str | None
    transfer_encoding: str
    headers: tuple[tuple[str, str], ...]
    first_values: dict[str, str]
    unfolded: list[tuple[str, str]]
    defects: tuple[str, ...]


def _read_head(raw: bytes, start: int, end: int, default_type: str) -> _Head:
    """Read the header fields in ``raw[start:end]``."""
    defects: list[str] = []
    unfolded = _unfolded_fields(raw, start, end)
    headers = tuple((name, _decode_2047(value)) for name, value in unfolded)
    first: dict[str, str] = {}  # (undecoded values)
    first_decoded: dict[str, str] = {}
    for (name, value), (_, decoded) in zip(unfolded, headers, strict=True):
        lname = name.lower()
        if lname not in first:
            first[lname] = value
            first_decoded[lname] = decoded

    ct_value = first.get("content-type")
    content_type = default_type
    params = Params()
    if ct_value is not None:
        main, params = _parse_structured(ct_value)
        if _MEDIA_TYPE.fullmatch(main):
            content_type = main
        else:
            defects.append("invalid content-type")
            content_type = "text/plain"
            params = Params((k, v) for k, v in params.items() if k == "charset")

    cte_value = first.get("content-transfer-encoding")
    transfer_encoding = "7bit"
    if cte_value:
        token = _TOKEN_END.split(cte_value.strip(), maxsplit=1)[0].lower()
        transfer_encoding = token or "7bit"

    disposition: str | None = None
    filename: str | None = None
    cd_value = first.get("content-disposition")
    if cd_value is not None:
        disp, dparams = _parse_structured(cd_value)
        disposition = disp or None
        if dparams.get("filename"):
            filename = _decode_2047(dparams["filename"])
    if filename is None and params.get("name"):
        filename = _decode_2047(params["name"])
    return _Head(
        content_type,
        params,
        disposition,
        filename,
        transfer_encoding,
        headers,
        first_decoded,
        unfolded,
        tuple(defects),
    )


_HEAD_CACHE_MAX = 2048
"""Part header blocks up to this size are read once per distinct block: a mail client writes
the same few (``text/html; charset=utf-8``, its attachment headers) message after message."""


@functools.lru_cache(maxsize=512)
def _part_head(block: bytes, default_type: str) -> _Head:
    return _read_head(block, 0, len(block), default_type)


def _parse_entity(
    raw: bytes,
    start: int,
    end: int,
    depth: int,
    max_depth: int,
    default_type: str,
    defects: list[str],
    unfolded_out: list[tuple[str, str]] | None = None,
) -> Part:
    scan = _scan_header(raw, start, end, allow_unix_from=(start == 0))
    if not scan.had_blank and (scan.fields_end < end or scan.fields_end > start):
        defects.append("header block without blank line")
    if unfolded_out is None and scan.fields_end - scan.fields_start <= _HEAD_CACHE_MAX:
        head = _part_head(raw[scan.fields_start : scan.fields_end], default_type)
    else:
        # (The top level's fields are the message's own: read each time, kept for callers.)
        head = _read_head(raw, scan.fields_start, scan.fields_end, default_type)
        if unfolded_out is not None:
            unfolded_out.extend(head.unfolded)
    defects.extend(head.defects)
    content_type, params, transfer_encoding = head.content_type, head.params, head.transfer_encoding

    body_start = scan.body_start
    body_end = end
    children: tuple[Part, ...] = ()
    maintype = content_type.partition("/")[0]
    is_message = content_type in ("message/rfc822", "message/global")
    if maintype == "multipart" or is_message:
        if transfer_encoding not in _MULTIPART_OPAQUE_CTES:
            defects.append("encoded container kept opaque")
        elif depth >= max_depth:
            defects.append("depth limit")
        elif is_message:
            children = (
                _parse_entity(
                    raw, body_start, body_end, depth + 1, max_depth, "text/plain", defects
                ),
            )
        else:
            boundary = params.get("boundary", "")
            if not boundary:
                defects.append("multipart without boundary")
            else:
                child_default = (
                    "message/rfc822" if content_type == "multipart/digest" else "text/plain"
                )
                children = _parse_multipart(
                    raw,
                    body_start,
                    body_end,
                    boundary,
                    depth,
                    max_depth,
                    child_default,
                    defects,
                )
    return Part(
        content_type=content_type,
        params=params,
        disposition=head.disposition,
        filename=head.filename,
        transfer_encoding=transfer_encoding,
        header_start=start,
        body_start=body_start,
        body_end=body_end,
        children=children,
        headers=head.headers,
        first_values=head.first_values,
        fields_start=scan.fields_start,
        fields_end=scan.fields_end,
    )


_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*\r?(?=\n|\Z)")


def _parse_multipart(
    raw: bytes,
    start: int,
    end: int,
    boundary: str,
    depth: int,
    max_depth: int,
    child_default: str,
    defects: list[str],
) -> tuple[Part, ...]:
    try:
        bnd = boundary.encode("utf-8")
    except UnicodeEncodeError:
        bnd = boundary.encode("latin-1", "replace")
    needle = b"--" + bnd
    children: list[Part] = []
    part_start: int | None = None
    closed = False
    # Candidates found with bytes.find (fast on megabytes of base64), then checked to be a
    # whole delimiter line: at a line start, then only "--", blanks and a line end.
    pos = start
    while True:
        at = sz.find(raw, needle, pos, end)
        if at < 0:
            break
        pos = at + 1
        if at > 0 and raw[at - 1 : at] != b"\n":
            continue
        m = _DELIMITER_TAIL.match(raw, at + len(needle), end)
        if m is None:
            continue
        if part_start is not None:
            part_end = at
            if part_end > part_start and raw[part_end - 1 : part_end] == b"\n":
                part_end -= 1
                if part_end > part_start and raw[part_end - 1 : part_end] == b"\r":
                    part_end -= 1
            children.append(
                _parse_entity(
                    raw, part_start, part_end, depth + 1, max_depth, child_default, defects
                )
            )
        # the delimiter line ends at m.end(); skip its line break
        line_end = m.end()
        if raw.startswith(b"\n", line_end):
            line_end += 1
        line_end = min(line_end, end)
        if m.group(1) is not None:
            closed = True
            part_start = None
            break
        part_start = line_end
    if part_start is not None:
        children.append(
            _parse_entity(raw, part_start, end, depth + 1, max_depth, child_default, defects)
        )
    if not closed:
        defects.append("missing final boundary")
    return tuple(children)


def parse_message(raw: bytes, max_depth: int = 32) -> ParsedMessage:
    """Parse raw message bytes into a tree of parts with byte offsets. Never raises."""
    raw = bytes(raw)
    max_depth = max(0, min(int(max_depth), _MAX_DEPTH_CAP))
    defects: list[str] = []
    top: list[tuple[str, str]] = []
    try:
        root = _parse_entity(
            raw, 0, len(raw), 0, max_depth, "text/plain", defects, unfolded_out=top
        )
    except Exception as exc:  # defensive: the parser must never raise
        defects.append(f"parser error: {type(exc).__name__}")
        root = Part("text/plain", Params(), None, None, "7bit", 0, 0, len(raw), (), ())
    raw_headers = tuple((name.lower(), value) for name, value in top)
    return ParsedMessage(
        raw=raw,
        root=root,
        line_ending=_detect_line_ending(raw),
        defects=tuple(dict.fromkeys(defects)),
        raw_headers=raw_headers,
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def walk(part: Part) -> Iterator[Part]:
    """Yield ``part`` and all its descendants depth-first, including attached messages."""
    stack = [part]
    while stack:
        p = stack.pop()
        yield p
        stack.extend(reversed(p.children))


def header_addresses(msg: ParsedMessage, names: Sequence[str] = ("to", "cc")) -> tuple[str, ...]:
    """addr-spec of every address in the named top-level headers, in order, no empties."""
    wanted = {n.lower() for n in names}
    # Parse the undecoded values: an RFC 2047 display name may hide a comma or a bracket.
    return tuple(_safe_addrs([v for k, v in msg.raw_headers if k in wanted]))


_B64_JUNK = bytes(
    set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
)


def _b64decode(data: bytes) -> bytes:
    clean = data.translate(None, _B64_JUNK)
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    clean += b"=" * (-len(clean) % 4)
    try:
        return base64.b64decode(clean)
    except (binascii.Error, ValueError):
        return b""


def _decode_cte(body: bytes, cte: str) -> bytes | None:
    """Body bytes with the transfer encoding removed; None for an unknown encoding."""
    if cte in ("7bit", "8bit", "binary"):
        return body
    if cte == "base64":
        return _b64decode(body)
    if cte == "quoted-printable":
        try:
            return binascii.a2b_qp(body)
        except (binascii.Error, ValueError):
            return body
    return None


def _text_codec(charset: str | None) -> str | None:
    """Python codec name for a MIME charset, or None if unknown or not a text encoding."""
    if not charset:
        return None
    name = charset.strip().strip('"').lower()
    if not name or len(name) > 64:
        return None
    return _codec_named(name)


@functools.lru_cache(maxsize=256)
def _codec_named(name: str) -> str | None:
    """:func:`_text_codec` of a charset name already stripped and lowered (at most 64
    characters): a message names the same few charsets again and again."""
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def _part_codec(part: Part) -> str | None:
    charset = part.params.get("charset")
    if charset is None or not charset.strip():
        return "ascii"
    return _text_codec(charset)


def decoded_text(msg: ParsedMessage, part: Part) -> str:
    """The part's body as text: transfer encoding then charset removed. Never raises."""
    key = (part.body_start, part.body_end, False)
    text = msg.texts.get(key)
    if text is None:
        text = msg.texts[key] = _decoded_text(msg, part)
    return text


def _decoded_text(msg: ParsedMessage, part: Part) -> str:
    body = msg.raw[part.body_start : part.body_end]
    data = _decode_cte(body, part.transfer_encoding)
    if data is None:
        data = body
    codec = _part_codec(part) or "utf-8"
    if codec == "ascii":
        # undeclared 8-bit text is nearly always UTF-8 or Latin-1
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            codec = "utf-8"
    try:
        return data.decode(codec, "replace")
    except Exception:
        return data.decode("utf-8", "replace")


_SIGNED_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
        "application/pgp-encrypted",
        "application/pkcs7-signature",
        "application/x-pkcs7-signature",
    }
)


def is_signed_or_encrypted(msg: ParsedMessage) -> bool:
    """True when any part, anywhere, is S/MIME or PGP signed or encrypted content."""
    return any(p.content_type in _SIGNED_TYPES for p in walk(msg.root))


_BODY_TEXT_TYPES = frozenset({"text/plain", "text/html"})


def _is_attachment(part: Part) -> bool:
    if part.disposition == "attachment":
        return True
    return part.content_type.startswith("text/") and part.filename is not None


def _related_root(part: Part) -> Part | None:
    if not part.children:
        return None
    start = part.params.get("start", "").strip().strip("<>").strip()
    if start:
        for child in part.children:
            cid = (child.header("content-id") or "").strip().strip("<>").strip()
            if cid == start:
                return child
    return part.children[0]


def _collect_body(part: Part, out: list[Part]) -> None:
    if _is_attachment(part):
        return
    ct = part.content_type
    if ct in _BODY_TEXT_TYPES:
        out.append(part)
    elif ct == "multipart/alternative":
        for child in part.children:
            _collect_body(child, out)
    elif ct == "multipart/related":
        root = _related_root(part)
        if root is not None:
            _collect_body(root, out)
    elif (
        ct.startswith("multipart/")
        and ct not in _SIGNED_TYPES
        and ct != "multipart/digest"
        and part.children
    ):
        _collect_body(part.children[0], out)


def body_parts(msg: ParsedMessage) -> tuple[Part, ...]:
    """The parts that make the human-readable body (where a signature goes)."""
    out: list[Part] = []
    _collect_body(msg.root, out)
    return tuple(out)


_BLOCK_TAGS = "br|p|div|tr|li|h[1-6]|table|hr|blockquote|pre|ul|ol|dt|dd|section|article|header"
# Linear on hostile input: nothing that could rescan to the end for each opening tag.
_HTML_SKIP = re.compile(r"<(style|script|title)\b[^<>]*>[^<]*</\1\s*>", re.IGNORECASE)
_HTML_BLOCK = re.compile(rf"</?(?:{_BLOCK_TAGS})\b[^<>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")


def _strip_comments(markup: str) -> str:
    """HTML without its comments (an unclosed one runs to the end), in one pass."""
    out: list[str] = []
    pos = 0
    while True:
        start = markup.find("<!--", pos)
        if start < 0:
            out.append(markup[pos:])
            break
        out.append(markup[pos:start])
        end = markup.find("-->", start + 4)
        if end < 0:
            break
        pos = end + 3
    return "".join(out)


def _html_to_text(markup: str) -> str:
    """The text a reader sees, one line per block: enough to find forwarded header blocks.

    Regular expressions rather than an HTML parser: a doctor's 20 KB HTML message must not
    cost milliseconds, and the rules only look for lines such as "De : ... <address>".
    """
    text = _HTML_SKIP.sub(" ", _strip_comments(markup))
    text = _HTML_BLOCK.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    return html.unescape(text)


def _part_text(msg: ParsedMessage, part: Part) -> str:
    text = decoded_text(msg, part)
    if part.content_type == "text/html":
        key = (part.body_start, part.body_end, True)
        plain = msg.texts.get(key)
        if plain is None:
            plain = msg.texts[key] = _html_to_text(text)
        return plain
    return text


# --------------------------------------------------------------------------------------------
# Forward origins
# --------------------------------------------------------------------------------------------

_ADDR_RE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_QUOTE_PREFIX_RE = re.compile(r"^(?:[ \t]*>)+[ \t]?")
_FWD_MARKER_RE = re.compile(
    r"^\s*(?:-{2,}\s*(?:message transf[ée]r[ée]|forwarded message|original message"
    r"|message d'origine|message original|mensaje original|ursprüngliche nachricht"
    r"|weitergeleitete nachricht)\s*-{2,}"
    r"|d[ée]but du message r[ée]exp[ée]di[ée]\s*:|begin forwarded message\s*:)",
    re.IGNORECASE,
)
_FROM_LINE_RE = re.compile(r"^\s*\**(?:de|from|von|exp[ée]diteur)\s*\**\s*:\s*(.*)$", re.I)
_SENT_LINE_RE = re.compile(r"^\s*\**(?:envoy[ée]|sent|date|gesendet)\s*\**\s*:", re.I)
_TO_LINE_RE = re.compile(r"^\s*\**(?:[àa]|to|objet|subject|pour|an|betreff)\s*\**\s*:", re.I)
_ATTRIB_START_RE = re.compile(r"^\s*(?:le|on)\s", re.I)
_ATTRIB_END_RE = re.compile(r"(?:a\s+[ée]crit|wrote)\s*:?\s*$", re.I)


_AT_REFERENCE = re.compile(r"&#0*64|&#[xX]0*40|&commat")


def _may_hold_at(markup: str) -> bool:
    """An "@" is in this HTML, as itself or as a character reference."""
    if "@" in markup:
        return True
    return "&" in markup and _AT_REFERENCE.search(markup) is not None


def _addresses_in(text: str) -> list[str]:
    return [m.group(0).strip(".") for m in _ADDR_RE.finditer(text)]


def _inline_origins(text: str) -> list[ForwardOrigin]:
    # Every origin is an address on some line: no "@", nothing to find (most messages).
    if "@" not in text:
        return []
    lines = [_QUOTE_PREFIX_RE.sub("", ln).strip() for ln in text.splitlines()]
    out: list[ForwardOrigin] = []
    n = len(lines)
    # Only lines holding an address (or just before one: a two-line attribution) can yield an
    # origin; forward markers are looked for above such a From line.
    near = sorted({j for i, ln in enumerate(lines) if "@" in ln for j in (i - 1, i) if j >= 0})
    for i in near:
        line = lines[i]
        fm = _FROM_LINE_RE.match(line)
        if fm:
            if _after_forward_marker(lines, i):
                out.extend(ForwardOrigin("inline_forward", a) for a in _addresses_in(fm[1]))
            window = lines[i + 1 : i + 5]
            if any(_SENT_LINE_RE.match(ln) for ln in window) and any(
                _TO_LINE_RE.match(ln) for ln in window
            ):
                out.extend(ForwardOrigin("inline_forward", a) for a in _addresses_in(fm[1]))
        if _ATTRIB_START_RE.match(line):
            candidate = line
            if not _ATTRIB_END_RE.search(candidate) and i + 1 < n:
                candidate = f"{line} {lines[i + 1]}"
            if _ATTRIB_END_RE.search(candidate):
                out.extend(ForwardOrigin("quoted_reply", a) for a in _addresses_in(candidate))
    return out


def _after_forward_marker(lines: list[str], at: int) -> bool:
    """True when the From line at ``at`` is the first one of a forwarded block: a marker line
    ("-------- Message transféré --------"...) stands at most six non-empty lines above, with
    no other From line in between."""
    seen = 0
    for j in range(at - 1, max(-1, at - 12), -1):
        if not lines[j]:
            continue
        if _FWD_MARKER_RE.match(lines[j]):
            return True
        seen += 1
        if seen >= 6 or _FROM_LINE_RE.match(lines[j]):
            return False
    return False


def forward_origins(msg: ParsedMessage) -> tuple[ForwardOrigin, ...]:
    """Where forwarded, redirected or quoted content came from (resent, attached, inline)."""
    out: list[ForwardOrigin] = [
        ForwardOrigin("resent", a) for a in header_addresses(msg, ("resent-from", "resent-sender"))
    ]
    for part in walk(msg.root):
        if part.content_type in ("message/rfc822", "message/global") and part.children:
            child = part.children[0]
            scan = _scan_header(msg.raw, child.header_start, child.body_start)
            values = [_unfold(f.value) for f in _fields(msg.raw, scan) if f.name.lower() == "from"]
            out.extend(ForwardOrigin("attached_message", a) for a in _safe_addrs(values))
        elif part.content_type == "text/rfc822-headers":
            scan = _scan_header(msg.raw, part.body_start, part.body_end)
            values = [_unfold(f.value) for f in _fields(msg.raw, scan) if f.name.lower() == "from"]
            out.extend(ForwardOrigin("attached_message", a) for a in _safe_addrs(values))
    for part in body_parts(msg):
        if part.content_type == "text/html" and not _may_hold_at(decoded_text(msg, part)):
            continue  # no "@" once the tags are gone and the entities decoded: no origin
        out.extend(_inline_origins(_part_text(msg, part)))
    return tuple(dict.fromkeys(out))


_COMPLEX_ADDRESS = re.compile(r'["()\\:;]')


def _simple_addresses(value: str) -> list[str] | None:
    """The addresses of a plain list (``a@b, Name <c@d>``), or None when the value needs the
    full RFC 5322 parser (quotes, comments, groups, escapes)."""
    if _COMPLEX_ADDRESS.search(value):
        return None
    found = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if "<" in item:
            inner = item[item.rfind("<") + 1 :]
            close = inner.find(">")
            if close < 0 or inner[close + 1 :].strip():
                return None
            address = inner[:close].strip()
        elif " " in item or "\t" in item:
            return None
        else:
            address = item
        if address:
            found.append(address)
    return found


def _safe_addrs(values: list[str]) -> list[str]:
    """The addr-specs of header values: a fast path for plain lists, else the stdlib parser."""
    found: list[str] = []
    for value in values:
        simple = _simple_addresses(value)
        if simple is None:
            try:
                simple = [a.strip() for _, a in getaddresses([value]) if a.strip()]
            except Exception:
                simple = []
        found.extend(simple)
    return found


_OPAQUE_DEFECTS = ("depth limit", "encoded container kept opaque", "parser error")


def structure_is_opaque(msg: ParsedMessage) -> bool:
    """True when part of the message could not be looked into (too deep, an encoded container,
    a parser failure): a rule that must prove the absence of something cannot."""
    return any(d.startswith(_OPAQUE_DEFECTS) for d in msg.defects)


def has_mssante_markers(msg: ParsedMessage) -> bool:
    """True when the message carries MSSanté health-data markers (X-MSS-* or IHE_XDM.ZIP)."""
    for part in walk(msg.root):
        if part.filename is not None and part.filename.strip().lower() == "ihe_xdm.zip":
            return True
        if part.first_values or not part.headers:
            if "x-mss-codecda" in part.first_values or "x-mss-ins" in part.first_values:
                return True
            continue
        for name, _ in part.headers:
            if name.lower() in ("x-mss-codecda", "x-mss-ins"):
                return True
    return False


def body_is_empty(msg: ParsedMessage) -> bool:
    """True when the body text is only whitespace and nothing else (no attachment) is there."""
    bodies = body_parts(msg)
    body_ids = {id(p) for p in bodies}
    for part in walk(msg.root):
        if part.children or id(part) in body_ids:
            continue
        if part.content_type.startswith("multipart/"):
            if msg.raw[part.body_start : part.body_end].strip():
                return False
            continue
        return False
    return all(not _part_text(msg, p).strip() for p in bodies)


# --------------------------------------------------------------------------------------------
# Signature
# --------------------------------------------------------------------------------------------


class _Skip(Exception):
    """A body part that cannot be rewritten safely; the reason is the message."""


@dataclass(slots=True)
class _HeaderEnd:
    """New lines for the end of one header block, and whether it needs its blank line."""

    le: bytes
    lines: list[tuple[int, bytes]]
    blank: bool

    def __init__(self, le: bytes, lines: list[tuple[int, bytes]], blank: bool) -> None:
        self.le = le
        self.lines = lines
        self.blank = blank


@dataclass(slots=True)
class _Edits:
    """Byte splices of one rewrite: replacements, and insertions at header-block ends."""

    replacements: list[tuple[int, int, bytes]]
    header_ends: dict[int, _HeaderEnd]

    def __init__(
        self, replacements: list[tuple[int, int, bytes]], header_ends: dict[int, _HeaderEnd]
    ) -> None:
        self.replacements = replacements
        self.header_ends = header_ends

    def replace(self, start: int, end: int, data: bytes) -> None:
        self.replacements.append((start, end, data))

    def header_end(self, raw: bytes, part: Part, le: bytes) -> tuple[_HeaderScan, _HeaderEnd]:
        """The insertion point at the end of ``part``'s header block."""
        if part.fields_end >= 0:
            # (As the parser found it: the blank line, if any, is between it and the body.)
            scan = _HeaderScan(
                part.fields_start,
                part.fields_end,
                part.body_start,
                part.body_start > part.fields_end,
            )
        else:
            scan = _scan_header(raw, part.header_start, part.body_start, part.header_start == 0)
        end = self.header_ends.get(scan.fields_end)
        if end is None:
            end = self.header_ends[scan.fields_end] = _HeaderEnd(le, [], not scan.had_blank)
        return scan, end

    def merge(self, other: _Edits) -> None:
        self.replacements.extend(other.replacements)
        for pos, end in other.header_ends.items():
            mine = self.header_ends.get(pos)
            if mine is None:
                self.header_ends[pos] = end
            else:
                mine.lines.extend(end.lines)
                mine.blank = mine.blank or end.blank

    def apply(self, raw: bytes) -> tuple[bytes, bool]:
        """The edited bytes, and whether no edit started a line with a dot.

        The unchanged stretches are views of ``raw``: the one copy is the final join.
        """
        items: list[tuple[int, int, int, bytes]] = []
        for pos, end in self.header_ends.items():
            data = b"".join(line + end.le for _, line in sorted(end.lines, key=lambda x: x[0]))
            if end.blank:
                data += end.le
            if data and pos > 0 and raw[pos - 1 : pos] == b"\r":
                data = b"\n" + data  # the last header line ended the data with a bare CR
            elif data and pos > 0 and raw[pos - 1 : pos] != b"\n":
                data = end.le + data  # the last header line ended the data
            items.append((pos, pos, 0, data))
        items.extend((start, stop, 1, data) for start, stop, data in self.replacements)
        view = memoryview(raw)
        out: list[bytes | memoryview] = []
        inserted: list[tuple[int, int]] = []  # (offset in the result, length)
        cursor = 0
        size = 0
        for start, stop, _, data in sorted(items, key=lambda e: (e[0], e[2], e[1])):
            if start < cursor:
                raise _Skip("overlapping_edits")
            out.append(view[cursor:start])
            size += start - cursor
            out.append(data)
            inserted.append((size, len(data)))
            size += len(data)
            cursor = stop
        out.append(view[cursor:])
        result = b"".join(out)
        # A line starts with a dot only inside an edit or where the edit joins the original.
        dot_safe = not result.startswith(b".") and not any(
            _CRLF_DOT.search(result, max(0, at - 2), at + length + 1) for at, length in inserted
        )
        return result, dot_safe


_CRLF_DOT = re.compile(rb"\r\n\.")
"""A line starting with a dot (``re`` finds it faster than ``bytes.find``)."""


def _qp_encode(data: bytes, le: bytes) -> bytes:
    """Quoted-printable (RFC 2045) with hard line breaks ``le`` and lines of at most 76.

    No encoded line starts with ``-``: the text re-encoded may hold what looks like a MIME
    delimiter (``--boundary``) behind a bare CR or an encoded line feed, which a line break
    of the encoding would otherwise put at the start of a line, where it would end the part.
    """
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    out: list[bytes] = []
    safe = re.compile(rb"[\x21-\x3c\x3e-\x7e \t]*")
    for line in lines:
        if (
            len(line) <= 76
            and safe.fullmatch(line)
            and not line.endswith((b" ", b"\t"))
            and not line.startswith(b"-")
        ):
            out.append(line)
            continue
        tokens: list[bytes] = []
        last = len(line) - 1
        for i, byte in enumerate(line):
            if (33 <= byte <= 126 and byte != 61) or (byte in (32, 9) and i != last):
                tokens.append(bytes((byte,)))
            else:
                tokens.append(b"=%02X" % byte)
        cur = b""
        pieces: list[bytes] = []
        for tok in tokens:
            if len(cur) + len(tok) > 75:
                pieces.append(cur + b"=")
                cur = b""
            if not cur and tok == b"-":
                tok = b"=2D"  # (see the docstring)
            cur += tok
        pieces.append(cur)
        out.append(le.join(pieces))
    return le.join(out)


def _b64_encode(data: bytes, le: bytes) -> bytes:
    if not data:
        return b""
    return base64.encodebytes(data).replace(b"\n", le)


def _detect_le(data: bytes, default: bytes) -> bytes:
    nl = data.find(b"\n")
    if nl < 0:
        return default
    return b"\r\n" if nl > 0 and data[nl - 1 : nl] == b"\r" else b"\n"


@functools.lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> bool:
    try:
        return "a\r\n=".encode(codec) == b"a\r\n=" and b"a\r\n=".decode(codec) == "a\r\n="
    except Exception:
        return False


def _signature_lines(text: str, flowed: bool) -> list[str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not flowed:
        return lines
    out: list[str] = []
    for line in lines:
        if line != "-- ":
            line = line.rstrip(" ")
        if line.startswith((" ", ">", "From ")):
            line = " " + line  # space-stuffing (RFC 3676)
        out.append(line)
    return out


def _field_le(field_bytes: bytes, default: bytes) -> bytes:
    if field_bytes.endswith(b"\r\n"):
        return b"\r\n"
    if field_bytes.endswith(b"\n"):
        return b"\n"
    return default


_FWS = rb"(?:[ \t]|\r?\n[ \t])*"
_CHARSET_PARAM = re.compile(
    rb"(?i)(;" + _FWS + rb"charset" + _FWS + rb"=" + _FWS + rb')("[^"]*"|[^\s;()]*)'
)
"""The charset parameter in a Content-Type field line; its value may be empty, and the
blanks around it may be folded, never the end of the field."""


def _set_part_headers(
    msg: ParsedMessage,
    part: Part,
    edits: _Edits,
    *,
    charset: str | None,
    cte: str | None,
) -> None:
    """Edit only this part's Content-Type charset / Content-Transfer-Encoding lines."""
    raw = msg.raw
    le = _detect_le(raw[part.header_start : part.body_start], msg.line_ending)
    scan, header_end = edits.header_end(raw, part, le)
    if charset is None and cte is None:
        return  # (the header block's missing blank line, if any, is still added)
    fields = _fields(raw, scan)
    additions: list[bytes] = []
    if charset is not None:
        ct = next((f for f in fields if f.name.lower() == "content-type"), None)
        if ct is None:
            additions.append(
                b"Content-Type: " + part.content_type.encode() + b"; charset=" + charset.encode()
            )
        else:
            fb = raw[ct.start : ct.end]
            pm = _CHARSET_PARAM.search(fb)
            if _parse_structured(_unfold(ct.value))[0] != part.content_type:
                # an invalid Content-Type read as text/plain: write a valid one
                name = fb.split(b":", 1)[0]
                value = part.content_type.encode() + b"; charset=" + charset.encode()
                new = name + b": " + value + _field_le(fb, b"")
            elif pm:
                new = fb[: pm.start(2)] + charset.encode() + fb[pm.end(2) :]
            else:
                body = fb.rstrip(b"\r\n")
                new = body + b"; charset=" + charset.encode() + fb[len(body) :]
            edits.replace(ct.start, ct.end, new)
    if cte is not None:
        cf = next((f for f in fields if f.name.lower() == "content-transfer-encoding"), None)
        if cf is None:
            additions.append(b"Content-Transfer-Encoding: " + cte.encode())
        else:
            fb = raw[cf.start : cf.end]
            name = fb.split(b":", 1)[0]
            edits.replace(cf.start, cf.end, name + b": " + cte.encode() + _field_le(fb, b""))
    header_end.lines.extend((1, line) for line in additions)


@dataclass(frozen=True, slots=True)
class _TextBody:
    """A text part's body as found (encoded) and decoded, with its codec and line endings."""

    cte: str
    body: bytes
    decoded: bytes
    codec: str
    raw_le: bytes
    le: bytes

    def __init__(
        self, cte: str, body: bytes, decoded: bytes, codec: str, raw_le: bytes, le: bytes
    ) -> None:
        object.__setattr__(self, "cte", cte)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "decoded", decoded)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "raw_le", raw_le)
        object.__setattr__(self, "le", le)


def _text_body(msg: ParsedMessage, part: Part) -> _TextBody:
    """Decode a text part for rewriting, or skip it (unknown encoding or charset)."""
    cte = part.transfer_encoding
    body = msg.raw[part.body_start : part.body_end]
    decoded = _decode_cte(body, cte)
    if decoded is None:
        raise _Skip("unsupported_encoding")
    codec = _part_codec(part)
    if codec is None or not _ascii_compatible(codec):
        raise _Skip("unsupported_charset")
    raw_le = _detect_le(body, msg.line_ending)
    return _TextBody(cte, body, decoded, codec, raw_le, _detect_le(decoded, raw_le))


def _encode_body(tb: _TextBody, new_decoded: bytes, cte: str) -> bytes:
    """Encode a rewritten body with ``cte``, keeping the original's final line ending."""
    if cte in ("7bit", "8bit", "binary"):
        return new_decoded
    if cte == "quoted-printable":
        new_body = _qp_encode(new_decoded, tb.raw_le)
        if tb.body.endswith(b"\n") and not new_body.endswith(tb.raw_le):
            new_body += tb.raw_le
        return new_body
    new_body = _b64_encode(new_decoded, tb.raw_le)
    if not tb.body.endswith(b"\n") and new_body.endswith(tb.raw_le):
        new_body = new_body[: -len(tb.raw_le)]
    return new_body


def _rewrite_plain(msg: ParsedMessage, part: Part, text: str, edits: _Edits) -> None:
    tb = _text_body(msg, part)
    cte, decoded, codec, le = tb.cte, tb.decoded, tb.codec, tb.le
    flowed = part.params.get("format", "").strip().lower() == "flowed"
    les = le.decode("ascii")
    sig = les.join(_signature_lines(text, flowed))
    if not sig.strip():
        raise _Skip("empty_signature")
    if decoded.endswith(b"\n"):
        addition = les + sig + les
    elif decoded:
        addition = les + les + sig
    else:
        addition = sig + les
    new_charset: str | None = None
    try:
        sig_bytes = addition.encode(codec)
        new_decoded = decoded + sig_bytes
    except UnicodeEncodeError:
        try:
            content = decoded.decode(codec)
        except UnicodeDecodeError:
            try:
                content = decoded.decode("utf-8")
            except UnicodeDecodeError:
                content = decoded.decode("cp1252", "replace")
        new_decoded = (content + addition).encode("utf-8", "surrogateescape")
        new_charset = "utf-8"
        sig_bytes = addition.encode("utf-8")
    new_cte: str | None = None
    if cte == "7bit" and not sig_bytes.isascii():
        new_cte = "quoted-printable"
    out_cte = new_cte or cte
    if out_cte in ("7bit", "8bit", "binary"):
        _check_no_delimiter(msg, sig_bytes)
    if out_cte in ("7bit", "8bit", "binary") and new_charset is None:
        # The original bytes stay as they were: the signature is inserted after them.
        edits.replace(part.body_end, part.body_end, sig_bytes)
    else:
        edits.replace(part.body_start, part.body_end, _encode_body(tb, new_decoded, out_cte))
    _set_part_headers(msg, part, edits, charset=new_charset, cte=new_cte)


_BODY_CLOSE_RE = re.compile(rb"</body\s*>", re.IGNORECASE)


_TAG_ENDS_LOOKED_AT = 16
"""Closing tags looked at from the end for ``</body>`` before lowering the whole HTML."""


def _last_body_close(html: bytes) -> int:
    """Where the last ``</body>`` tag (any case, blanks before ``>``) starts, or -1."""
    # Nearly always among the last closing tags (before ``</html>``): looked for there first.
    at = len(html)
    for _ in range(_TAG_ENDS_LOOKED_AT):
        at = html.rfind(b"</", 0, at)
        if at < 0:
            return -1
        if html[at + 2 : at + 6].lower() == b"body":
            if _BODY_CLOSE_RE.match(html, at):
                return at
            break  # (a "</bodyx": the slow way)
    lowered = html.lower()
    at = lowered.rfind(b"</body")
    if at >= 0 and _BODY_CLOSE_RE.match(html, at):
        return at
    closes = [m.start() for m in _BODY_CLOSE_RE.finditer(html)]  # (a "</bodyx" was last)
    return closes[-1] if closes else -1


def _rewrite_html(msg: ParsedMessage, part: Part, fragment: str, edits: _Edits) -> None:
    tb = _text_body(msg, part)
    cte, decoded, codec, le = tb.cte, tb.decoded, tb.codec, tb.le
    if not fragment.strip():
        raise _Skip("empty_signature")
    frag = fragment.replace("\r\n", "\n").replace("\r", "\n").replace("\n", le.decode())
    enc_codec = "ascii" if cte == "7bit" else codec
    frag_bytes = frag.encode(enc_codec, "xmlcharrefreplace")
    pos = _last_body_close(decoded)
    if pos < 0:
        pos = len(decoded)
        if decoded and not decoded.endswith(b"\n"):
            frag_bytes = le + frag_bytes
    if cte in ("7bit", "8bit", "binary"):
        # The body is its own decoded form: the fragment is inserted, nothing else is copied.
        _check_no_delimiter(msg, frag_bytes)
        edits.replace(part.body_start + pos, part.body_start + pos, frag_bytes)
    else:
        new_decoded = decoded[:pos] + frag_bytes + decoded[pos:]
        edits.replace(part.body_start, part.body_end, _encode_body(tb, new_decoded, cte))
    _set_part_headers(msg, part, edits, charset=None, cte=None)


def _delimiters(msg: ParsedMessage) -> tuple[bytes, ...]:
    """``--boundary`` of every multipart of the message, as bytes."""
    out: list[bytes] = []
    for part in walk(msg.root):
        boundary = part.params.get("boundary")
        if boundary and part.content_type.startswith("multipart/"):
            out.append(b"--" + boundary.encode("utf-8", "replace"))
    return tuple(out)


def _check_no_delimiter(msg: ParsedMessage, inserted: bytes) -> None:
    """Skip the rewrite when a line of ``inserted`` (a signature spliced in as it is) starts
    like one of the message's MIME delimiters: it would end a part, and the message would
    not have the structure the filter read (a signature text with a ``--outer`` line, a
    boundary chosen to look like a line of the signature)."""
    if b"--" not in inserted:
        return
    delimiters = _delimiters(msg)
    for line in inserted.split(b"\n"):
        if line.startswith(b"--") and line.startswith(delimiters):
            raise _Skip("boundary_in_signature")


def _holds(text: str, needle: str) -> bool:
    """``needle`` (lower case) is in ``text``, whatever the case. An address cannot be there
    without its "@": most bodies are answered without lowering them whole."""
    if "@" in needle and "@" not in text:
        return False
    return needle in text.lower()


def add_signature(
    msg: ParsedMessage,
    text: str,
    html_fragment: str,
    already_present: str,
    marker: tuple[str, str] | None = ("X-MSSGate-Signature", "added"),
    skip_dkim_signed: bool = True,
) -> SignatureResult:
    """Append the preferred-address signature to the body parts, splicing bytes in place.

    Returns the original bytes unchanged (``added=False``) when the message is signed or
    encrypted, DKIM-signed (unless ``skip_dkim_signed`` is False), already carries the marker
    header or the ``already_present`` address, or has no body part that can be rewritten.
    Never raises.
    """
    try:
        return _add_signature(msg, text, html_fragment, already_present, marker, skip_dkim_signed)
    except Exception as exc:  # defensive: a rewrite failure must not lose the message
        return SignatureResult(msg.raw, False, f"error:{type(exc).__name__}")


def _add_signature(
    msg: ParsedMessage,
    text: str,
    html_fragment: str,
    already_present: str,
    marker: tuple[str, str] | None,
    skip_dkim_signed: bool,
) -> SignatureResult:
    if is_signed_or_encrypted(msg):
        return SignatureResult(msg.raw, False, "signed_or_encrypted")
    if skip_dkim_signed and msg.header("DKIM-Signature") is not None:
        return SignatureResult(msg.raw, False, "dkim_signed")
    if marker is not None and msg.header(marker[0]) is not None:
        return SignatureResult(msg.raw, False, "already_signed")
    parts = body_parts(msg)
    needle = already_present.strip().lower()
    if needle and any(_holds(decoded_text(msg, p), needle) for p in parts):
        return SignatureResult(msg.raw, False, "already_signed")
    if not parts:
        return SignatureResult(msg.raw, False, "no_body_part")
    edits = _Edits([], {})
    done = 0
    skipped: list[str] = []
    for part in parts:
        attempt = _Edits([], {})
        if part.header_start > 0 and msg.raw[part.header_start - 1] != 0x0A:
            skipped.append("malformed_part")  # e.g. a delimiter line that ends the data
            continue
        try:
            if part.content_type == "text/html":
                _rewrite_html(msg, part, html_fragment, attempt)
            else:
                _rewrite_plain(msg, part, text, attempt)
        except _Skip as skip:
            skipped.append(str(skip))
            continue
        edits.merge(attempt)
        done += 1
    if not done:
        return SignatureResult(msg.raw, False, skipped[0] if skipped else "no_body_part")
    if marker is not None:
        _, header_end = edits.header_end(msg.raw, msg.root, msg.line_ending)
        header_end.lines.append((2, f"{marker[0]}: {marker[1]}".encode()))
    signed, dot_safe = edits.apply(msg.raw)
    return SignatureResult(signed, True, "added", dot_safe)
