"""The benchmark's policy: a clinic with 50 senders, written to ``bench/clinic.yaml``.

``python bench/clinic.py`` regenerates ``bench/clinic.yaml`` (deterministic: the same file every
time). The benchmark never edits that file: :func:`policy_for_run` loads it, points both routes
at the run's smtp-sink, raises the connection limits for the load generators and, when this
mssgate's schema knows it, sets ``listen.max_inflight_bytes``; the result is written to the
run's temporary folder.

The clinic: 40 professionals (doctors, midwives, nurses, physiotherapists; each with an RPPS,
most with a nominative BAL, each with one or two places of practice and one ordinary address
per place) and 10 secretaries (no RPPS; ordinary addresses); six organisational BALs with
co-holders and delegates, one applicative BAL; signatures on (the default), no DNS check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CLINIC_YAML = HERE / "clinic.yaml"
DOMAIN = "clinique-saint-roch.fr"
BAL_DOMAIN = "clinique-saint-roch.mssante.fr"
PLACEHOLDER_PORT = 10025

SERVICES = ["cardiologie", "chirurgie", "pediatrie", "radiologie", "maternite", "urgences"]
FIRST = [
    "Hélène", "Jean", "Claire", "Marc", "Sophie", "Paul", "Anne", "Luc", "Julie", "Éric",
    "Camille", "Louis", "Emma", "Hugo", "Léa", "Nicolas", "Chloé", "Thomas", "Inès", "Pierre",
    "Manon", "Antoine", "Sarah", "Julien", "Laura", "Maxime", "Alice", "Romain", "Zoé", "Bruno",
    "Lucie", "Olivier", "Marie", "Vincent", "Elsa", "François", "Nina", "Gilles", "Agathe",
    "Denis", "Margaux", "Yves", "Pauline", "Rémi", "Jeanne", "Samuel", "Céline", "Xavier",
    "Mathilde", "Arnaud",
]  # fmt: skip
LAST = [
    "Lambert", "Moreau", "Bernard", "Petit", "Robert", "Richard", "Durand", "Dubois", "Leroy",
    "Roux", "David", "Bertrand", "Morel", "Fournier", "Girard", "Bonnet", "Dupont", "Lambert",
    "Fontaine", "Rousseau", "Vincent", "Muller", "Lefèvre", "Faure", "André", "Mercier",
    "Blanc", "Guérin", "Boyer", "Garnier", "Chevalier", "François", "Legrand", "Gauthier",
    "Garcia", "Perrin", "Robin", "Clément", "Morin", "Nicolas", "Henry", "Roussel", "Mathieu",
    "Gautier", "Masson", "Marchand", "Duval", "Denis", "Dumont", "Marie",
]  # fmt: skip
TITLES = ["Dr", "Dr", "Dr", "Dr", "Mme la sage-femme", "IDE", "Kiné"]


def _ascii(text: str) -> str:
    table = str.maketrans("éèêëàâîïôöùûüçÉ", "eeeeaaiioouuucE")
    return text.translate(table).lower().replace(" ", "-")


def clinic_document() -> dict[str, Any]:
    """The policy as a plain YAML document (routes on the placeholder port)."""
    people: list[dict[str, Any]] = []
    holders: dict[str, list[str]] = {s: [] for s in SERVICES}
    delegates: dict[str, list[str]] = {s: [] for s in SERVICES}
    for i in range(50):
        first, last = FIRST[i], LAST[i]
        pid = f"{_ascii(first)}.{_ascii(last)}.{i:02d}"
        service = SERVICES[i % len(SERVICES)]
        local = f"{_ascii(first)[0]}.{_ascii(last)}{i:02d}"
        place = f"Clinique Saint-Roch — {service}"
        bal = f"{service}@{BAL_DOMAIN}"
        if i < 40:
            title = TITLES[i % len(TITLES)]
            person: dict[str, Any] = {
                "id": pid,
                "name": f"{title} {first} {last}",
                "rpps": f"10{i:09d}",
            }
            if i % 4 != 3:
                person["bals"] = [f"{_ascii(first)}.{_ascii(last)}{i:02d}@medecin.mssante.fr"]
            practices = [{"place": place, "preferred_bal": bal, "addresses": [f"{local}@{DOMAIN}"]}]
            if i % 5 == 0:
                practices.append(
                    {
                        "place": f"Cabinet de ville de {first} {last}",
                        "preferred_bal": person.get("bals", [bal])[0],
                        "addresses": [f"{local}.cabinet@orange.fr"],
                    }
                )
            person["practices"] = practices
            if len(holders[service]) < 4:
                holders[service].append(pid)
        else:
            person = {
                "id": pid,
                "name": f"Secrétariat {service} ({first} {last})",
                "practices": [
                    {"place": place, "preferred_bal": bal, "addresses": [f"{local}@{DOMAIN}"]}
                ],
            }
            delegates[service].append(pid)
        people.append(person)
    shared = [
        {
            "address": f"{service}@{BAL_DOMAIN}",
            "kind": "organisational",
            "place": f"Clinique Saint-Roch — {service}",
            "principal": holders[service][0],
            "co_holders": holders[service],
            "delegates": delegates[service],
            "addresses": [f"secretariat.{service}@{DOMAIN}"],
        }
        for service in SERVICES
    ]
    shared.append(
        {
            "address": f"noreply-resultats@{BAL_DOMAIN}",
            "kind": "applicative",
            "place": "Clinique Saint-Roch — laboratoire",
        }
    )
    upstream = {"host": "127.0.0.1", "port": PLACEHOLDER_PORT, "tls": "none", "timeout": 120}
    return {
        "version": 1,
        "listen": {
            "host": "127.0.0.1",
            "port": 2525,
            "hostname": "mssgate.clinique-saint-roch.fr",
            "max_message_size": 64 * 1024 * 1024,
            "max_recipients": 50,
        },
        "routes": {"mssante": {"upstream": dict(upstream)}, "ordinary": {"upstream": upstream}},
        "people": people,
        "shared_bals": shared,
        "redirects": [
            {
                "from": f"urgences@{BAL_DOMAIN}",
                "to": f"cardiologie@{BAL_DOMAIN}",
                "kind": "filter",
            }
        ],
        "signature": {"enabled": True},
    }


def write_clinic_yaml(path: Path = CLINIC_YAML) -> None:
    """Write the committed policy file."""
    header = (
        "# Benchmark policy (generated by `python bench/clinic.py`; do not edit by hand).\n"
        "# Clinique Saint-Roch: 50 senders, six organisational BALs with co-holders and\n"
        "# delegates, signatures on, no DNS check. bench.py points both routes at its\n"
        "# smtp-sink (the port below is a placeholder) and raises the connection limits.\n"
    )
    body = yaml.safe_dump(clinic_document(), allow_unicode=True, sort_keys=False, width=100)
    path.write_text(header + body, encoding="utf-8")


def policy_for_run(
    sink_port: int, *, inflight_bytes: int | None, known_listen_keys: set[str]
) -> dict[str, Any]:
    """``clinic.yaml`` adapted to one run: routes at the sink, limits for the load.

    ``listen.max_inflight_bytes`` is set only when the installed mssgate knows the key
    (``known_listen_keys``): the benchmark works before and after that key exists.
    """
    doc: dict[str, Any] = yaml.safe_load(CLINIC_YAML.read_text(encoding="utf-8"))
    for route in doc["routes"].values():
        route["upstream"]["port"] = sink_port
    listen = doc["listen"]
    # The load generators open up to 100 sessions from 127.0.0.1 at once (memory-budget run).
    listen["max_connections"] = 400
    listen["max_connections_per_client"] = 400
    if inflight_bytes is not None and "max_inflight_bytes" in known_listen_keys:
        listen["max_inflight_bytes"] = inflight_bytes
    return doc


def ordinary_sender() -> str:
    """An ordinary address of a known sender (gets the signature of its place)."""
    return f"h.lambert00@{DOMAIN}"


def mssante_sender() -> str:
    """A shared organisational BAL (relayed byte for byte to MSSanté recipients)."""
    return f"cardiologie@{BAL_DOMAIN}"


if __name__ == "__main__":
    write_clinic_yaml()
    print(f"wrote {CLINIC_YAML}")
