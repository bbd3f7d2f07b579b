"""The body validators (contract section 3), no server: strictness, error paths, properties."""

from __future__ import annotations

import copy
import importlib.resources
import re
import string
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from service.api import schemas
from service.domain import customer
from tests.helpers import PROPERTY, example


def errors(body) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as exc:
        schemas.load_create(body)
    return schemas.dotted(exc.value.messages)


def test_the_documented_example_is_valid():
    assert schemas.load_create(example())["customerId"] == "FST-1536316721808-NewCustomer"


def test_nested_unknown_field_has_its_full_path():
    body = example()
    body["contactInfo"]["address"]["planet"] = "Mars"
    assert errors(body) == {"contactInfo.address.planet": ["Unknown field."]}


def test_several_errors_are_reported_together():
    body = example(status="gone", settings={"dataRetentionDays": "30"})
    assert set(errors(body)) == {"status", "settings.dataRetentionDays"}


@pytest.mark.parametrize("value", [True, "1", 1.5, float("inf"), None])
def test_retention_days_must_be_a_real_integer(value):
    body = example(settings={"dataRetentionDays": value})
    if value is None:
        assert schemas.load_create(body)  # null is fine for an optional field
    else:
        assert "settings.dataRetentionDays" in errors(body)


@pytest.mark.parametrize(
    "cid",
    ["FST-12345678-a", "FST-20240101-Customer_1", "FST-12345678901234-" + "a" * 64],
)
def test_customer_id_forms_that_pass(cid):
    assert customer.is_customer_id(cid)


@pytest.mark.parametrize(
    "cid",
    [
        "FST-1234567-a",
        "FST-123456789012345-a",
        "fst-12345678-a",
        "FST-12345678-",
        "FST-12345678--a",
        "FST-12345678-a b",
        "FST-12345678-a\n",
    ],
)
def test_customer_id_forms_that_fail(cid):
    assert not customer.is_customer_id(cid)
    assert "customerId" in errors(example(customerId=cid))


def test_update_schema_allows_leaving_out_the_id():
    body = example()
    del body["customerId"]
    assert "customerId" not in schemas.load_update(body)


def test_dotted_flattens_nested_messages():
    assert schemas.dotted({"a": {"b": ["x"], "_schema": ["y"]}, "c": ["z"]}) == {
        "a.b": ["x"],
        "a": ["y"],
        "c": ["z"],
    }


@pytest.mark.parametrize("zone", ["America/Chicago", "UTC", "Europe/Paris", "Etc/GMT+5"])
def test_zones_of_the_tz_database_pass(zone):
    schemas.load_create(example(businessInfo={"timezone": zone}))


@pytest.mark.parametrize(
    "zone",
    ["localtime", "posixrules", "/etc/localtime", "America/../UTC", "america/chicago", ""],
)
def test_host_files_and_paths_are_no_zones(zone):
    with pytest.raises(ValidationError) as err:
        schemas.load_create(example(businessInfo={"timezone": zone}))
    assert "timezone" in err.value.messages["businessInfo"]


# --- properties: any value in any field, customer ids -----------------------------------
# Property tests, no I/O: the body validators (contract section 3), the customer id
# pattern and the email fast path. Derandomised, without an example database.


BASE = example(location={"latitude": 41.8, "longitude": -87.6, "name": "Springfield plant"})
REQUIRED = {"customerId", "customerName", "contactInfo", "contactInfo.email", "status"}
INTEGERS = {"settings.dataRetentionDays"}
NUMBERS = {"location.latitude", "location.longitude"}
BOOLEANS = {"settings.reportingEnabled"}
OBJECTS = {"contactInfo", "contactInfo.address", "businessInfo", "settings", "location"}


