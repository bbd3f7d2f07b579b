"""The signer and the verifier (contract section 2), pure: examples, then properties."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from service.auth import signing
from tests.helpers import PROPERTY


def test_string_to_sign_is_eight_lines_without_a_final_newline():
    text = signing.string_to_sign(
        method="post",
        path="/xcloud/v1/customers",
        query="a=1&b=%20",
        content_md5="MD5==",
        content_type="application/json",
        timestamp="1700000000",
        nonce="nonce-1234567890abcdef",
        service_id="svc",
    )
    assert text == (
        "POST\n/xcloud/v1/customers\na=1&b=%20\nMD5==\napplication/json\n"
        "1700000000\nnonce-1234567890abcdef\nsvc"
    )


def test_signature_is_standard_base64_of_hmac_sha256():
    expected = base64.b64encode(
        hmac.new(b"s3cret", b"line1\nline2", hashlib.sha256).digest()
    ).decode()
    assert signing.signature("s3cret", "line1\nline2") == expected
    assert len(expected) == 44 and expected.endswith("=")


def test_content_md5_of_known_bodies():
    assert signing.content_md5(b"") == "1B2M2Y8AsgTpgAmY7PhCfg=="
    assert signing.content_md5(b"hello") == "XUFAKrxLKna5cZ2REBfFkg=="


def sign(**kw):
    args = dict(
        service_id="svc",
        secret="s3cret",
        method="POST",
        path_and_query="/xcloud/v1/customers?q=1",
        body=b'{"a":1}',
        content_type="application/json",
        timestamp=1_700_000_000,
        nonce="nonce-1234567890abcdef",
    )
    args.update(kw)
    return signing.sign_request(**args)


def verify(
    headers,
    *,
    secret=b"s3cret",
    body=b'{"a":1}',
    now=1_700_000_000,
    method="POST",
    path="/xcloud/v1/customers",
    query="q=1",
    content_type="application/json",
):
    req = signing.parse_headers(CIMultiDict(headers), has_body=bool(body))
    signing.check_fresh(req, now)
    signing.check_signature(
        req, secret, method=method, path=path, query=query, content_type=content_type
    )
    signing.check_content_md5(req, body)
    return req


def test_round_trip():
    req = verify(sign())
    assert (req.service_id, req.nonce, req.timestamp) == (
        "svc",
        "nonce-1234567890abcdef",
        1_700_000_000,
    )


def test_no_body_means_no_content_md5():
    headers = sign(method="GET", body=None, content_type="")
    assert "Content-MD5" not in headers
    verify(headers, body=b"", method="GET", content_type="")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"secret": b"other"}, "INVALID_SIGNATURE"),
        ({"secret": None}, "INVALID_SIGNATURE"),
        ({"method": "PUT"}, "INVALID_SIGNATURE"),
        ({"query": ""}, "INVALID_SIGNATURE"),
        ({"content_type": "text/plain"}, "INVALID_SIGNATURE"),
        ({"now": 1_700_000_301}, "STALE_REQUEST"),
        ({"now": 1_699_999_699}, "STALE_REQUEST"),
        ({"body": b'{"a":2}'}, "CONTENT_MD5_MISMATCH"),
    ],
)
def test_each_failure_has_its_code(change, code):
    with pytest.raises(signing.AuthError) as err:
        verify(sign(), **change)
    assert err.value.code == code


def test_window_edges_pass():
    verify(sign(), now=1_700_000_300)
    verify(sign(), now=1_699_999_700)


def test_body_without_content_md5_is_auth_required():
    headers = sign()
    del headers["Content-MD5"]
    with pytest.raises(signing.AuthError) as err:
        signing.parse_headers(CIMultiDict(headers), has_body=True)
    assert (err.value.status, err.value.code) == (401, "AUTH_REQUIRED")


def test_nonces_are_fresh_and_well_formed():
    nonces = {signing.new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000
    assert all(signing._NONCE.fullmatch(n) for n in nonces)


def test_the_timestamp_is_signed_as_sent():
    headers = sign()
    padded = dict(headers, **{signing.TIMESTAMP_HEADER: "0" + headers[signing.TIMESTAMP_HEADER]})
    with pytest.raises(signing.AuthError) as err:
        verify(padded)  # same number, other text: not what was signed
    assert err.value.code == "INVALID_SIGNATURE"
    to_sign = signing.string_to_sign(
        method="POST",
        path="/xcloud/v1/customers",
        query="q=1",
        content_md5=headers["Content-MD5"],
        content_type="application/json",
        timestamp="01700000000",
        nonce="nonce-1234567890abcdef",
        service_id="svc",
    )
    padded["Authorization"] = f"HMAC-SHA256 svc:{signing.signature('s3cret', to_sign)}"
    assert verify(padded).timestamp == 1_700_000_000


# --- properties: what is signed verifies, any change does not --------------------------
# Property tests, no I/O: the HMAC signer against the verifier (contract section 2).
# Derandomised, without an example database: a run is the same everywhere.


PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
# st.text over an alphabet, not st.from_regex: the same strings, generated several times faster.
methods = st.text(st.sampled_from(string.ascii_uppercase), min_size=1, max_size=10)
# The path and query exactly as sent: printable ASCII, percent-encoding left as it is.
paths = st.text(PRINTABLE.filter(lambda c: c not in "?#"), max_size=60).map(lambda p: "/" + p)
queries = st.text(PRINTABLE.filter(lambda c: c != "#"), max_size=60)
bodies = st.binary(max_size=300)
content_types = st.one_of(
    st.just(""),
    st.just("application/json"),
    st.just("application/json; charset=utf-8"),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40).map(
        str.strip
    ),
)
_ID_CHARS = st.sampled_from(string.ascii_letters + string.digits + "._-")
service_ids = st.text(_ID_CHARS, min_size=1, max_size=64)
secret_texts = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=64)
timestamps = st.integers(min_value=0, max_value=10**12 - 1)
nonces = st.text(
    st.sampled_from(string.ascii_letters + string.digits + "_-"), min_size=16, max_size=64
)


@dataclass(frozen=True)
class Wire:
    """One request as the server receives it."""

    method: str
    path: str
    query: str
    headers: dict[str, str] = field(hash=False)
    body: bytes


@dataclass(frozen=True)
class Signed:
    wire: Wire
    secret: str
    timestamp: int


@st.composite
def signed_requests(draw: st.DrawFn) -> Signed:
    method, path, query = draw(methods), draw(paths), draw(queries)
    body, content_type = draw(bodies), draw(content_types)
    secret, timestamp = draw(secret_texts), draw(timestamps)
    headers = signing.sign_request(
        service_id=draw(service_ids),
        secret=secret,
        method=method,
        path_and_query=f"{path}?{query}" if query else path,
        body=body,
        content_type=content_type,
        timestamp=timestamp,
        nonce=draw(nonces),
    )
    return Signed(Wire(method, path, query, headers, body), secret, timestamp)


def receive(wire: Wire, secret: str | bytes | None, now: float) -> signing.SignedRequest:
    """The server's checks, in the server's order (service/api/app.py, auth_middleware)."""
    req = signing.parse_headers(CIMultiDict(wire.headers), has_body=bool(wire.body))
    signing.check_fresh(req, now)
    key = secret.encode("utf-8") if isinstance(secret, str) else secret  # stored as bytes
    signing.check_signature(
        req,
        key,
        method=wire.method,
        path=wire.path,
        query=wire.query,
        content_type=wire.headers.get("Content-Type", ""),
    )
    signing.check_content_md5(req, wire.body)
    return req


def rejected(wire: Wire, secret: str | bytes | None, now: float) -> tuple[int, str]:
    with pytest.raises(signing.AuthError) as err:
        receive(wire, secret, now)
    return err.value.status, err.value.code


def with_header(wire: Wire, name: str, value: str | None) -> Wire:
    headers = {k: v for k, v in wire.headers.items() if k != name}
    if value is not None:
        headers[name] = value
    return replace(wire, headers=headers)


def other(draw: st.DrawFn, strategy: st.SearchStrategy[Any], current: Any) -> Any:
    return draw(strategy.filter(lambda value: value != current))


@given(signed=signed_requests(), skew=st.integers(-signing.WINDOW_SECONDS, signing.WINDOW_SECONDS))
@PROPERTY
def test_what_is_signed_verifies(signed: Signed, skew: int) -> None:
    wire = signed.wire
    req = receive(wire, signed.secret, signed.timestamp + skew)
    assert req.timestamp == signed.timestamp
    assert ("Content-MD5" in wire.headers) == bool(wire.body)


@given(signed=signed_requests(), data=st.data())
@PROPERTY
@pytest.mark.parametrize(
    "element",
    ["method", "path", "query", "content-type", "content-md5", "timestamp", "nonce", "service id"],
)
def test_changing_a_signed_element_is_invalid_signature(
    signed: Signed, data: st.DataObject, element: str
) -> None:
    wire, ts = signed.wire, signed.timestamp
    draw = data.draw
    if element == "method":
        wire = replace(wire, method=other(draw, methods, wire.method))
    elif element == "path":
        wire = replace(wire, path=other(draw, paths, wire.path))
    elif element == "query":
        wire = replace(wire, query=other(draw, queries, wire.query))
    elif element == "content-type":
        current = wire.headers.get("Content-Type", "")
        new = other(draw, content_types, current)
        wire = with_header(wire, "Content-Type", new or None)
    elif element == "content-md5":  # another well-formed digest, or one where there was none
        current = wire.headers.get("Content-MD5")
        new = other(draw, bodies.map(signing.content_md5), current)
        wire = with_header(wire, "Content-MD5", new)
    elif element == "timestamp":  # still fresh at the server's clock: only the signature fails
        ts = other(draw, timestamps, ts)
        wire = with_header(wire, signing.TIMESTAMP_HEADER, str(ts))
    elif element == "nonce":
        new = other(draw, nonces, wire.headers[signing.NONCE_HEADER])
        wire = with_header(wire, signing.NONCE_HEADER, new)
    elif element == "service id":
        scheme, _, credential = wire.headers["Authorization"].partition(" ")
        service_id, _, sig = credential.partition(":")
        new = other(draw, service_ids, service_id)
        wire = with_header(wire, "Authorization", f"{scheme} {new}:{sig}")
    assert rejected(wire, signed.secret, ts) == (401, "INVALID_SIGNATURE")


@given(signed=signed_requests(), data=st.data())
@PROPERTY
def test_another_secret_or_an_unknown_service_is_invalid_signature(
    signed: Signed, data: st.DataObject
) -> None:
    secret = data.draw(st.none() | secret_texts.filter(lambda s: s != signed.secret))
    assert rejected(signed.wire, secret, signed.timestamp) == (401, "INVALID_SIGNATURE")


@given(signed=signed_requests(), data=st.data())
@PROPERTY
def test_changing_a_body_byte_is_content_md5_mismatch(signed: Signed, data: st.DataObject) -> None:
    body = signed.wire.body
    if body:
        i = data.draw(st.integers(0, len(body) - 1))
        flip = data.draw(st.integers(1, 255))
        tampered = body[:i] + bytes([body[i] ^ flip]) + body[i + 1 :]
        expected = (400, "CONTENT_MD5_MISMATCH")
    else:  # a body where none was signed: no Content-MD5 to go with it
        tampered = data.draw(st.binary(min_size=1, max_size=20))
        expected = (401, "AUTH_REQUIRED")
    wire = replace(signed.wire, body=tampered)
    assert rejected(wire, signed.secret, signed.timestamp) == expected


@given(
    signed=signed_requests(),
    late=st.integers(signing.WINDOW_SECONDS + 1, 10**9),
    sign=st.sampled_from([-1, 1]),
)
@PROPERTY
def test_outside_the_window_is_stale_request(signed: Signed, late: int, sign: int) -> None:
    now = signed.timestamp + sign * late
    assert rejected(signed.wire, signed.secret, now) == (401, "STALE_REQUEST")


@given(signed=signed_requests(), data=st.data())
@PROPERTY
def test_a_missing_auth_header_is_auth_required(signed: Signed, data: st.DataObject) -> None:
    names = ["Authorization", signing.TIMESTAMP_HEADER, signing.NONCE_HEADER]
    if signed.wire.body:
        names.append("Content-MD5")
    wire = with_header(signed.wire, data.draw(st.sampled_from(names)), None)
    assert rejected(wire, signed.secret, signed.timestamp) == (401, "AUTH_REQUIRED")
