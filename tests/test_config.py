"""Policy files: validation errors name the file, the line and the field; examples load."""

from __future__ import annotations

from pathlib import Path

import pytest

from mssgate.config import ConfigError, load_policy, load_policy_text
from tests.conftest import ROOT, policy_yaml

EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_policies_load(path: Path) -> None:
    loaded = load_policy(path)
    assert loaded.policy.document.version == 1


def test_demo_is_embedded_and_identical_to_config_demo() -> None:
    embedded = load_policy(None)
    assert (ROOT / "config" / "demo.yaml").read_text("utf-8") == (
        ROOT / "mssgate" / "data" / "demo.yaml"
    ).read_text("utf-8")
    assert embedded.policy.document.listen.port == 2525
    assert embedded.policy.document.routes.ordinary.outbox == "./mssgate-outbox/ordinary"


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_policy_text(text, "cabinet.yaml")
    return info.value.errors


def test_unknown_key_is_an_error_with_its_line() -> None:
    text = policy_yaml(extra="rules:\n  mixed_recipients:\n    enabeld: false\n")
    (error,) = _errors(text)
    line = text.splitlines().index("    enabeld: false") + 1
    assert error.startswith(f"cabinet.yaml:{line}: rules.mixed_recipients.enabeld:")
    assert "inconnue" in error


def test_duplicate_key_is_an_error() -> None:
    text = policy_yaml(extra="rules:\n  forwards: {enabled: true}\n  forwards: {enabled: false}\n")
    (error,) = _errors(text)
    assert "en double" in error and "forwards" in error


def test_unknown_template_variable_is_an_error() -> None:
    text = policy_yaml(extra="signature:\n  text: 'Ma BAL : {preferred_ball}'\n")
    (error,) = _errors(text)
    assert "signature.text" in error and "{preferred_ball}" in error


def test_redirect_to_an_ordinary_address_does_not_load() -> None:
    text = policy_yaml().replace(
        "to: cabinet.gare@cabinet.mssante.fr\n    kind: copy",
        "to: secretariat@outlook.fr\n    kind: absence",
    )
    (error,) = _errors(text)
    line = text.splitlines().index("    to: secretariat@outlook.fr") + 1
    assert error.startswith(f"cabinet.yaml:{line}: redirects.0.to:")
    assert "MSSanté" in error


def test_preferred_bal_must_be_mssante_with_a_suggestion() -> None:
    text = policy_yaml().replace(
        "preferred_bal: bruno.durand@medecin.mssante.fr",
        "preferred_bal: bruno.durand@medecin.mssanté.fr",
    )
    (error,) = _errors(text)
    assert "people.1.practices.0.preferred_bal" in error
    assert "bruno.durand@medecin.mssante.fr" in error


def test_open_relay_listener_does_not_load() -> None:
    text = policy_yaml().replace("host: 127.0.0.1\n  port: 0", "host: 0.0.0.0\n  port: 25")
    (error,) = _errors(text)
    assert "listen" in error and "relais ouvert" in error


def test_too_many_co_holders() -> None:
    people = "".join(f"  - {{id: p{i}, name: P{i}, rpps: '100000000{i:02d}'}}\n" for i in range(21))
    holders = ", ".join(f"p{i}" for i in range(21))
    text = policy_yaml().split("people:")[0] + (
        f"people:\n{people}shared_bals:\n  - address: c@cabinet.mssante.fr\n    kind: cabinet\n"
        f"    principal: p0\n    co_holders: [{holders}]\n"
    )
    (error,) = _errors(text)
    assert "20 au plus" in error


def test_upstream_timeout_must_end_before_the_client_timeout() -> None:
    text = policy_yaml().replace("client_timeout: 60", "client_timeout: 4")
    errors = _errors(text)
    assert any("client_timeout" in e for e in errors)


NATIONAL = """<?xml version="1.0" encoding="UTF-8"?>
<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">
<DateDeGeneration>2025-06-01T02:00:00</DateDeGeneration>
{domains}
</ListeBlancheMSSante>
"""


