"""A big message sent upstream while it is still coming in, the decision kept for the end.

Once the upstream transaction is open (:meth:`mssgate.relay.SmtpRelay.prepare`) and the first
``START`` bytes of a message are in, the listener asks the filter what it would relay for that
beginning (the signature is near the top: its place is known early) and writes it upstream,
then each further complete line as it arrives. Nothing is final: the upstream gets no final
dot until the whole message has been decided, and the relay goes on from the bytes sent ahead
only if the message decided starts with exactly them (:meth:`PreparedTransaction.starts`);
otherwise (a refusal, another rewrite, a line starting with a dot, a bare line ending) the
connection is dropped, the upstream forgets what it had, and the message goes the usual way.

The point is time: a 5 MB message crosses the wire to the upstream while the client is still
sending it, instead of after. Only on the MSSanté route (:func:`mssgate.decide.may_go_ahead`):
its upstream is inside the trust space. An ordinary upstream gets a message once accepted,
never the content the rules may yet refuse to let out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mssgate.relay import PreparedTransaction
from mssgate.wire import DataReader

log = logging.getLogger("mssgate.ahead")

START = 256 * 1024
"""Bytes of a message in before anything is sent ahead (smaller messages go in one write)."""
HOLD = 16 * 1024
"""The end of that beginning is not sent from the prediction (a part cut short there may be
read differently once complete): it goes later, as received."""

ANCHOR = 512
"""Bytes on each side of the cut that must be found, unchanged, in the prediction."""

Predict = Callable[[bytes], "bytes | None"]
"""What the filter would relay for a message that began with these bytes (None: nothing)."""


class SendAhead:
    """The sending-ahead of one message into one prepared upstream transaction."""

    def __init__(self, prepared: asyncio.Task[PreparedTransaction], predict: Predict) -> None:
        self.prepared = prepared
        self.predict = predict
        self.active = True
        self._open: PreparedTransaction | None = None
        self._pending: list[tuple[bytes, int]] = []
        """Bytes received and not sent yet (the line under way): (chunk, from offset)."""

    def waiting(self, reader: DataReader) -> bool:
        """True when the message is big enough to go ahead but the upstream has not said
        354 yet: the listener stops reading the client until it has (a loop iteration can
        otherwise read a whole fast client's message before the upstream gets a turn)."""
        return (
            self.active
            and self._open is None
            and reader.received >= START
            and not self.prepared.done()
        )

    def stop(self) -> None:
        """Send nothing more (what was sent stays, for the relay to check)."""
        self.active = False
        self._pending.clear()

    def feed(self, reader: DataReader, chunk: bytes) -> None:
        """After ``reader`` took ``chunk`` (the transfer not finished): send what can go."""
        if not self.active:
            return
        if reader.refusal is not None or not reader.unchanged_so_far:
            self.stop()  # the message relayed will not be these bytes as they are
            return
        try:
            if self._open is None:
                self._begin(reader)
            else:
                self._pending.append((chunk, 0))
                self._flush()
        except Exception as exc:  # never a reason to fail the transfer: the relay decides
            log.debug("sending ahead stopped: %s", type(exc).__name__)
            self.stop()

    def _begin(self, reader: DataReader) -> None:
        if reader.received < START or not self.prepared.done():
            return
        if self.prepared.cancelled() or self.prepared.exception() is not None:
            self.stop()
            return
        beginning = reader.peek()
        cut = beginning.rfind(b"\r\n", 0, max(0, len(beginning) - HOLD)) + 2
        predicted = self.predict(beginning) if cut >= 2 else None
        if predicted is None:
            self.stop()
            return
        # Where the cut is in the prediction: the bytes around it, unchanged, found after
        # what the filter inserted above them (the signature's place may also be at the very
        # end, as in a single text part: that part is not sent from the prediction anyway).
        anchor = beginning[cut - min(cut, ANCHOR) : cut + ANCHOR]
        found = predicted.find(anchor, cut - min(cut, ANCHOR))
        shift = found - (cut - min(cut, ANCHOR))
        head = predicted[: cut + shift]
        # Sent only when the cut is found and no line of the head starts with a dot.
        if found < 0 or not head.endswith(b"\r\n") or head.startswith(b".") or b"\r\n." in head:
            self.stop()
            return
        self._open = self.prepared.result()
        self._open.send_ahead(head)
        self._pending = [(beginning, cut)]
        self._flush()

    def _flush(self) -> None:
        """Send the pending bytes up to the last line end among them."""
        assert self._open is not None
        last, start = self._pending[-1]
        end = last.rfind(b"\r\n", start) + 2
        if end < 2:
            return  # no line end in the newest chunk: wait for the next one
        for piece, offset in self._pending[:-1]:
            self._open.send_ahead(memoryview(piece)[offset:])
        self._open.send_ahead(memoryview(last)[start:end])
        self._pending = [(last, end)] if end < len(last) else []
