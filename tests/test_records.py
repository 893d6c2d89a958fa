"""The core's records that write their ``__init__`` out (the one :mod:`dataclasses` generates
runs interpreted in the compiled build, ten times slower) take the same arguments as the
generated one, set each field from its own argument, and stay frozen, equal and hashable."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

import pytest

from mssgate.mime import Params

CORE_MODULES = (
    "mssgate.model",
    "mssgate.mime",
    "mssgate.transaction",
    "mssgate.decide",
    "mssgate.commands",
)


def _records() -> list[type]:
    found = []
    for name in CORE_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and value.__module__ == name
                and dataclasses.is_dataclass(value)
                and "__create_fn__" not in getattr(value.__init__, "__qualname__", "")
            ):
                found.append(value)
    return found


RECORDS = _records()


def _compiled(cls: type) -> bool:
    module = importlib.import_module(cls.__module__)
    return not (module.__file__ or "").endswith(".py")


def test_the_hot_records_write_their_init_out() -> None:
    names = {cls.__name__ for cls in RECORDS}
    assert {"Part", "ParsedMessage", "Envelope", "Decision", "Transaction", "Draft"} <= names


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_written_init_takes_the_generated_arguments(cls: type) -> None:
    if _compiled(cls):
        pytest.skip("a compiled __init__ shows no signature: the plain run checks this")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params] == [f.name for f in fields]
    for param, f in zip(params, fields, strict=True):
        assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        if f.default is not dataclasses.MISSING:
            assert param.default == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert param.default is None, f.name  # (None: a fresh one, from the factory)
        else:
            assert param.default is inspect.Parameter.empty, f.name


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_written_init_sets_each_field_from_its_argument(cls: type) -> None:
    if _compiled(cls):
        pytest.skip("a compiled record checks its attributes' types: the plain run checks this")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    marks = {f.name: object() for f in fields}
    record: Any = cls(**marks)
    for f in fields:
        assert getattr(record, f.name) is marks[f.name], f.name
    required = {
        f.name: marks[f.name]
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    positional: Any = cls(*required.values())
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert getattr(positional, f.name) == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            made = getattr(positional, f.name)
            assert made == f.default_factory()
            assert made is not getattr(cls(*required.values()), f.name)  # (one each)


def test_records_stay_frozen_equal_and_hashable() -> None:
    from mssgate.mime import parse_message
    from mssgate.model import Envelope

    envelope = Envelope("a@b.fr", ("c@d.fr",))
    assert envelope == Envelope(mail_from="a@b.fr", rcpt_tos=("c@d.fr",))
    assert hash(envelope) == hash(Envelope("a@b.fr", ("c@d.fr",)))
    assert dataclasses.replace(envelope, dot_free=True).dot_free is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        envelope.mail_from = "x@y.fr"  # type: ignore[misc]
    raw = b"From: a@b.fr\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour\r\n"
    message = parse_message(raw)
    assert message == parse_message(raw)
    assert message.root.first_values["from"] == "a@b.fr"
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.root.body_start = 0  # type: ignore[misc]


def test_params_get_and_in_as_a_mapping() -> None:
    params = Params([("charset", "utf-8"), ("charset", "latin-1"), ("format", "flowed")])
    assert params.get("charset") == "utf-8"
    assert params.get("boundary") is None
    assert params.get("boundary", "") == ""
    assert "format" in params and "name" not in params and 3 not in params
    assert dict(params) == {"charset": "utf-8", "format": "flowed"}


def test_domain_sets_hash_as_generated() -> None:
    from mssgate.classify import DomainSets

    sets = DomainSets(frozenset({"a.mssante.fr"}), None, frozenset({"masante.fr"}))
    fields = tuple(getattr(sets, f.name) for f in dataclasses.fields(DomainSets))
    assert hash(sets) == hash(fields)
    assert sets == DomainSets(frozenset({"a.mssante.fr"}), None, frozenset({"masante.fr"}))
