"""Request bodies as JSON, strictly: a key named twice in one object is an error.

orjson (the fast parser) keeps the last of duplicate keys silently. Finding them costs
a second, slower parse, so it runs only when it could find something: when the body
holds more `:` bytes than the parsed document holds keys. Outside strings a `:` follows
each key and nothing else, so the count can only over-estimate (a `:` inside a string
costs the slow parse), never miss a duplicate. Measured on the contract's example body:
orjson alone 2.8 us, with this check 8 us, the stdlib parser with a pairs hook 17 us.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class InvalidJson(ValueError):
    pass


def loads(body: bytes) -> Any:
    """The parsed document; InvalidJson when it is not JSON or names a key twice."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:  # also bad UTF-8, lone surrogates, too deep
        raise InvalidJson("The body is not valid JSON") from None
    if body.count(b":") > _count_keys(doc):
        _check_duplicates(body)
    return doc


def _count_keys(doc: Any) -> int:
    count, stack = 0, [doc]
    while stack:  # not recursive: orjson allows 1024 levels, Python's stack fewer
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            count += len(node)
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
    return count


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidJson(f"The key {key[:64]!r} appears more than once in one object")
            seen.add(key)
    return obj


def _check_duplicates(body: bytes) -> None:
    try:
        json.loads(body, object_pairs_hook=_no_duplicates)
    except RecursionError:  # orjson took it; the stdlib parser's stack is shorter
        raise InvalidJson("The body is nested too deeply") from None
