"""The SMTP DATA wire format, sans I/O: reading a message chunk by chunk, writing it back.

:class:`DataReader` takes the bytes a client sends after ``354`` in whatever chunks the
network delivers, and finds the end of data, the dot-stuffed lines, the line endings and the
size on each chunk as it arrives (while the client is still sending), so that once the final
dot is in, the message is one join away. :func:`dot_stuffed` is the way back out.
"""

from __future__ import annotations

import re

_DOT_LINE = b"\r\n."
_END = b"\r\n.\r\n"
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_CR = 0x0D


def normalize_line_endings(content: bytes) -> bytes:
    """Every bare CR or LF becomes CRLF, as an SMTP client library would send it: the filter
    decides on exactly the bytes that will be relayed."""
    crlf = content.count(b"\r\n")
    if content.count(b"\r") == crlf and content.count(b"\n") == crlf:
        return content
    return _LINE_ENDINGS.sub(b"\r\n", content)


def longest_header_line(content: bytes) -> int:
    """The longest line of the header block (the whole message if it has no blank line).

    Only the header block is bounded: it is what the filter parses; body lines go through as
    they came (an upstream folds or refuses them itself), and scanning megabytes of body lines
    would cost more than all the filtering.
    """
    end = content.find(b"\r\n\r\n")
    block = content if end < 0 else content[:end]
    return max(map(len, block.split(b"\r\n")), default=0)


class DataReader:
    """One DATA transfer (RFC 5321 4.1.1.4), fed with the chunks as they come.

    Positions are counted in the *stream*: a virtual CRLF followed by the client's bytes, so
    that a first line starting with a dot (or an empty message's lone dot) is found like any
    other. Each :meth:`feed` scans only the new chunk and the few bytes before it that could
    start a match: the whole transfer is scanned once, for the end of data and the stuffed
    lines in one pass, and the line endings are counted on the way.

    Past ``size_limit`` (0: none) or after :meth:`refuse`, the chunks are no longer kept: the
    reader only looks for the end of data, since the client must still be answered after its
    final dot (RFC 5321 4.2.5).
    """

    def __init__(self, size_limit: int = 0) -> None:
        self.size_limit = size_limit
        self.refusal: str | None = None
        """Why the message will not be taken (``"size"`` or what :meth:`refuse` was told)."""
        self.done = False
        self.leftover = b""
        """Bytes after the final dot: the client's next command (pipelining)."""
        self.received = 0
        """Bytes of the transfer so far (up to the final dot when done)."""
        self._chunks: list[bytes] = []
        self._tail = b"\r\n"  # the stream's unfinished end, scanned again with the next chunk
        self._tail_at = 0  # stream position of _tail[0]
        self._counted = 2  # stream position up to which line endings are counted
        self._end = -1  # stream position of the CRLF that starts CRLF.CRLF
        self._stuffed = False
        self._cr = 0
        self._lf = 0
        self._crlf = 0

    def refuse(self, reason: str) -> None:
        """Stop keeping the message (e.g. the memory budget is spent); read on to the end."""
        if self.refusal is None:
            self.refusal = reason
        self._chunks.clear()

    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes from the client; True once the final dot has been seen."""
        if self.done or not chunk:
            return self.done
        start = self._tail_at  # stream position of view[0]
        view = self._tail + chunk
        data_before = start + len(self._tail) - 2  # client bytes before this chunk
        scan = 0
        while True:
            hit = view.find(_DOT_LINE, scan)
            if hit < 0:
                scan = max(scan, len(view) - 2)
                break
            if hit + 5 > len(view):
                scan = hit  # maybe the end of data: wait for the next bytes
                break
            if view.startswith(_END, hit):
                self._end = start + hit
                break
            self._stuffed = True
            scan = hit + 3
        if self._end >= 0:
            self._finish(view, start, chunk, data_before)
            return True
        self.received = data_before + len(chunk)
        # (A few bytes of leeway: the chunk may end inside the final CRLF "." CRLF.)
        if self.refusal is None and self.size_limit and self.received > self.size_limit + 3:
            self.refuse("size")
        if self.refusal is None:
            self._chunks.append(chunk)
            # Count line endings up to a few bytes before the end, never splitting a CRLF.
            limit = len(view) - 4
            if limit > 0 and view[limit - 1] == _CR:
                limit -= 1
            self._count(view, self._counted - start, limit)
            self._counted = max(self._counted, start + limit)
        keep = min(scan, self._counted - start) if self.refusal is None else scan
        keep = max(0, keep)
        self._tail = view[keep:]
        self._tail_at = start + keep
        return False

    def _count(self, view: bytes, begin: int, stop: int) -> None:
        if stop > begin:
            self._cr += view.count(b"\r", begin, stop)
            self._lf += view.count(b"\n", begin, stop)
            self._crlf += view.count(b"\r\n", begin, stop)

    def _finish(self, view: bytes, start: int, chunk: bytes, data_before: int) -> None:
        self.done = True
        content_end = self._end  # in client bytes: the stream position less the virtual CRLF
        self.received = content_end
        self.leftover = chunk[content_end + 3 - data_before :]
        if self.refusal is None and self.size_limit and content_end > self.size_limit:
            self.refuse("size")
        if self.refusal is not None:
            return
        self._chunks.append(chunk)
        self._count(view, self._counted - start, self._end + 2 - start)
        self._counted = self._end + 2
        # Drop what follows the content (the final dot, the client's next command).
        excess = data_before + len(chunk) - content_end
        while excess > 0:
            last = self._chunks.pop()
            if len(last) > excess:
                self._chunks.append(last[: len(last) - excess])
            excess -= len(last)

    @property
    def dot_free(self) -> bool:
        """True when no line of the message starts with a dot (nothing to stuff on the way
        out): no stuffed line came in, and no bare line ending had to be made CRLF."""
        return not self._stuffed and self.crlf_only

    @property
    def crlf_only(self) -> bool:
        """True when every line of the message ended with CRLF."""
        return self._cr == self._lf == self._crlf

    def message(self) -> bytes:
        """The message as decided on and relayed: dots unstuffed, every line ending CRLF.

        Only once :attr:`done`, and without :attr:`refusal`. The reader lets go of the chunks.
        """
        if not self.done or self.refusal is not None:
            raise ValueError("no message: the transfer is not complete, or was refused")
        chunks, self._chunks = self._chunks, []
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks
        if self._stuffed:
            content = (b"\r\n" + content).replace(_DOT_LINE, b"\r\n")[2:]
        if not self.crlf_only:
            content = _LINE_ENDINGS.sub(b"\r\n", content)
        return content


def dot_stuffed(message: bytes, dot_free: bool = False) -> list[bytes]:
    """The DATA payload of a CRLF message, in pieces written one after the other (no copy of
    a large message just to add a few bytes): leading dots doubled, then the final dot.

    ``dot_free``: the caller knows that no line of ``message`` starts with a dot, and the
    scan for them is skipped (megabytes cost milliseconds).
    """
    if dot_free:
        pieces = [message]
    else:
        pieces = [b"."] if message.startswith(b".") else []
        pieces.append(message.replace(b"\r\n.", b"\r\n.."))
    if not message.endswith(b"\r\n"):
        pieces.append(b"\r\n")
    pieces.append(b".\r\n")
    return pieces


def dot_stuff(message: bytes) -> bytes:
    """:func:`dot_stuffed` joined (for tests and small messages)."""
    return b"".join(dot_stuffed(message))