def _leaves(doc: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in doc.items():
        path = f"{prefix}{key}"
        found.append(path)
        if isinstance(value, dict):
            found.extend(_leaves(value, path + "."))
    return found


FIELDS = sorted(_leaves(BASE))
TEXTS = set(FIELDS) - INTEGERS - NUMBERS - BOOLEANS - OBJECTS
# The declared JSON types of each field; `null` only where the field is optional.
DECLARED = {
    **{p: (str,) for p in TEXTS},
    **{p: (int,) for p in INTEGERS},
    **{p: (int, float) for p in NUMBERS},
    **{p: (bool,) for p in BOOLEANS},
    **{p: (dict,) for p in OBJECTS},
}

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    # Near misses: the spellings a lenient parser would coerce.
    st.sampled_from(["365", "true", "false", "1", "0", "1.5", "", " ", "null", "NaN"]),
    st.sampled_from([1.0, 0.0, -0.0, 365.0, 3650, 3651, 0, -1, 90, 90.0001, -180, 180.5]),
    st.sampled_from(["ACTIVE", "active", "immediate", "America/Chicago", "a@b.co", "+1-555-0123"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=8,
)


def put(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    target[last] = value
    return doc


def get(doc: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        doc = doc[key]
    return doc


def load(body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    """(loaded, {}) or (None, dotted errors). Anything but ValidationError escapes."""
    try:
        return schemas.load_create(body), {}
    except ValidationError as exc:
        details = schemas.dotted(exc.messages)
        assert details, exc.messages
        for key, messages in details.items():
            assert isinstance(key, str) and key, details
            assert all(key.split(".")), details  # no empty segment
            assert isinstance(messages, list) and messages, details
            assert all(isinstance(m, str) and m for m in messages), details
        return None, details


def test_the_base_body_is_valid() -> None:
    assert load(BASE)[0] is not None


# The contract's pattern for customerId, as written there.
CONTRACT_CUSTOMER_ID = r"^FST-[0-9]{8,14}-[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
customer_ids = st.from_regex(CONTRACT_CUSTOMER_ID, fullmatch=True)

# Values each field takes, by the contract's rules: most examples must be accepted, or the
# property would only ever check the rejection branch.
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=80)
_TIMEZONES = sorted(importlib.resources.files("tzdata").joinpath("zones").read_text().split())
_VALID: dict[str, st.SearchStrategy[Any]] = {
    "customerId": customer_ids,
    "customerName": _TEXT.filter(lambda t: t.strip() != ""),
    "contactInfo.email": st.builds(
        "{}@{}.{}".format,
        st.from_regex(r"[a-z0-9]{1,20}([.+_-][a-z0-9]{1,10})?", fullmatch=True),
        st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True),
        st.sampled_from(["com", "org", "de", "io", "example"]),
    ),
    "contactInfo.phone": st.from_regex(
        r"\+?[0-9]{1,3}([ .-]?[0-9]{2,4}){2,4}", fullmatch=True
    ).filter(lambda p: 7 <= sum(c.isdigit() for c in p) <= 15),
    "businessInfo.timezone": st.sampled_from(_TIMEZONES),
    "settings.dataRetentionDays": st.integers(1, 3650),
    "settings.alertFrequency": st.sampled_from(customer.ALERT_FREQUENCIES),
    "settings.reportingEnabled": st.booleans(),
    "location.latitude": st.integers(-90, 90) | st.floats(-90, 90),
    "location.longitude": st.integers(-180, 180) | st.floats(-180, 180),
    "status": st.sampled_from(customer.STATUSES),
    **{p: st.just(copy.deepcopy(get(BASE, p))) for p in OBJECTS},
}


def valid_values(path: str) -> st.SearchStrategy[Any]:
    valid = _VALID.get(path, _TEXT)
    return valid if path in REQUIRED else valid | st.none()


def test_any_json_value_in_any_field_is_loaded_as_declared_or_rejected_there() -> None:
    outcomes: Counter[str] = Counter()

    # Three draws in four from the field's valid values, one from any JSON value at all.
    @given(
        path_value=st.sampled_from(FIELDS).flatmap(
            lambda path: st.tuples(
                st.just(path),
                st.integers(0, 3).flatmap(lambda i: valid_values(path) if i else json_values),
            )
        )
    )
    @PROPERTY
    def loaded_as_declared_or_rejected_there(path_value: tuple[str, Any]) -> None:
        path, value = path_value
        loaded, details = load(put(BASE, path, value))
        if loaded is None:
            # The error names the field or something inside it, never another field.
            assert all(k == path or k.startswith(path + ".") for k in details), (path, details)
            outcomes["rejected"] += 1
            return
        outcomes["accepted"] += 1
        kept = get(loaded, path)
        assert kept == value and type(kept) is type(value), "coerced"
        if value is None:
            assert path not in REQUIRED, f"null accepted for required {path}"
        else:
            assert type(value) in DECLARED[path], f"{type(value).__name__} accepted for {path}"

    loaded_as_declared_or_rejected_there()
    # Both branches were really exercised, the accepted one most (counted over the examples
    # Hypothesis ran, shrinking included: it only shrinks after a failure).
    assert outcomes["accepted"] >= 0.5 * sum(outcomes.values()), outcomes
    assert outcomes["rejected"] >= 10, outcomes


@given(
    path=st.sampled_from(sorted(INTEGERS | NUMBERS | BOOLEANS)),
    value=st.one_of(st.text(), st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True)),
)
@PROPERTY
def test_strings_are_never_numbers_or_booleans(path: str, value: str) -> None:
    assert path in load(put(BASE, path, value))[1]


@given(path=st.sampled_from(sorted(INTEGERS | NUMBERS)), value=st.booleans())
@PROPERTY
def test_booleans_are_never_numbers(path: str, value: bool) -> None:
    assert path in load(put(BASE, path, value))[1]


@given(path=st.sampled_from(sorted(BOOLEANS)), value=st.integers() | st.floats())
@PROPERTY
def test_numbers_are_never_booleans(path: str, value: float) -> None:
    assert path in load(put(BASE, path, value))[1]


@given(
    path=st.sampled_from(sorted(TEXTS)),
    value=st.integers() | st.floats() | st.booleans() | st.lists(st.text(), max_size=2),
)
@PROPERTY
def test_text_fields_take_only_strings(path: str, value: Any) -> None:
    assert path in load(put(BASE, path, value))[1]


KNOWN = {name for path in FIELDS for name in path.split(".")}


@given(
    parent=st.sampled_from(["", *sorted(OBJECTS)]),
    name=st.text(min_size=1, max_size=20).filter(lambda n: n not in KNOWN),
    value=json_values,
)
@PROPERTY
def test_an_unknown_field_at_any_depth_is_reported_at_its_own_path(
    parent: str, name: str, value: Any
) -> None:
    body = copy.deepcopy(BASE)
    (get(body, parent) if parent else body)[name] = value
    _, details = load(body)
    path = f"{parent}.{name}" if parent else name
    assert details == {path: ["Unknown field."]}


ID_CHARACTERS = set(string.ascii_letters + string.digits + "_-")


@given(customer_id=customer_ids)
@PROPERTY
def test_ids_of_the_contract_pattern_pass(customer_id: str) -> None:
    assert re.fullmatch(CONTRACT_CUSTOMER_ID, customer_id)
    assert customer.is_customer_id(customer_id)
    assert load(put(BASE, "customerId", customer_id))[0] is not None


@given(
    customer_id=customer_ids,
    extra=st.one_of(
        st.sampled_from(["\n", " ", "\r\n", "\t", "\x00", ".", "/", "é"]),
        st.characters().filter(lambda c: c not in ID_CHARACTERS),
    ),
    where=st.sampled_from(["end", "start"]),
)
@PROPERTY
def test_ids_with_a_foreign_character_added_fail(customer_id: str, extra: str, where: str) -> None:
    bad = customer_id + extra if where == "end" else extra + customer_id
    assert not customer.is_customer_id(bad)
    assert "customerId" in load(put(BASE, "customerId", bad))[1]


def _parts(customer_id: str) -> tuple[str, str]:
    """(digits, identifier) of a valid id."""
    match = re.fullmatch(r"FST-([0-9]{8,14})-(.*)", customer_id, re.DOTALL)
    assert match is not None
    return match[1], match[2]


@given(customer_id=customer_ids, data=st.data())
@PROPERTY
def test_ids_with_a_part_too_long_or_too_short_fail(customer_id: str, data: st.DataObject) -> None:
    digits, ident = _parts(customer_id)
    bad = data.draw(
        st.sampled_from(
            [
                f"FST-{digits[:7]}-{ident}",
                f"FST-{digits}{'0' * (15 - len(digits))}-{ident}",
                f"FST-{digits}-{ident}{'a' * (65 - len(ident))}",
                f"FST-{digits}-",
                f"FST-{digits}-_{ident}",
            ]
        )
    )
    assert not customer.is_customer_id(bad)
    assert "customerId" in load(put(BASE, "customerId", bad))[1]


# --- the plain-ASCII email fast path (issue 16) ---------------------------------------

_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-."
_LABEL = string.ascii_letters + string.digits + "-"
email_like = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join([*labels, tld])}",
    st.text(st.sampled_from(_ATEXT), min_size=0, max_size=70),
    st.lists(st.text(st.sampled_from(_LABEL), min_size=0, max_size=65), min_size=0, max_size=4),
    st.one_of(
        st.text(st.sampled_from(_LABEL), min_size=0, max_size=6),
        st.sampled_from(["arpa", "local", "localhost", "onion", "test", "invalid", "com"]),
    ),
)


@given(email=email_like)
@settings(PROPERTY, max_examples=3000)
def test_the_email_fast_path_accepts_only_what_email_validator_accepts(email: str) -> None:
    from email_validator import EmailNotValidError, validate_email

    if schemas.plain_email_ok(email):
        try:
            validate_email(email, check_deliverability=False)
        except EmailNotValidError as exc:
            pytest.fail(f"fast path accepted {email!r}, email-validator says {exc}")


@pytest.mark.parametrize(
    ("email", "fast"),
    [
        ("ops@acme.example.com", True),
        ("A.B+c@Sub.Domain.ORG", True),
        ("ops@bücher.de", False),  # Unicode: email-validator decides (and accepts)
        ("x@xn--bcher-kva.de", False),  # Punycode: email-validator decides
        ("x@foo.localhost", False),  # special use: email-validator rejects
        ("a..b@x.com", False),
    ],
)
def test_the_email_fast_path_leaves_the_rest_to_email_validator(email: str, fast: bool) -> None:
    assert schemas.plain_email_ok(email) is fast
