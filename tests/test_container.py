"""The deployment artefacts: the container image, its health check, compose and systemd.

The image is really built, with no image registry and no network in the build:

1. wheels: the dependencies' wheels (``pip wheel``, from the package registry, cached in
   ``~/.cache/mssgate-test/wheels/<hash of the dependency list>``; ``$MSSGATE_TEST_CACHE``
   moves the cache) and mssgate's own wheel, built from a copy of the sources each run;
2. the base image: a Debian bookworm minbase with python3, python3-venv and ca-certificates
   made by ``debootstrap`` and imported into podman as ``localhost/mssgate-test-base:bookworm``
   (made once, then reused while ``podman image exists``);
3. ``podman --storage-driver=vfs build --isolation=chroot --format docker`` of the repo's
   ``Dockerfile`` and ``.dockerignore`` in a context holding only them, ``wheels/`` and
   ``deploy/healthcheck.py``;
4. the image is never run as a container: a container is *created* and its filesystem
   *mounted*, and mssgate is run in it with ``chroot --userspec=10001:10001`` (``check``,
   ``explain``, and ``serve`` on a loopback port for the health check).

The podman part is skipped, with its reason, when podman is missing, when not root (vfs and
chroot need it here) or when the base image must be made and debootstrap is missing.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import http.server
import json
import os
import platform
import shutil
import signal
import smtplib
import socket
import socketserver
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import policy_yaml
from tests.messages import message
from tests.smtp_peers import LOOPBACK, free_port, have, program_path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
HEALTHCHECK = DEPLOY / "healthcheck.py"
CACHE = Path(os.environ.get("MSSGATE_TEST_CACHE", Path.home() / ".cache" / "mssgate-test"))
PODMAN = ["podman", "--storage-driver=vfs"]
BASE_IMAGE = "localhost/mssgate-test-base:bookworm"
IMAGE = "localhost/mssgate-test:latest"
DEBIAN_MIRROR = os.environ.get("MSSGATE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
VENV_MSSGATE = "/opt/mssgate/venv/bin/mssgate"
VENV_PYTHON = "/opt/mssgate/venv/bin/python"
USERSPEC = "--userspec=10001:10001"
SERVE = ["serve", "--config", "/etc/mssgate/policy.yaml"]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
DEBOOTSTRAP = [
    "--variant=minbase",
    "--include=python3,python3-venv,ca-certificates",
    "bookworm",
]

BAL = "alice.martin@medecin.mssante.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
OUTLOOK = "secretariatCabinetXX@outlook.fr"


def run(
    args: list[str], *, timeout: float, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """A bounded subprocess; on failure the assertion shows its output."""
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check:
        assert result.returncode == 0, (
            f"{' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


# =============================================================================================
# The health check script (host Python; no podman needed)


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b"ok\n" if self.status == 200 else b"not ok\n"
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(server: socketserver.BaseServer) -> Iterator[int]:
    """Serve in a thread on its loopback port; shut down and joined afterwards."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])  # type: ignore[index]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def http_server(status: int) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 answering ``/healthz`` with ``status``; yields its port."""
    handler = type("Handler", (_HealthHandler,), {"status": status})
    with _serving(http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)) as port:
        yield port


class _BannerHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"220 mssgate.test ESMTP\r\n")
        with contextlib.suppress(OSError):
            self.request.recv(64)


