"""Small hand-written messages for the tests (CRLF, as on the wire)."""

from __future__ import annotations


def message(
    sender: str,
    to: str,
    subject: str = "Compte rendu",
    body: str = "Bonjour,\nVoici le compte rendu.\n",
    cc: str | None = None,
    extra_headers: str = "",
) -> bytes:
    """A simple text/plain UTF-8 message."""
    lines = [
        f"From: {sender}",
        f"To: {to}",
        *([f"Cc: {cc}"] if cc else []),
        f"Subject: {subject}",
        "Message-ID: <test@cabinet-gare.fr>",
        "Date: Tue, 25 Nov 2025 10:00:00 +0100",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        *([h for h in extra_headers.split("\n") if h]),
        "",
        body,
    ]
    text = "\n".join(lines).replace("\r\n", "\n")
    return text.replace("\n", "\r\n").encode("utf-8")


def forwarded_attachment(sender: str, to: str, origin: str) -> bytes:
    """A message forwarding, as an attachment, a message received from ``origin``."""
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: Fwd: resultats\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPour info.\r\n"
        "--b1\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
        f"From: {origin}\r\nTo: {sender}\r\nSubject: resultats\r\n\r\nHbA1c 7,2 %.\r\n"
        "--b1--\r\n"
    ).encode()


def inline_forward(sender: str, to: str, origin: str) -> bytes:
    """A Thunderbird-style inline forward (French) of a message from ``origin``."""
    body = (
        "Pour info.\n\n-------- Message transféré --------\nSujet : résultats\n"
        "Date : Mon, 24 Nov 2025 09:12:00 +0100\n"
        f"De : Dr Xavier <{origin}>\nPour : {sender}\n\nHbA1c 7,2 %.\n"
    )
    return message(sender, to, subject="Fwd: résultats", body=body)
