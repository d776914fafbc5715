"""Canonical record bytes: deterministic, block style, and read back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from gitstate.store import codec
from gitstate.store.codec import RecordError

TRICKY_STRINGS = [
    "",
    " ",
    "no",
    "No",
    "yes",
    "on",
    "off",
    "null",
    "~",
    "true",
    "False",
    "1.10",
    "0x1f",
    "0o17",
    "1e3",
    "2026-01-01",
    "2026-11-23T07:00:00Z",
    "12:30",
    ".inf",
    ".nan",
    "-",
    "- item",
    "key: value",
    "a #comment",
    "#hash",
    "&anchor",
    "*alias",
    "!tag",
    "|",
    ">",
    "'single'",
    '"double"',
    "trailing ",
    " leading",
    "multi\nline\n",
    "tab\there",
    "unicode ✓ café",
    "\x7f\x85\u2028 odd",
    "@at",
    "`tick",
    "%percent",
    "{flow}",
    "[flow]",
    "a, b",
    "?",
    "back\\slash",
]


@pytest.mark.parametrize("text", TRICKY_STRINGS)
def test_tricky_strings_read_back_as_strings(text: str) -> None:
    record = {"schema_version": 1, "value": text, "list": [text], text or "empty": "key"}
    assert codec.decode(codec.encode(record)) == record


def test_layout_is_block_style_schema_version_first_keys_sorted() -> None:
    record = {
        "zeta": [1, {"b": None, "a": True}, [], {}],
        "schema_version": 2,
        "alpha": {"nested": {"deep": [["x", "y"], "z"]}, "empty": {}},
        "float": 1.5,
    }
    assert codec.encode(record).decode() == (
        "schema_version: 2\n"
        "alpha:\n"
        "  empty: {}\n"
        "  nested:\n"
        "    deep:\n"
        "    - - x\n"
        "      - y\n"
        "    - z\n"
        "float: 1.5\n"
        "zeta:\n"
        "- 1\n"
        "- a: true\n"
        "  b: null\n"
        "- []\n"
        "- {}\n"
    )
    assert codec.decode(codec.encode(record)) == record


def test_key_order_does_not_change_bytes() -> None:
    one = {"schema_version": 1, "b": {"y": 1, "x": 2}, "a": 3}
    two = {"a": 3, "b": {"x": 2, "y": 1}, "schema_version": 1}
    assert codec.encode(one) == codec.encode(two)


@pytest.mark.parametrize("version", [None, 0, -1, "1", True, 1.0])
def test_schema_version_must_be_positive_int(version: object) -> None:
    record = {"n": 1} if version is None else {"schema_version": version}
    with pytest.raises(RecordError, match="schema_version"):
        codec.encode(record, "gates/g/s.yaml")


@pytest.mark.parametrize(
    "value", [b"bytes", {1, 2}, object(), {1: "int key"}, "\ud800 lone surrogate"]
)
def test_unrepresentable_values_name_the_record(value: object) -> None:
    with pytest.raises(RecordError, match=r"gates/g/s\.yaml"):
        codec.encode({"schema_version": 1, "v": value}, "gates/g/s.yaml")


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"a: [1\n", "not valid YAML"),
        (b"- 1\n- 2\n", "not a YAML mapping"),
        (b"n: 1\n", "schema_version"),
        (b"schema_version: '1'\n", "schema_version"),
        (b"schema_version: 1\na: 1\na: 2\n", "not valid YAML"),
        (b"schema_version: 1\nx: \xc3\x28\n", "not valid YAML"),
    ],
)
def test_unreadable_records_name_the_file(data: bytes, detail: str) -> None:
    with pytest.raises(RecordError) as caught:
        codec.decode(data, "tickets/t1.yaml", "abc123")
    assert caught.value.path == "tickets/t1.yaml"
    assert detail in str(caught.value)
    assert "tickets/t1.yaml" in str(caught.value)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
)
_data = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=8), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8).filter(lambda key: key != "schema_version"), _data, max_size=6
    )
)
def test_any_plain_record_round_trips_through_ruamel(fields: dict) -> None:
    record = {"schema_version": 1, **fields}
    data = codec.encode(record)
    assert codec.decode(data) == record
    assert codec.encode(codec.decode(data)) == data


def _ruamel(data: bytes):
    return YAML(typ="safe").load(data)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8).filter(lambda key: key != "schema_version"), _data, max_size=6
    )
)
def test_fast_reader_agrees_with_ruamel_on_canonical_bytes(fields: dict) -> None:
    data = codec.encode({"schema_version": 1, **fields})
    fast = codec.read_canonical(data)
    assert fast is not None, data
    assert fast == _ruamel(data)


@pytest.mark.parametrize(
    "text",
    [
        "schema_version: 1\nname: 'single quoted'\n",
        "schema_version: 1  # a comment\n",
        "schema_version: 1\nitems: [1, 2]\n",
        "schema_version: 1\nmap: {a: 1}\n",
        "schema_version: 1\nnested:\n    deep: 4\n",
        "schema_version: 1\nwhen: 2026-01-01\n",
        'schema_version: 1\nesc: "\\x41\\e"\n',
        "schema_version: 1\nhex: 0x1f\n",
        "---\nschema_version: 1\n",
        "schema_version: 1\nlist:\n  - a\n  - b\n",
    ],
)
def test_hand_written_yaml_falls_back_to_ruamel(text: str) -> None:
    data = text.encode()
    assert codec.read_canonical(data) is None
    assert codec.decode(data) == _ruamel(data)
