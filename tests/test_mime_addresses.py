"""The fast path of header address parsing agrees with the standard library's parser."""

from __future__ import annotations

from email.utils import getaddresses

from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.mime import _simple_addresses

LOCAL = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True)
DOMAIN = st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z]{2,6}){1,2}", fullmatch=True)
NAME = st.one_of(
    st.just(""),
    st.from_regex(r"[A-Za-zéèà' -]{1,20}", fullmatch=True),
    st.from_regex(r"=\?utf-8\?q\?[A-Za-z0-9=_]{1,20}\?=", fullmatch=True),
)


@st.composite
def address_list(draw: st.DrawFn) -> tuple[str, list[str]]:
    addresses = draw(st.lists(st.tuples(NAME, LOCAL, DOMAIN), min_size=1, max_size=5))
    items = []
    for name, local, domain in addresses:
        addr = f"{local}@{domain}"
        items.append(f"{name} <{addr}>" if name.strip() else addr)
    return ", ".join(items), [f"{local}@{domain}" for _, local, domain in addresses]


@settings(max_examples=300)
@given(address_list())
def test_fast_path_agrees_with_the_stdlib(case: tuple[str, list[str]]) -> None:
    value, expected = case
    fast = _simple_addresses(value)
    stdlib = [a for _, a in getaddresses([value]) if a]
    assert stdlib == expected
    assert fast is None or fast == stdlib


def test_complex_values_use_the_full_parser() -> None:
    assert _simple_addresses('"Dupont, Jean" <j@x.fr>') is None
    assert _simple_addresses("patients: a@x.fr, b@x.fr;") is None
    assert _simple_addresses("j@x.fr (Jean)") is None
    assert _simple_addresses("Jean <j@x.fr>, k@y.fr") == ["j@x.fr", "k@y.fr"]
