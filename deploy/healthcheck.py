"""Container health check for mssgate: ``/healthz`` first, else the SMTP banner.

Run by the image's ``HEALTHCHECK`` (and usable by systemd or a monitoring probe) with the
interpreter of mssgate's venv. Exit 0: healthy; exit 1: unhealthy (the reason on stdout).

1. The policy (``$MSSGATE_POLICY``, default ``/etc/mssgate/policy.yaml``) is read with PyYAML
   for three values only: ``metrics.host``/``metrics.port`` and ``listen.host``/``listen.port``.
2. With a ``metrics`` section: ``GET http://<metrics.host>:<metrics.port>/healthz`` (an
   any-address host is reached on loopback; default port 9925). It is answered by the
   gateway's own event loop, so a 200 proves the process is not stuck; any other status, or
   no answer, is unhealthy.
3. Without one (no HTTP endpoint to ask), the SMTP port: a ``220`` banner within the timeout
   is healthy (then ``QUIT``).

Environment overrides: ``MSSGATE_HEALTH_URL`` (a full URL), ``MSSGATE_SMTP_PORT``,
``MSSGATE_HEALTH_TIMEOUT`` (seconds, default 5). Only the standard library and PyYAML.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import socket
import sys
import urllib.parse
from typing import Any

DEFAULT_POLICY = "/etc/mssgate/policy.yaml"
DEFAULT_METRICS = ("127.0.0.1", 9925)
DEFAULT_SMTP_PORT = 2525


def _section(policy: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = policy.get(name)
    return value if isinstance(value, dict) else None


def read_policy(path: str) -> dict[str, Any]:
    """The policy as a mapping ({} when it cannot be read: defaults apply)."""
    try:
        import yaml

        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def local_address(host: object) -> str:
    """Where to connect for a listener bound to ``host`` (any-address: loopback)."""
    if not isinstance(host, str) or not host or host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host


def check_http(url: str, timeout: float) -> tuple[bool | None, str]:
    """(True, why) on 200, (False, why) on another answer, (None, why) when nobody listens.

    None is for a caller that wants to tell "no endpoint" from "unhealthy" apart; :func:`main`
    counts both as unhealthy.
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
    )
    try:
        connection.request("GET", parts.path or "/healthz", headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read(200).decode("ascii", "replace").strip()
    except (ConnectionRefusedError, socket.gaierror) as exc:
        return None, f"{url}: {exc}"
    except OSError as exc:
        return False, f"{url}: {exc}"
    except http.client.HTTPException as exc:
        return False, f"{url}: bad HTTP answer ({exc!r})"
    finally:
        connection.close()
    if response.status == 200:
        return True, f"{url}: 200 {body}"
    return False, f"{url}: {response.status} {body}"


def check_smtp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """True when the SMTP listener greets with 220 within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            banner = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
    except OSError as exc:
        return False, f"smtp {host}:{port}: {exc}"
    line = banner.split(b"\r\n", 1)[0].decode("ascii", "replace")
    return banner.startswith(b"220"), f"smtp {host}:{port}: {line}"


def main() -> int:
    """Run the check; print one line; 0 healthy, 1 unhealthy."""
    timeout = float(os.environ.get("MSSGATE_HEALTH_TIMEOUT", "5"))
    policy = read_policy(os.environ.get("MSSGATE_POLICY", DEFAULT_POLICY))
    metrics = _section(policy, "metrics")
    listen = _section(policy, "listen") or {}
    url = os.environ.get("MSSGATE_HEALTH_URL")
    if not url and metrics is not None:
        host = local_address(metrics.get("host", DEFAULT_METRICS[0]))
        port = int(metrics.get("port", DEFAULT_METRICS[1]))
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/healthz"
    if url:
        answer, why = check_http(url, timeout)
        healthy = bool(answer)
    else:
        port = int(os.environ.get("MSSGATE_SMTP_PORT", listen.get("port", DEFAULT_SMTP_PORT)))
        healthy, why = check_smtp(local_address(listen.get("host")), port, timeout)
    print(("healthy: " if healthy else "unhealthy: ") + why)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