def _national(names: list[str]) -> str:
    return NATIONAL.format(
        domains="\n".join(
            f"<Domaine><Nom>{n}</Nom><Description>x</Description></Domaine>" for n in names
        )
    )


def test_national_list_keeps_the_last_good_copy(tmp_path: Path) -> None:
    names = [f"op{i}.mssante.fr" for i in range(20)] + [
        "medecin.mssante.fr",
        "cabinet.mssante.fr",
        "patient.mssante.fr",
    ]
    (tmp_path / "liste.xml").write_text(_national(names))
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(
        policy_yaml()
        + "domains:\n  national_list:\n    file: liste.xml\n    last_good: liste.last-good.xml\n"
    )
    first = load_policy(policy_file)
    assert first.policy.domains.national is not None
    assert len(first.policy.domains.national) == 23
    assert (tmp_path / "liste.last-good.xml").exists()
    # A truncated copy arrives: refused, the last good one stays in force.
    (tmp_path / "liste.xml").write_text(_national(names)[:300])
    second = load_policy(policy_file)
    assert second.policy.domains.national == first.policy.domains.national
    assert second.warnings and "refusée" in second.warnings[0]
    # A sharply shrunk copy: refused too.
    (tmp_path / "liste.xml").write_text(_national(names[:5]))
    third = load_policy(policy_file)
    assert third.policy.domains.national == first.policy.domains.national
    # With the list loaded, an unknown *.mssante.fr domain is refused as unknown.
    verdict = third.policy.classify("x@medecn.mssante.fr")
    assert verdict.kind.value == "invalid"


def test_national_list_broken_without_previous_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "liste.xml").write_text("<ListeBlancheMSSante><Domaine>")
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(policy_yaml() + "domains:\n  national_list: {file: liste.xml}\n")
    with pytest.raises(ConfigError):
        load_policy(policy_file)


def test_allow_list_file_extends_the_trust_space(tmp_path: Path) -> None:
    (tmp_path / "extra.txt").write_text(
        "# domaines ajoutés par l'informatique\nmessagerie.chu-exemple.fr\n"
    )
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(policy_yaml() + "domains:\n  allow_list_file: extra.txt\n")
    policy = load_policy(policy_file).policy
    assert policy.classify("dr.x@messagerie.chu-exemple.fr").kind.value == "mssante"


def test_committed_json_schema_is_up_to_date() -> None:
    """config/mssgate.schema.json (used by editors) is what `mssgate schema` prints."""
    from mssgate.cli import policy_json_schema

    committed = (ROOT / "config" / "mssgate.schema.json").read_text("utf-8")
    assert committed == policy_json_schema(), "run: mssgate schema > config/mssgate.schema.json"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_name_the_schema_for_editors(path: Path) -> None:
    first = path.read_text("utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=./mssgate.schema.json"


def test_examples_validate_against_the_json_schema() -> None:
    """The JSON Schema agrees with the validator on the example policies (no false alarm in
    an editor): every key of every example is known to the schema."""
    import json

    import yaml

    schema = json.loads((ROOT / "config" / "mssgate.schema.json").read_text("utf-8"))
    defs = schema["$defs"]

    def check(value: object, node: dict, where: str) -> None:
        if "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        for option in node.get("anyOf", []):
            if option.get("type") == "object" or "$ref" in option:
                node = defs[option["$ref"].split("/")[-1]] if "$ref" in option else option
        if isinstance(value, dict) and "properties" in node:
            for key, item in value.items():
                assert key in node["properties"], f"{where}.{key} unknown to the schema"
                check(item, node["properties"][key], f"{where}.{key}")
        elif isinstance(value, list) and "items" in node:
            for i, item in enumerate(value):
                check(item, node["items"], f"{where}.{i}")

    for path in EXAMPLES:
        check(yaml.safe_load(path.read_text("utf-8")), schema, path.name)
