"""Validation rules that need no server: strictness and the error paths."""

from __future__ import annotations

import pytest
from marshmallow import ValidationError

from service.api import schemas
from service.domain import customer
from tests.helpers import example


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