@contextlib.contextmanager
def banner_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 greeting with an SMTP 220 banner; yields its port."""
    server = socketserver.ThreadingTCPServer((LOOPBACK, 0), _BannerHandler)
    server.daemon_threads = True
    with _serving(server) as port:
        yield port


def healthcheck(policy: Path, **env: str) -> tuple[int, str]:
    """Run deploy/healthcheck.py with this interpreter (which has PyYAML, as the image's)."""
    result = run(
        [sys.executable, str(HEALTHCHECK)],
        timeout=30,
        check=False,
        env={**os.environ, "MSSGATE_POLICY": str(policy), "MSSGATE_HEALTH_TIMEOUT": "3", **env},
    )
    return result.returncode, result.stdout.strip()


def test_healthcheck_asks_healthz_when_the_policy_has_metrics(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    with http_server(200) as port:
        policy.write_text(f"listen: {{port: 1}}\nmetrics: {{host: 0.0.0.0, port: {port}}}\n")
        code, out = healthcheck(policy)
    assert code == 0, out
    assert out == f"healthy: http://127.0.0.1:{port}/healthz: 200 ok"


def test_healthcheck_is_unhealthy_when_healthz_is_not_200(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    with http_server(503) as port:
        policy.write_text(f"metrics: {{port: {port}}}\n")
        code, out = healthcheck(policy)
    assert code == 1
    assert out.startswith("unhealthy: ") and ": 503" in out


def test_healthcheck_with_metrics_but_nothing_listening_is_unhealthy(tmp_path: Path) -> None:
    """With a metrics section, a dead endpoint is not excused by a live SMTP port."""
    policy = tmp_path / "policy.yaml"
    with banner_server() as smtp:
        policy.write_text(f"listen: {{port: {smtp}}}\nmetrics: {{port: {free_port()}}}\n")
        code, out = healthcheck(policy)
    assert code == 1
    assert "unhealthy: http://127.0.0.1:" in out


def test_healthcheck_falls_back_to_the_smtp_banner_without_metrics(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    with banner_server() as smtp:
        policy.write_text(f"listen: {{host: 0.0.0.0, port: {smtp}}}\n")
        code, out = healthcheck(policy)
    assert code == 0, out
    assert out == f"healthy: smtp 127.0.0.1:{smtp}: 220 mssgate.test ESMTP"
    code, out = healthcheck(policy)  # the server is gone
    assert code == 1 and out.startswith(f"unhealthy: smtp 127.0.0.1:{smtp}:")


def test_healthcheck_url_override(tmp_path: Path) -> None:
    with http_server(200) as port:
        code, out = healthcheck(
            tmp_path / "absent.yaml", MSSGATE_HEALTH_URL=f"http://127.0.0.1:{port}/healthz"
        )
    assert code == 0, out


# =============================================================================================
# compose.yaml and the systemd unit


def compose() -> dict[str, Any]:
    """deploy/compose.yaml, parsed."""
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_puts_postfix_in_front_of_stateless_mssgate_replicas() -> None:
    data = compose()
    services = data["services"]
    assert set(services) >= {"postfix", "mssgate"}
    postfix, gate = services["postfix"], services["mssgate"]

    # Postfix relays to mssgate; mssgate is reached only through Postfix (no host port).
    assert "mssgate" in postfix.get("depends_on", {})
    assert "ports" not in gate
    assert any(str(p).endswith(":25") or str(p).endswith(":587") for p in postfix["ports"])
    main_cf = (DEPLOY / "postfix" / "main.cf").read_text()
    assert "relayhost = [mssgate]:2525" in main_cf
    assert not any(line.startswith("smtpd_proxy_filter") for line in main_cf.splitlines())
    mounted = " ".join(str(v) for v in postfix["volumes"])
    assert "./postfix/main.cf:" in mounted and ":ro" in mounted

    # Stateless replicas: the policy and certificates read-only, secrets from files.
    assert gate["deploy"]["replicas"] >= 2
    assert gate.get("read_only") is True
    assert gate["user"] == "10001:10001"
    volumes = [str(v) for v in gate["volumes"]]
    assert any(v.endswith(":/etc/mssgate:ro") for v in volumes), volumes
    assert "secrets" in gate and set(gate["secrets"]) <= set(data["secrets"])
    for secret in data["secrets"].values():
        assert "file" in secret
    assert "9925" in " ".join(str(p) for p in gate.get("expose", []))

    # Health checks on both; mssgate's is the image's own script.
    assert gate["healthcheck"]["test"][:2] == ["CMD", VENV_PYTHON]
    assert gate["healthcheck"]["test"][2] == "/opt/mssgate/healthcheck.py"
    assert "postfix" in " ".join(postfix["healthcheck"]["test"])
    assert postfix["depends_on"]["mssgate"]["condition"] == "service_healthy"


def test_compose_postfix_configuration_is_understood_by_postfix(tmp_path: Path) -> None:
    """``postconf -n`` and ``postconf -M`` read the shipped main.cf and master.cf without a
    warning (an unknown or misspelt parameter is reported as "unused parameter")."""
    if not have("postconf"):
        pytest.skip("postconf is not installed (Debian package postfix)")
    for name in ("main.cf", "master.cf"):
        shutil.copy2(DEPLOY / "postfix" / name, tmp_path / name)
    postconf = program_path("postconf")
    main = run([postconf, "-c", str(tmp_path), "-n"], timeout=30)
    master = run([postconf, "-c", str(tmp_path), "-M"], timeout=30)
    assert "warning" not in main.stderr + master.stderr, main.stderr + master.stderr
    assert "relayhost = [mssgate]:2525" in main.stdout.splitlines()
    assert "mydestination =" in main.stdout.splitlines()
    services = {tuple(line.split()[:2]) for line in master.stdout.splitlines()}
    assert {("smtp", "inet"), ("submission", "inet"), ("postlog", "unix-dgram")} <= services


def test_compose_example_policy_is_valid_and_container_ready(tmp_path: Path) -> None:
    """The policy shipped with the compose file loads, listens on all addresses with
    client_networks, and has a metrics section on 0.0.0.0 (scraped by Prometheus)."""
    from mssgate.config import load_policy

    loaded = load_policy(str(DEPLOY / "mssgate" / "policy.yaml"))
    document = loaded.policy.document
    assert document.listen.host == "0.0.0.0"
    assert document.listen.client_networks
    assert document.metrics is not None and document.metrics.host == "0.0.0.0"
    for route in (document.routes.mssante, document.routes.ordinary):
        assert route.upstream is not None
        assert route.upstream.password_file is None or route.upstream.password_file.startswith(
            "/run/secrets/"
        )


def unit() -> configparser.ConfigParser:
    """deploy/mssgate.service as sections and keys (repeated keys joined)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "mssgate.service").read_text())
    return parser


def test_systemd_unit_is_hardened() -> None:
    service = unit()["Service"]
    assert service["ExecStart"].split()[:2] == [VENV_MSSGATE, "serve"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service.get("DynamicUser") == "yes" or service.get("User") == "mssgate"
    assert service["ProtectSystem"] == "strict"
    assert "/etc/mssgate" in service["ReadOnlyPaths"].split()
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["StateDirectory"] == "mssgate"
    # The listener is on 2525 (no port < 1024): no capability at all.
    assert service.get("CapabilityBoundingSet", "") == ""
    assert "AmbientCapabilities" not in service
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    if not have("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # verify resolves ExecStart: give it a stand-in executable at the real path's place.
    text = (DEPLOY / "mssgate.service").read_text().replace(VENV_MSSGATE, "/bin/true")
    (tmp_path / "mssgate.service").write_text(text)
    result = run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "mssgate.service")],
        timeout=60,
        check=False,
    )
    # verify exits 0 on unknown keys and bad values: it only says so, naming the file.
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "mssgate.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# =============================================================================================
# The image, built with podman from Debian's packages and the project's wheels


def _podman_reason() -> str | None:
    if not have("podman"):
        return "podman is not installed (scripts/system-deps.sh installs it)"
    if os.geteuid() != 0:
        return "podman with --storage-driver=vfs and chroot needs root here"
    if not have("chroot"):
        return "chroot is not installed"
    return None


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``podman --storage-driver=vfs ARGS``, bounded."""
    return run([*PODMAN, *args], timeout=timeout, check=check)


def dependency_wheels() -> Path:
    """The dependencies' wheels, built once per dependency list, Python and machine."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = sorted(project["dependencies"])
    key = hashlib.sha256(
        json.dumps([dependencies, sys.version_info[:2], platform.machine()]).encode()
    ).hexdigest()[:16]
    folder = CACHE / "wheels" / key
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run(
        [*PIP_WHEEL, "--wheel-dir", str(folder), *dependencies],
        timeout=600,
    )
    (folder / ".complete").write_text("\n".join(dependencies) + "\n")
    return folder


def mssgate_wheel(into: Path, scratch: Path) -> Path:
    """mssgate's own wheel, built from a copy of the sources (no build/ in the repo)."""
    src = scratch / "src"
    shutil.copytree(ROOT / "mssgate", src / "mssgate", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    run(
        [*PIP_WHEEL, "--no-deps", "--wheel-dir", str(into), str(src)],
        timeout=300,
    )
    (wheel,) = into.glob("mssgate-*.whl")
    return wheel


def ensure_base_image() -> float:
    """Make the bookworm base image unless podman has it; returns the seconds spent."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return 0.0
    if not have("debootstrap"):
        pytest.skip("debootstrap is not installed and the base image is not cached")
    began = time.monotonic()
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        run(
            [program_path("debootstrap"), *DEBOOTSTRAP, str(rootfs), DEBIAN_MIRROR],
            timeout=1200,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            run([*PODMAN, "import", "-", BASE_IMAGE], timeout=600, stdin=tar.stdout)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(timeout=60)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return time.monotonic() - began


@dataclass
class BuiltImage:
    """The built image and what it took."""

    tag: str
    base_seconds: float
    build_seconds: float
    context: Path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """Build the image once for the module; remove it afterwards (the base image stays)."""
    reason = _podman_reason()
    if reason:
        pytest.skip(reason)
    scratch = tmp_path_factory.mktemp("image")
    context = scratch / "context"
    wheels = context / "wheels"
    wheels.mkdir(parents=True)
    for wheel in dependency_wheels().glob("*.whl"):
        shutil.copy2(wheel, wheels / wheel.name)
    mssgate_wheel(wheels, scratch)
    (context / "deploy").mkdir()
    shutil.copy2(HEALTHCHECK, context / "deploy" / "healthcheck.py")
    shutil.copy2(ROOT / "Dockerfile", context / "Dockerfile")
    shutil.copy2(ROOT / ".dockerignore", context / ".dockerignore")
    (context / "secret-that-must-not-be-sent.txt").write_text("not for the image\n")
    base_seconds = ensure_base_image()
    began = time.monotonic()
    podman(
        "build",
        "--isolation=chroot",
        "--format=docker",  # the OCI format drops HEALTHCHECK
        "--pull=never",  # no registry: the base is local
        "--layers=false",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--tag",
        IMAGE,
        str(context),
        timeout=1200,
    )
    built = BuiltImage(IMAGE, base_seconds, time.monotonic() - began, context)
    print(f"\nbase image: {base_seconds:.1f}s (0: cached); build: {built.build_seconds:.1f}s")
    try:
        yield built
    finally:
        podman("rmi", "--force", IMAGE, check=False)


@dataclass
class Rootfs:
    """A created (never started) container's mounted filesystem."""

    container: str
    path: Path

    def chroot(
        self, *args: str, timeout: float = 60, user: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the image's filesystem (as uid 10001 unless ``user=False``)."""
        prefix = [program_path("chroot"), USERSPEC] if user else [program_path("chroot")]
        env = {"PATH": "/opt/mssgate/venv/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        return run([*prefix, str(self.path), *args], timeout=timeout, check=False, env=env)

    def put(self, inside: str, data: bytes | str, owner: int | None = None) -> None:
        """Write a file into the filesystem (owned by root unless ``owner``)."""
        target = self.path / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        target.write_bytes(data)
        target.chmod(0o644)
        if owner is not None:
            os.chown(target, owner, owner)


@pytest.fixture(scope="module")
def rootfs(image: BuiltImage) -> Iterator[Rootfs]:
    """``podman create`` + ``podman mount`` of the image; unmounted and removed by ID after."""
    name = f"mssgate-test-{uuid.uuid4().hex[:8]}"
    container = podman("create", "--name", name, image.tag).stdout.strip().splitlines()[-1]
    try:
        path = Path(podman("mount", container).stdout.strip())
        yield Rootfs(container, path)
    finally:
        podman("umount", container, check=False)
        podman("rm", "--force", container, check=False)
        assert podman("container", "exists", container, check=False).returncode != 0


def test_image_configuration(image: BuiltImage) -> None:
    (info,) = json.loads(podman("image", "inspect", image.tag).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == [VENV_MSSGATE]
    assert config["Cmd"] == ["serve", "--config", "/etc/mssgate/policy.yaml"]
    assert config["WorkingDir"] == "/var/lib/mssgate"
    assert set(config["Volumes"]) == {"/etc/mssgate", "/var/lib/mssgate"}
    assert set(config["ExposedPorts"]) == {"2525/tcp", "465/tcp", "9925/tcp"}
    health = info["Healthcheck"]
    assert health["Test"] == ["CMD", VENV_PYTHON, "/opt/mssgate/healthcheck.py"]
    assert health["Interval"] == 30 * 10**9 and health["Retries"] == 3
    assert "PYTHONUNBUFFERED=1" in config["Env"]


def test_image_has_the_venv_and_nothing_else_of_the_context(rootfs: Rootfs) -> None:
    root = rootfs.path
    assert (root / "opt/mssgate/venv/bin/mssgate").is_file()
    assert not (root / "wheels").exists()  # only in the builder stage
    assert not any(root.rglob("secret-that-must-not-be-sent.txt"))
    assert not (root / "opt/mssgate/venv/bin/pip").exists()
    passwd = (root / "etc/passwd").read_text()
    assert any(line.startswith("mssgate:x:10001:10001:") for line in passwd.splitlines())
    state = (root / "var/lib/mssgate").stat()
    assert (state.st_uid, state.st_gid) == (10001, 10001)
    version = rootfs.chroot(VENV_PYTHON, "-c", "import sys, mssgate; print(sys.version_info[:2])")
    assert version.returncode == 0 and version.stdout.strip() == "(3, 11)", version.stderr


def test_check_in_the_image(rootfs: Rootfs) -> None:
    rootfs.put("/etc/mssgate/policy.yaml", (ROOT / "config" / "cabinet-medical.yaml").read_text())
    result = rootfs.chroot(VENV_MSSGATE, "check", "/etc/mssgate/policy.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("politique valide : /etc/mssgate/policy.yaml")

    bad = policy_yaml().replace(
        "  hostname: mssgate.test\n", "  hostname: mssgate.test\n  prot: 25\n"
    )
    rootfs.put("/etc/mssgate/bad.yaml", bad)
    result = rootfs.chroot(VENV_MSSGATE, "check", "/etc/mssgate/bad.yaml")
    assert result.returncode == 1
    assert "/etc/mssgate/bad.yaml:" in result.stderr and "listen.prot" in result.stderr


def test_explain_in_the_image(rootfs: Rootfs) -> None:
    rootfs.put("/etc/mssgate/policy.yaml", policy_yaml())
    rootfs.put("/tmp/ordinary.eml", message("dr.martin@cabinet-gare.fr", "ami@gmail.com"))
    result = rootfs.chroot(
        VENV_MSSGATE,
        "explain",
        "--config",
        "/etc/mssgate/policy.yaml",
        "--mail-from",
        "dr.martin@cabinet-gare.fr",
        "--rcpt",
        "ami@gmail.com",
        "/tmp/ordinary.eml",
        "--json",
        "--output",
        "/var/lib/mssgate/relayed.eml",  # the working directory is the user's
    )
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert (decision["action"], decision["route"], decision["smtp_code"]) == (
        "accept",
        "ordinary",
        250,
    )
    assert decision["signature_added"] is True
    relayed = (rootfs.path / "var/lib/mssgate/relayed.eml").read_bytes()
    assert b"X-MSSGate-Signature: added" in relayed and BAL.encode() in relayed

    rootfs.put("/tmp/mixed.eml", message(BAL, f"{CONFRERE}, {OUTLOOK}"))
    result = rootfs.chroot(
        VENV_MSSGATE,
        "explain",
        "--config",
        "/etc/mssgate/policy.yaml",
        "--mail-from",
        BAL,
        "--rcpt",
        CONFRERE,
        "--rcpt",
        OUTLOOK,
        "/tmp/mixed.eml",
        "--json",
    )
    assert result.returncode == 1, result.stderr
    decision = json.loads(result.stdout)
    assert (decision["action"], decision["smtp_code"]) == ("reject", 550)
    assert decision["rule"] == "mixed_recipients"
    assert "Rien n'a ete envoye" in decision["reply"] or "Rien n'a été envoyé" in decision["reply"]


def test_serve_from_the_image_and_its_health_check(rootfs: Rootfs) -> None:
    """``mssgate serve`` from the image's filesystem as uid 10001 on a loopback port (a chroot,
    not a container: same network), the image's health check against it, a message through."""
    port = free_port()
    policy = f"""
version: 1
listen: {{host: 127.0.0.1, port: {port}, hostname: mssgate.image.test}}
routes:
  mssante: {{outbox: /var/lib/mssgate/outbox/mssante}}
  ordinary: {{outbox: /var/lib/mssgate/outbox/ordinary}}
"""
    rootfs.put("/etc/mssgate/policy.yaml", policy)
    env = {"PATH": "/opt/mssgate/venv/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [program_path("chroot"), USERSPEC, str(rootfs.path), VENV_MSSGATE, *SERVE],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd="/",
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 1):
                break
            assert proc.poll() is None, proc.communicate(timeout=5)[0]
            time.sleep(0.1)
        health = rootfs.chroot(VENV_PYTHON, "/opt/mssgate/healthcheck.py")
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.strip().startswith(f"healthy: smtp 127.0.0.1:{port}: 220 ")

        with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
            client.sendmail(
                "dr.martin@cabinet-gare.fr",
                ["ami@gmail.com"],
                message("dr.martin@cabinet-gare.fr", "ami@gmail.com"),
            )
        outbox = rootfs.path / "var/lib/mssgate/outbox/ordinary"
        (written,) = list(outbox.glob("*.eml"))
        assert written.stat().st_uid == 10001
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=20)[0].decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate(timeout=10)[0].decode("utf-8", "replace")
    assert proc.returncode == 0, output
    assert f"mssgate écoute sur 127.0.0.1:{port}" in output and "mssgate arrêté" in output
    health = rootfs.chroot(VENV_PYTHON, "/opt/mssgate/healthcheck.py")
    assert health.returncode == 1 and health.stdout.startswith("unhealthy: smtp")
