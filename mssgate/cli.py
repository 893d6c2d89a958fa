"""The ``mssgate`` command: serve, check a policy, explain a decision."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from mssgate.auth import hash_password
from mssgate.config import ConfigError, LoadedPolicy, load_policy
from mssgate.decide import decide
from mssgate.memory import settle_memory
from mssgate.model import Envelope
from mssgate.report_cli import add_report_parser
from mssgate.schema import PolicyDocument
from mssgate.service import Service
from mssgate.texts import smtp_reply

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


def _load(path: str | None) -> LoadedPolicy:
    loaded = load_policy(path)
    for warning in loaded.warnings:
        print(f"attention : {warning}", file=sys.stderr)
    return loaded


def _print_errors(exc: ConfigError) -> None:
    print("politique refusée :", file=sys.stderr)
    for line in exc.errors:
        print(f"  {line}", file=sys.stderr)


async def _serve(
    loaded: LoadedPolicy, path: str | None, host: str | None, port: int | None
) -> None:
    service = Service(loaded, path, host=host, port=port)
    gateway = service.gateway
    await service.start()
    print(
        f"mssgate écoute sur {gateway.host}:{gateway.port} (politique : {loaded.source})",
        flush=True,
    )
    if gateway.implicit_port is not None:
        print(f"  TLS implicite sur {gateway.host}:{gateway.implicit_port}", flush=True)
    if service.metrics_server is not None:
        ms = service.metrics_server
        print(f"  métriques : http://{ms.host}:{ms.port}/metrics", flush=True)
    for route, config in loaded.policy.route_configs().items():
        if config.outbox is not None:
            target = f"dépôt {config.outbox}"
        else:
            assert config.upstream is not None
            target = f"{config.upstream.host}:{config.upstream.port} ({config.upstream.tls})"
        print(f"  route {route.value} -> {target}", flush=True)
    settle_memory()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        # SIGHUP: reload the policy (refused and logged when invalid; the old one stays).
        loop.add_signal_handler(signal.SIGHUP, service.reload)
    try:
        await stop.wait()
    finally:
        await service.stop()
        print("mssgate arrêté", flush=True)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the service on uvloop when it is installed (``pip install mssgate[fast]``)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_loop(_serve(_load(args.config), args.config, args.host, args.port))
    except ConfigError as exc:
        _print_errors(exc)
        return EXIT_ERROR
    except (ValueError, OSError) as exc:
        print(f"mssgate ne peut pas démarrer : {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a policy file; print a summary or every error with its file and line."""
    try:
        loaded = _load(args.file)
    except ConfigError as exc:
        _print_errors(exc)
        return EXIT_REFUSED
    doc = loaded.policy.document
    national = loaded.policy.domains.national
    print(
        f"politique valide : {loaded.source} — {len(doc.people)} personne(s), "
        f"{len(doc.shared_bals)} BAL partagée(s), {len(loaded.policy.profiles)} adresse(s) "
        f"signée(s), {len(doc.redirects)} redirection(s), {len(doc.users)} compte(s) SMTP"
        + (", TLS" if doc.listen.tls else "")
        + (", vérification DNS" if doc.dns_check and doc.dns_check.enabled else "")
        + (f", liste nationale : {len(national)} domaines" if national is not None else "")
    )
    return EXIT_OK


def explain_result(loaded: LoadedPolicy, envelope: Envelope, raw: bytes) -> dict[str, Any]:
    """The decision for one message as a JSON-ready dictionary."""
    policy = loaded.policy
    decision = decide(policy, envelope, raw)
    routes = [d.route.value for d in decision.deliveries]
    return {
        "action": decision.action.value,
        "smtp_code": decision.smtp_code,
        "enhanced_code": decision.enhanced_code,
        "rule": decision.rule,
        "route": "+".join(routes) if routes else None,
        "reply": smtp_reply(
            decision.smtp_code, decision.enhanced_code, decision.reply, utf8=envelope.smtputf8
        ),
        "signature_added": decision.signature_added,
        "deliveries": [
            {
                "route": d.route.value,
                "recipients": list(d.recipients),
                "signature_added": d.signature_added,
                "size": len(d.message),
            }
            for d in decision.deliveries
        ],
        "recipients": [
            {
                "address": c.address,
                "class": c.kind.value,
                "reason": c.reason.value if c.reason else None,
                "suggestion": c.suggestion,
            }
            for c in (policy.classify(r) for r in envelope.rcpt_tos)
        ],
        "notes": list(decision.notes),
        "_decision": decision,
    }


