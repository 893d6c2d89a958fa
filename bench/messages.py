"""The benchmark's messages: real MIME, deterministic, built once per run.

Each message exists in two forms:

- :attr:`Message.file_bytes`: LF line endings, no dot-stuffing — the file ``smtp-source -F``
  sends (it prepends the dots and appends CRLF itself);
- :meth:`Message.wire`: CRLF line endings and dot-stuffed, without the final ``.CRLF`` — what
  the Python load client writes after ``DATA``.

Sizes are totals (headers included), within a few hundred bytes of the target:

- ``2k``: text/plain, French prose;
- ``100k``: multipart/mixed, a text/html body and a base64 PDF-looking attachment;
- ``5m`` (and ``mime_of_size`` for the linear-cost runs): multipart/mixed, a text/plain body
  and two base64 attachments (a PDF-looking report and a JPEG-looking image).

Attachment payloads are pseudo-random bytes (seeded) behind a real magic number, so nothing
compresses and nothing looks like a forwarded message or an MSSanté CDA.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * 1024

PROSE = (
    "Bonjour, je vous adresse ci-joint le compte rendu de la consultation de ce matin. "
    "Le bilan biologique est dans les normes ; nous reverrons la patiente dans trois mois "
    "pour un contrôle. N'hésitez pas à me joindre au secrétariat pour toute question. "
)


@dataclass(frozen=True)
class Message:
    """One benchmark message: its envelope and its bytes."""

    name: str
    mail_from: str
    rcpt_to: str
    file_bytes: bytes

    @property
    def size(self) -> int:
        """Size on the wire (CRLF line endings), the size the servers see."""
        return len(self.file_bytes) + self.file_bytes.count(b"\n")

    def wire(self) -> bytes:
        """CRLF line endings and dot-stuffing, without the terminating ``.CRLF``."""
        lines = self.file_bytes.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
        return b"\r\n".join(stuffed) + b"\r\n"


def _headers(mail_from: str, rcpt_to: str, subject: str, serial: str) -> list[str]:
    return [
        f"From: {mail_from}",
        f"To: {rcpt_to}",
        f"Subject: {subject}",
        "Date: Tue, 03 Nov 2026 09:30:00 +0100",
        f"Message-ID: <bench-{serial}@clinique-saint-roch.fr>",
        "MIME-Version: 1.0",
        "User-Agent: mssgate-bench",
    ]


def _prose(size: int) -> str:
    """About ``size`` bytes of wrapped French text (UTF-8 counted once per character)."""
    words = (PROSE * (size // len(PROSE) + 2)).split(" ")
    lines: list[str] = []
    line = ""
    total = 0
    for word in words:
        if total + len(line) >= size:
            break
        if len(line) + len(word) + 1 > 72:
            lines.append(line)
            total += len(line) + 1
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return "\n".join(lines)


def _attachment(
    rng: random.Random, magic: bytes, raw_size: int, ctype: str, filename: str, boundary: str
) -> str:
    payload = magic + rng.randbytes(max(0, raw_size - len(magic)))
    encoded = base64.encodebytes(payload).decode("ascii").rstrip("\n")
    return (
        f"--{boundary}\n"
        f'Content-Type: {ctype}; name="{filename}"\n'
        "Content-Transfer-Encoding: base64\n"
        f'Content-Disposition: attachment; filename="{filename}"\n'
        "\n"
        f"{encoded}\n"
    )


def _raw_for_encoded(encoded_size: int) -> int:
    """Raw bytes whose base64 (76-char lines + CRLF on the wire) is about ``encoded_size``."""
    return max(64, int(encoded_size * 57 / 78))


def text_plain(mail_from: str, rcpt_to: str, size: int = 2 * KIB) -> Message:
    """A plain-text message of about ``size`` bytes."""
    head = [
        *_headers(mail_from, rcpt_to, "Compte rendu de consultation", f"text-{size}"),
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    header_text = "\n".join(head) + "\n\n"
    body = _prose(size - len(header_text.encode()) - 40)
    data = (header_text + body + "\n").encode("utf-8")
    return Message(f"text-{size}", mail_from, rcpt_to, data)


def _mixed_prefix(headers: list[str], boundary: str, body_type: str, body: str) -> str:
    """A multipart/mixed message up to its first attachment: the header block, the preamble
    and the 8-bit body part."""
    head = [*headers, f'Content-Type: multipart/mixed; boundary="{boundary}"']
    body_part = (
        f"--{boundary}\n"
        f"Content-Type: {body_type}; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        f"{body}\n"
    )
    return "\n".join(head) + "\n\nThis is a multi-part message in MIME format.\n" + body_part


def html_with_pdf(mail_from: str, rcpt_to: str, size: int = 100 * KIB) -> Message:
    """multipart/mixed: a text/html body and one base64 PDF-looking attachment."""
    boundary = "=_bench_html_pdf_0001"
    paragraphs = _prose(16 * KIB).split("\n")
    html = (
        '<html><head><meta charset="utf-8"></head><body>\n'
        + "\n".join(f"<p>{p}</p>" for p in paragraphs)
        + "\n<p>Bien confraternellement,</p>\n</body></html>"
    )
    prefix = _mixed_prefix(
        _headers(mail_from, rcpt_to, "Compte rendu et résultats", f"html-{size}"),
        boundary,
        "text/html",
        html,
    )
    closing = f"--{boundary}--\n"
    remaining = size - len(prefix.encode()) - len(closing) - 200
    rng = random.Random(100)
    attachment = _attachment(
        rng,
        b"%PDF-1.7\n",
        _raw_for_encoded(remaining),
        "application/pdf",
        "compte-rendu.pdf",
        boundary,
    )
    data = (prefix + attachment + closing).encode("utf-8")
    return Message(f"html-pdf-{size}", mail_from, rcpt_to, data)


def mime_of_size(mail_from: str, rcpt_to: str, size: int) -> Message:
    """multipart/mixed of about ``size`` bytes: text body, a PDF and a JPEG (base64)."""
    boundary = "=_bench_mixed_0002"
    prefix = _mixed_prefix(
        _headers(mail_from, rcpt_to, "Imagerie et compte rendu", f"mixed-{size}"),
        boundary,
        "text/plain",
        _prose(1500),
    )
    closing = f"--{boundary}--\n"
    remaining = size - len(prefix.encode()) - len(closing) - 400
    rng = random.Random(size)
    pdf = _attachment(
        rng,
        b"%PDF-1.7\n",
        _raw_for_encoded(remaining // 4),
        "application/pdf",
        "compte-rendu.pdf",
        boundary,
    )
    jpeg = _attachment(
        rng,
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        _raw_for_encoded(remaining - remaining // 4),
        "image/jpeg",
        "radio-thorax.jpg",
        boundary,
    )
    data = (prefix + pdf + jpeg + closing).encode("utf-8")
    return Message(f"mixed-{size}", mail_from, rcpt_to, data)


def by_size(label: str, mail_from: str, rcpt_to: str) -> Message:
    """The message of one benchmark size label: ``2k``, ``100k`` or ``5m``."""
    if label == "2k":
        return text_plain(mail_from, rcpt_to, 2 * KIB)
    if label == "100k":
        return html_with_pdf(mail_from, rcpt_to, 100 * KIB)
    if label == "5m":
        return mime_of_size(mail_from, rcpt_to, 5 * MIB)
    raise ValueError(f"unknown size label {label!r}")
