"""Strict JSON bodies: duplicate keys anywhere are refused, whatever the fast path skips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.api import jsonbody

DUPLICATES = [
    b'{"a": 1, "a": 2}',
    b'{"a": 1, "a": 1}',
    b'{"x": {"a": 1, "\\u0061": 2}}',
    b'[{"ok": 1}, {"a": 1 , "a"\n:2}]',
    b'{"x": [[{"b": {"c": 0, "c": 0}}]]}',
    b'{"s": "a:b:c:d", "a": 1, "a": 2}',
    b'{"s": "\\u003a", "a": 1, "a": 2}',  # the escaped colon hides one of the key's
    b'{"k:": {"x": ":", "x": ":"}}',
]


@pytest.mark.parametrize("body", DUPLICATES)
def test_a_key_twice_in_one_object_is_refused(body):
    with pytest.raises(jsonbody.InvalidJson):
        jsonbody.loads(body)


@pytest.mark.parametrize(
    "body",
    [b'{"a": {"a": {"a": 1}}}', b'[{"a": 1}, {"a": 2}]', b'{"t": "10:30", "u": "\\":"}', b"3"],
)
def test_the_same_key_in_different_objects_is_fine(body):
    assert jsonbody.loads(body) == json.loads(body)


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": NaN}', b'"\xff"', b'{"a": "\\ud800"}'])
def test_not_json_is_refused(body):
    with pytest.raises(jsonbody.InvalidJson):
        jsonbody.loads(body)


def test_nesting_deeper_than_the_stdlib_parser_takes_is_refused_not_crashed():
    deep = b'{"a": ' * 1000 + b'{"b": 1, "b": 2}' + b"}" * 1000  # the slow parse's job
    with pytest.raises(jsonbody.InvalidJson, match="nested too deeply"):
        jsonbody.loads(deep)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(st.tuples(st.sampled_from('ab:"'), inner), max_size=4)
    ),
    max_leaves=12,
)


def _encode(value) -> str:
    """JSON text; lists of pairs become objects, possibly naming a key twice."""
    if isinstance(value, list) and value and all(isinstance(p, tuple) for p in value):
        return "{" + ", ".join(f"{json.dumps(k)}: {_encode(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_encode(v) for v in value) + "]"
    return json.dumps(value)


def _has_duplicates(value) -> bool:
    if isinstance(value, list) and value and all(isinstance(p, tuple) for p in value):
        keys = [k for k, _ in value]
        return len(set(keys)) < len(keys) or any(_has_duplicates(v) for _, v in value)
    if isinstance(value, list):
        return any(_has_duplicates(v) for v in value)
    return False


@given(json_values)
def test_refused_exactly_when_some_object_names_a_key_twice(value):
    text = _encode(value).encode()
    if _has_duplicates(value):
        with pytest.raises(jsonbody.InvalidJson):
            jsonbody.loads(text)
    else:
        assert jsonbody.loads(text) == json.loads(text)


def test_nesting_deeper_than_orjson_writes_back_still_finds_duplicates():
    inner = b'{"b": 1, "b": 2}'
    with pytest.raises(jsonbody.InvalidJson, match="more than once"):
        jsonbody.loads(b'{"a": ' * 300 + inner + b"}" * 300)
    assert jsonbody.loads(b'{"a": ' * 300 + b'{"b": 1}' + b"}" * 300)