def cmd_explain(args: argparse.Namespace) -> int:
    """Print the decision for a message, without any network; optionally write the result."""
    try:
        loaded = _load(args.config)
    except ConfigError as exc:
        _print_errors(exc)
        return EXIT_ERROR
    try:
        raw = Path(args.message).read_bytes() if args.message != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        print(f"message illisible : {exc}", file=sys.stderr)
        return EXIT_ERROR
    options = ("SMTPUTF8",) if args.smtputf8 else ()
    envelope = Envelope(mail_from=args.mail_from, rcpt_tos=tuple(args.rcpt), mail_options=options)
    result = explain_result(loaded, envelope, raw)
    decision = result.pop("_decision")
    if args.output:
        out = decision.deliveries[-1].message if decision.deliveries else raw
        Path(args.output).write_bytes(out)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(f"décision : {result['action']} ({result['reply']})")
        if result["rule"]:
            print(f"règle : {result['rule']}")
        for d in result["deliveries"]:
            sig = " + signature" if d["signature_added"] else ""
            print(f"route {d['route']}{sig} : {', '.join(d['recipients'])}")
        for c in result["recipients"]:
            extra = (
                f" ({c['reason']}; vouliez-vous dire {c['suggestion']} ?)" if c["reason"] else ""
            )
            print(f"  {c['address']} : {c['class']}{extra}")
        for note in result["notes"]:
            print(f"  note : {note}")
    return EXIT_OK if result["action"] == "accept" else EXIT_REFUSED


def policy_json_schema() -> str:
    """The policy file's JSON Schema (for editors: completion and validation)."""
    schema = PolicyDocument.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Politique mssgate"
    return json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the policy's JSON Schema."""
    sys.stdout.write(policy_json_schema())
    return EXIT_OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print the argon2 hash of a password read from the terminal (or one line of stdin)."""
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Mot de passe : ")
        if getpass.getpass("Confirmation : ") != password:
            print("les deux saisies diffèrent", file=sys.stderr)
            return EXIT_ERROR
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("mot de passe trop court (8 caractères au moins)", file=sys.stderr)
        return EXIT_ERROR
    print(hash_password(password))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mssgate",
        description="Relais SMTP filtrant : garde les données de santé dans l'espace MSSanté.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="lancer la passerelle")
    serve.add_argument("--config", help="politique YAML (défaut : démo intégrée)")
    serve.add_argument("--host", help="adresse d'écoute (remplace listen.host)")
    serve.add_argument("--port", type=int, help="port d'écoute (remplace listen.port)")
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="valider une politique")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="expliquer la décision pour un message")
    explain.add_argument("--config", help="politique YAML (défaut : démo intégrée)")
    explain.add_argument("--mail-from", required=True)
    explain.add_argument("--rcpt", action="append", required=True)
    explain.add_argument("--smtputf8", action="store_true", help="le client a négocié SMTPUTF8")
    explain.add_argument("--json", action="store_true")
    explain.add_argument("--output", help="écrire le message tel qu'il serait relayé")
    explain.add_argument("message", help="fichier .eml (ou - pour l'entrée standard)")
    explain.set_defaults(func=cmd_explain)

    hashpw = sub.add_parser(
        "hash-password", help="hacher un mot de passe pour users[].password_hash"
    )
    hashpw.set_defaults(func=cmd_hash_password)

    add_report_parser(sub)

    schema = sub.add_parser("schema", help="afficher le schéma JSON de la politique")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok/accepted, 1 refused, 2 error)."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
