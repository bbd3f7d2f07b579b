"""The signer and the verifier, pure."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import CIMultiDict

from service.auth import signing


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
