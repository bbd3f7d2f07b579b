"""The OpenAPI document and the route table against the contract: no server, no database.

The document is derived from the route table (service/api/routes.py) and the ErrorCode
enum, so the answers each operation documents are stated here once more, from the
contract, as the independent check of that derivation: a test that derived them from the
table too could not fail. Which operations exist comes from the table: the document, the
running app's router and this file's expectations must all name the same ones.

openapi-spec-validator is not installed, so the structural rules that matter here
(references resolve, operations are complete) are checked directly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from marshmallow import ValidationError
from multidict import MultiDict

from service.api import handlers, schemas
from service.api.app import create_app, create_ops_app
from service.api.errors import ApiError, from_http_exception
from service.api.openapi import SECURITY_SCHEME, build_spec, documented_operations
from service.api.pagination import CursorSigner, Position
from service.api.routes import API_PREFIX, BY_HANDLER, ROUTES, SERVED
from service.config import Settings
from service.domain.customer import STATUSES, utc_now
from service.error_codes import ErrorCode
from tests.helpers import SECTION_4_KEYS, example

ERROR_CODES = {code.value for code in ErrorCode}

CUSTOMERS = "/xcloud/v1/customers"
ONE = "/xcloud/v1/customers/{customerId}"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
AUTH_CODES = {"AUTH_REQUIRED", "STALE_REQUEST", "INVALID_SIGNATURE", "REPLAYED_REQUEST"}

# Every failure a signed /xcloud/v1 request can meet, whatever the route.
SIGNED = {
    400: {"CONTENT_MD5_MISMATCH"},
    401: AUTH_CODES,
    408: {"REQUEST_TIMEOUT"},
    413: {"PAYLOAD_TOO_LARGE"},
    500: {"INTERNAL_ERROR"},
    503: {"SERVICE_UNAVAILABLE"},
}

# (method, path) -> operationId, success statuses, {error status: codes}
EXPECTED: dict[tuple[str, str], tuple[str, set[int], dict[int, set[str]]]] = {
    ("POST", CUSTOMERS): (
        "register_customer",
        {201},
        {
            **SIGNED,
            400: {"VALIDATION_ERROR", "INVALID_JSON", "CONTENT_MD5_MISMATCH"},
            409: {"CUSTOMER_EXISTS", "IDEMPOTENCY_KEY_IN_USE"},
            415: {"UNSUPPORTED_MEDIA_TYPE"},
            422: {"IDEMPOTENCY_KEY_REUSED"},
        },
    ),
    ("GET", CUSTOMERS): (
        "list_customers",
        {200},
        {**SIGNED, 400: {"VALIDATION_ERROR", "CONTENT_MD5_MISMATCH"}},
    ),
    ("GET", ONE): (
        "get_customer",
        {200, 304},
        {
            **SIGNED,
            400: {"VALIDATION_ERROR", "CONTENT_MD5_MISMATCH"},
            404: {"CUSTOMER_NOT_FOUND"},
        },
    ),
    ("PUT", ONE): (
        "update_customer",
        {200},
        {
            **SIGNED,
            400: {"VALIDATION_ERROR", "INVALID_JSON", "CONTENT_MD5_MISMATCH"},
            404: {"CUSTOMER_NOT_FOUND"},
            409: {"IDEMPOTENCY_KEY_IN_USE"},
            412: {"PRECONDITION_FAILED"},
            415: {"UNSUPPORTED_MEDIA_TYPE"},
            422: {"IDEMPOTENCY_KEY_REUSED"},
        },
    ),
    ("POST", ONE + "/api-keys/{slot}"): (
        "rotate_api_key",
        {200},
        {
            **SIGNED,
            400: {"VALIDATION_ERROR", "CONTENT_MD5_MISMATCH"},
            404: {"CUSTOMER_NOT_FOUND"},
            409: {"IDEMPOTENCY_KEY_IN_USE"},
            422: {"IDEMPOTENCY_KEY_REUSED"},
        },
    ),
    ("POST", "/xcloud/v1/api-keys/verify"): (
        "verify_api_key",
        {200},
        {
            **SIGNED,
            400: {"VALIDATION_ERROR", "INVALID_JSON", "CONTENT_MD5_MISMATCH"},
            404: {"API_KEY_NOT_FOUND"},
            415: {"UNSUPPORTED_MEDIA_TYPE"},
        },
    ),
    # HEAD answers have no body, so its 404 is the X-Missing-Customer-Ids answer.
    ("HEAD", ONE): (
        "customers_exist",
        {200, 404},
        {**SIGNED, 400: {"VALIDATION_ERROR", "CONTENT_MD5_MISMATCH"}},
    ),
    ("GET", "/healthz"): ("healthz", {200}, {500: {"INTERNAL_ERROR"}}),
    ("GET", "/readyz"): (
        "readyz",
        {200},
        {500: {"INTERNAL_ERROR"}, 503: {"SERVICE_UNAVAILABLE"}},
    ),
    ("GET", "/metrics"): (
        "metrics",
        {200},
        {500: {"INTERNAL_ERROR"}, 503: {"SERVICE_UNAVAILABLE"}},
    ),
    ("GET", "/openapi.json"): ("openapi", {200}, {500: {"INTERNAL_ERROR"}}),
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_spec()


def resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"unresolved {ref}"
            node = node[part]
    return node


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return spec["paths"][path][method.lower()]


def component(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return spec["components"]["schemas"][name]


def types(prop: dict[str, Any]) -> set[str]:
    kind = prop.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def error_codes(spec: dict[str, Any], response: dict[str, Any]) -> set[str]:
    """The codes an error response narrows the shared Error schema to."""
    error, narrowing = response["content"]["application/json"]["schema"]["allOf"]
    assert resolve(spec, error) is component(spec, "Error")
    return set(narrowing["properties"]["error"]["enum"])


# --- the document as a whole ----------------------------------------------------------


def test_header_and_info(spec):
    assert spec["openapi"] in ("3.0.3", "3.1.0")
    assert spec["info"]["title"] == "XCloud customer registry"
    assert spec["info"]["version"]


def test_the_document_is_json(spec):
    assert json.loads(json.dumps(spec)) == spec


def test_it_is_built_once(spec):
    assert build_spec() is spec


def test_every_reference_resolves(spec):
    refs = [n["$ref"] for n in walk(spec) if isinstance(n, dict) and "$ref" in n]
    assert refs
    for ref in refs:
        resolve(spec, {"$ref": ref})


def test_every_schema_component_is_an_object_schema(spec):
    for name, schema in spec["components"]["schemas"].items():
        assert schema["type"] == "object", name
        for prop, value in schema["properties"].items():
            assert value, f"{name}.{prop} documents nothing"


def test_every_operation_is_well_formed(spec):
    operation_ids = []
    for path, item in spec["paths"].items():
        template = set(re.findall(r"{([^}]+)}", path))
        for method, op in item.items():
            assert method in METHODS, (path, method)
            operation_ids.append(op["operationId"])
            params = [resolve(spec, p) for p in op.get("parameters", [])]
            for p in params:
                assert p["in"] in ("path", "query", "header", "cookie"), p
                assert "schema" in p, p
                assert p["name"].lower() not in ("authorization", "content-type", "accept")
            assert {p["name"] for p in params if p["in"] == "path"} == template, (method, path)
            assert all(p["required"] for p in params if p["in"] == "path")
            assert op["responses"], (method, path)
            for status, response in op["responses"].items():
                response = resolve(spec, response)
                assert re.fullmatch(r"[1-5][0-9][0-9]", status), status
                assert response["description"], (method, path, status)
                for media in response.get("content", {}).values():
                    resolve(spec, media["schema"])
    assert len(operation_ids) == len(set(operation_ids))


def test_the_documented_operations_are_the_tables_and_the_contracts(spec):
    table = {(route.method, route.path) for route in ROUTES}
    assert len(table) == len(ROUTES)  # no route twice
    assert documented_operations(spec) == table
    assert table == set(EXPECTED)
    for route in ROUTES:
        assert operation(spec, route.method, route.path)["operationId"] == route.name


def served(app) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "*"}


SETTINGS = Settings(database_url="postgresql://nowhere/none", secret_key="k" * 40)


def test_every_route_of_the_table_is_served_and_nothing_else():
    table = {(route.method, route.path) for route in ROUTES}
    assert served(create_app(SETTINGS)) == table
    # XCLOUD_METRICS_PORT: the ops routes move to their own app, nothing else does.
    ops = {(route.method, route.path) for route in ROUTES if route.ops}
    assert ops == {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
    api = create_app(dataclasses.replace(SETTINGS, metrics_port=9999))
    assert served(api) == table - ops
    assert served(create_ops_app(api)) == ops


def test_the_auth_middleware_finds_every_route_by_its_handler():
    assert len(BY_HANDLER) == len(ROUTES)  # one handler, one route
    for route, served in SERVED:
        assert BY_HANDLER[served] is route
        # Contract section 2: every /xcloud/v1 route is signed, nothing else is.
        assert route.signed == route.path.startswith(API_PREFIX + "/")
        # The writes claim the nonce in their own statement; the middleware claims it for
        # the reads, before they run.
        assert route.write == (route.method in ("POST", "PUT")), route.name
        assert not (route.write and not route.signed)


def test_documented_operations_ignores_path_level_keys():
    doc = {"paths": {"/x": {"parameters": [], "summary": "s", "get": {}, "head": {}}}}
    assert documented_operations(doc) == {("GET", "/x"), ("HEAD", "/x")}


# --- operations -----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED))
def test_statuses_and_error_codes(spec, method, path):
    operation_id, successes, failures = EXPECTED[(method, path)]
    op = operation(spec, method, path)
    assert op["operationId"] == operation_id
    responses = {int(s): resolve(spec, r) for s, r in op["responses"].items()}
    assert set(responses) == successes | set(failures)
    for status, codes in failures.items():
        if method == "HEAD":
            assert "content" not in responses[status]
            assert all(code in responses[status]["description"] for code in codes)
        else:
            assert error_codes(spec, responses[status]) == codes, status


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED))
def test_every_response_carries_the_request_id(spec, method, path):
    for status, response in operation(spec, method, path)["responses"].items():
        headers = resolve(spec, response)["headers"]
        assert "X-Request-Id" in headers, status
        resolve(spec, headers["X-Request-Id"])


def test_every_401_says_how_to_authenticate(spec):
    for method, path in EXPECTED:
        response = operation(spec, method, path)["responses"].get("401")
        if response is not None:
            header = resolve(spec, resolve(spec, response)["headers"]["WWW-Authenticate"])
            assert header["schema"]["enum"] == ["HMAC-SHA256"]


def test_the_error_schema(spec):
    error = component(spec, "Error")
    assert set(error["required"]) == {"error", "message"}
    assert set(error["properties"]["error"]["enum"]) == set(ERROR_CODES)
    details = error["properties"]["details"]
    assert details["type"] == "object"
    assert details["additionalProperties"] == {"type": "array", "items": {"type": "string"}}
    assert {"customerId", "requestId"} <= set(error["properties"])
    assert error.get("additionalProperties") is not False  # the contract's "...more"
    for node in walk(spec["paths"]):
        if isinstance(node, dict) and "allOf" in node:
            assert set(node["allOf"][1]["properties"]["error"]["enum"]) <= set(ERROR_CODES)


def body_schema(spec, method, path, status):
    response = resolve(spec, operation(spec, method, path)["responses"][status])
    return response["content"]["application/json"]["schema"]


def test_bodies_in_and_out(spec):
    ref = "#/components/schemas/{}".format
    post = operation(spec, "POST", CUSTOMERS)
    put = operation(spec, "PUT", ONE)
    assert post["requestBody"]["required"] and put["requestBody"]["required"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": ref("CustomerCreate")
    }
    assert put["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": ref("CustomerUpdate")
    }
    assert body_schema(spec, "POST", CUSTOMERS, "201") == {"$ref": ref("CustomerCreated")}
    assert body_schema(spec, "GET", ONE, "200") == {"$ref": ref("Customer")}
    assert body_schema(spec, "PUT", ONE, "200") == {"$ref": ref("Customer")}
    page = resolve(spec, body_schema(spec, "GET", CUSTOMERS, "200"))
    assert page["properties"]["customers"] == {"type": "array", "items": {"$ref": ref("Customer")}}
    assert types(page["properties"]["nextCursor"]) == {"string", "null"}
    assert set(page["required"]) == {"customers", "nextCursor"}
    metrics = resolve(spec, operation(spec, "GET", "/metrics")["responses"]["200"])
    assert set(metrics["content"]) == {"text/plain"}


def headers_of(spec, method, path, status) -> set[str]:
    return set(resolve(spec, operation(spec, method, path)["responses"][status])["headers"])


def test_the_headers_of_the_answers(spec):
    assert "Location" in headers_of(spec, "POST", CUSTOMERS, "201")
    assert "ETag" in headers_of(spec, "GET", ONE, "200")
    assert "ETag" in headers_of(spec, "GET", ONE, "304")
    assert "ETag" in headers_of(spec, "PUT", ONE, "200")
    assert "X-Missing-Customer-Ids" in headers_of(spec, "HEAD", ONE, "404")
    for method, path, status in [
        ("POST", CUSTOMERS, "201"),
        ("POST", CUSTOMERS, "409"),
        ("PUT", ONE, "200"),
        ("POST", ONE + "/api-keys/{slot}", "200"),
    ]:
        assert "Idempotent-Replayed" in headers_of(spec, method, path, status)
        assert "Idempotency-Key" in parameters(spec, method, path)
    assert "Retry-After" in headers_of(spec, "POST", CUSTOMERS, "409")
    assert "Idempotency-Key" not in parameters(spec, "POST", "/xcloud/v1/api-keys/verify")
    assert "content" not in operation(spec, "GET", ONE)["responses"]["304"]


def parameters(spec, method, path) -> dict[str, dict[str, Any]]:
    return {
        p["name"]: p
        for p in (resolve(spec, p) for p in operation(spec, method, path)["parameters"])
    }


def test_request_parameters(spec):
    listing = parameters(spec, "GET", CUSTOMERS)
    assert listing["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 50,
    }
    assert listing["status"]["schema"]["enum"] == ["ACTIVE", "INACTIVE", "SUSPENDED"]
    assert listing["cursor"]["in"] == "query"
    assert parameters(spec, "GET", ONE)["If-None-Match"]["in"] == "header"
    assert parameters(spec, "PUT", ONE)["If-Match"]["in"] == "header"
    ids = parameters(spec, "HEAD", ONE)["customerId"]
    assert "comma" in ids["description"] and "100" in ids["description"]
    assert ids["schema"]["minItems"] == 1 and ids["schema"]["maxItems"] == 100


# --- authentication -------------------------------------------------------------------


def test_the_hmac_scheme(spec):
    scheme = spec["components"]["securitySchemes"][SECURITY_SCHEME]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    text = scheme["description"]
    for needle in ("X-XCloud-Timestamp", "X-XCloud-Nonce", "Content-MD5", "HMAC-SHA256"):
        assert needle in text
    assert "8. the service id" in text


def test_only_the_api_is_signed(spec):
    assert "security" not in spec  # no global requirement to opt out of
    for method, path in EXPECTED:
        op = operation(spec, method, path)
        headers = {n for n, p in parameters(spec, method, path).items() if p["in"] == "header"}
        if path.startswith("/xcloud/v1/"):
            assert op["security"] == [{SECURITY_SCHEME: []}]
            assert {"X-XCloud-Timestamp", "X-XCloud-Nonce"} <= headers
            assert ("Content-MD5" in headers) == ("requestBody" in op)
        else:
            assert "security" not in op
            assert not headers & {"X-XCloud-Timestamp", "X-XCloud-Nonce", "Content-MD5"}


# --- the customer schemas -------------------------------------------------------------

TOP_LEVEL = set(SECTION_4_KEYS) - {"limits", "createdAt", "updatedAt"}


def test_the_create_schema_has_the_contracts_fields(spec):
    create = component(spec, "CustomerCreate")
    assert set(create["properties"]) == TOP_LEVEL
    assert set(create["required"]) == {"customerId", "customerName", "contactInfo", "status"}
    update = component(spec, "CustomerUpdate")
    assert set(update["properties"]) == TOP_LEVEL
    assert set(update["required"]) == {"customerName", "contactInfo", "status"}

    contact = component(spec, "ContactInfo")
    assert set(contact["properties"]) == {"email", "phone", "address"}
    assert contact["required"] == ["email"]
    assert contact["properties"]["email"]["maxLength"] == 254
    assert set(component(spec, "Address")["properties"]) == {
        "street",
        "city",
        "state",
        "postalCode",
        "country",
    }
    assert set(component(spec, "BusinessInfo")["properties"]) == {"industry", "sector", "timezone"}
    assert set(component(spec, "Location")["properties"]) == {"latitude", "longitude", "name"}
    assert set(component(spec, "Settings")["properties"]) == {
        "dataRetentionDays",
        "alertFrequency",
        "reportingEnabled",
    }


def test_settings_are_typed_and_bounded(spec):
    settings = component(spec, "Settings")["properties"]
    days = settings["dataRetentionDays"]
    assert types(days) - {"null"} == {"integer"}
    assert (days["minimum"], days["maximum"], days["default"]) == (1, 3650, 365)
    assert types(settings["reportingEnabled"]) - {"null"} == {"boolean"}
    assert set(settings["alertFrequency"]["enum"]) - {None} == {
        "immediate",
        "hourly",
        "daily",
        "weekly",
        "never",
    }
    location = component(spec, "Location")["properties"]
    assert types(location["latitude"]) - {"null"} == {"number"}
    assert (location["latitude"]["minimum"], location["latitude"]["maximum"]) == (-90, 90)
    assert (location["longitude"]["minimum"], location["longitude"]["maximum"]) == (-180, 180)


def test_status_is_an_enum(spec):
    for name in ("CustomerCreate", "CustomerUpdate", "Customer", "CustomerCreated"):
        assert component(spec, name)["properties"]["status"]["enum"] == [
            "ACTIVE",
            "INACTIVE",
            "SUSPENDED",
        ]


def test_optional_fields_accept_null_and_required_ones_do_not(spec):
    create = component(spec, "CustomerCreate")["properties"]
    assert types(create["description"]) == {"string", "null"}
    assert {"type": "null"} in create["settings"]["anyOf"]
    assert "null" not in types(create["customerName"])
    assert "anyOf" not in create["contactInfo"]


def test_the_customer_id_pattern_is_anchored_like_the_server(spec):
    pattern = re.compile(component(spec, "CustomerCreate")["properties"]["customerId"]["pattern"])
    # JSON Schema patterns match anywhere: the anchors have to be in the pattern itself.
    assert pattern.search("FST-1536316721808-NewCustomer")
    assert pattern.search("FST-20240101-a_b-c")
    for bad in ("xFST-20240101-a", "FST-20240101-a!", "FST-2024-a", "FST-20240101-_a"):
        assert not pattern.search(bad), bad
    assert "\\Z" not in json.dumps(spec)


def test_unknown_fields_are_refused_at_every_depth(spec):
    seen: set[str] = set()

    def check(node: dict[str, Any]) -> None:
        for sub in walk(node):
            if isinstance(sub, dict) and "$ref" in sub and sub["$ref"] not in seen:
                seen.add(sub["$ref"])
                target = resolve(spec, sub)
                assert target["additionalProperties"] is False, sub["$ref"]
                check(target)

    for method, path in (("POST", CUSTOMERS), ("PUT", ONE)):
        check(operation(spec, method, path)["requestBody"])
    assert {ref.rsplit("/", 1)[1] for ref in seen} == {
        "CustomerCreate",
        "CustomerUpdate",
        "ContactInfo",
        "Address",
        "BusinessInfo",
        "Settings",
        "Location",
    }


def test_the_documented_example_only_uses_documented_fields(spec):
    def check(value: Any, schema: dict[str, Any], path: str) -> None:
        schema = resolve(spec, schema)
        if "anyOf" in schema:
            (schema,) = (resolve(spec, s) for s in schema["anyOf"] if s != {"type": "null"})
        if isinstance(value, dict):
            assert set(value) <= set(schema["properties"]), path
            assert set(schema.get("required", ())) <= set(value), path
            for key, item in value.items():
                check(item, schema["properties"][key], f"{path}.{key}")
        else:
            kind = {bool: "boolean", int: "integer", str: "string", float: "number"}[type(value)]
            assert kind in types(schema), path
            if "enum" in schema:
                assert value in schema["enum"], path

    check(example(), {"$ref": "#/components/schemas/CustomerCreate"}, "")


def test_the_representation(spec):
    customer = component(spec, "Customer")
    fields = TOP_LEVEL | {"limits", "createdAt", "updatedAt"}
    assert set(customer["properties"]) == fields
    assert set(customer["required"]) == fields  # always present, null when absent
    assert customer["properties"]["createdAt"]["format"] == "date-time"
    assert set(component(spec, "Limits")["required"]) == {"maxDevices", "maxUsers", "maxDataPoints"}

    created = component(spec, "CustomerCreated")
    assert set(created["required"]) == {
        "customerId",
        "customerName",
        "status",
        "createdAt",
        "apiKeys",
        "limits",
    }
    assert set(component(spec, "ApiKeys")["required"]) == {"primary", "secondary"}
    assert "apiKeys" not in customer["properties"]


# --- the error codes ------------------------------------------------------------------


def test_every_error_code_has_a_status_and_a_meaning():
    for code in ErrorCode:
        assert code.value == code.name and code.doc
        assert 400 <= code.status < 600 or code is ErrorCode.HTTP_ERROR
    assert ErrorCode("CUSTOMER_EXISTS") is ErrorCode.CUSTOMER_EXISTS


def test_an_api_error_answers_with_its_codes_status():
    error = ApiError(ErrorCode.CUSTOMER_EXISTS, "exists", customerId="FST-12345678-a")
    response = error.response()
    assert response.status == 409
    assert json.loads(response.body) == {
        "error": "CUSTOMER_EXISTS",
        "message": "exists",
        "customerId": "FST-12345678-a",
    }


def test_aiohttp_refusals_keep_their_status():
    from aiohttp import web

    assert (
        from_http_exception(web.HTTPMethodNotAllowed("GET", ["PUT"])).code == "METHOD_NOT_ALLOWED"
    )
    teapot = from_http_exception(web.HTTPExpectationFailed())
    assert (teapot.status, teapot.code) == (417, ErrorCode.HTTP_ERROR)


def test_every_code_a_route_lists_is_documented_on_it(spec):
    for route in ROUTES:
        documented: set[str] = set()
        for status, response in operation(spec, route.method, route.path)["responses"].items():
            response = resolve(spec, response)
            if int(status) >= 400 and "content" in response:
                documented |= error_codes(spec, response)
            elif int(status) >= 400:
                documented |= {c for c in ERROR_CODES if c in response["description"]}
        assert {code.value for code in route.errors} <= documented, route.name


# --- the list's query: one schema validates it and documents it -------------------------

SIGNER = CursorSigner("s" * 40)
LIST_QUERY = schemas.ListQuerySchema(SIGNER)


def list_query(*pairs: tuple[str, str]) -> schemas.ListQuery:
    return schemas.load_list_query(LIST_QUERY, MultiDict(pairs))


def list_query_details(*pairs: tuple[str, str]) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as err:
        list_query(*pairs)
    return err.value.messages_dict


def test_the_list_query_defaults_and_values():
    assert list_query() == schemas.ListQuery(50, None, None)
    position = Position(utc_now(), "FST-12345678-a")
    cursor = SIGNER.encode(position, "ACTIVE")
    loaded = list_query(("limit", "7"), ("status", "ACTIVE"), ("cursor", cursor))
    assert loaded == schemas.ListQuery(7, "ACTIVE", position)
    assert list_query(("limit", "100")).limit == 100
    assert list_query(("limit", "001")).limit == 1


WHOLE = ["Must be a whole number from 1 to 100."]
UNFILTERED = SIGNER.encode(Position(utc_now(), "FST-12345678-a"), None)


@pytest.mark.parametrize(
    ("pairs", "details"),
    [
        ([("limit", "0")], {"limit": WHOLE}),
        ([("limit", "101")], {"limit": WHOLE}),
        ([("limit", "5.5")], {"limit": WHOLE}),
        ([("limit", "+5")], {"limit": WHOLE}),
        ([("limit", "\u0663")], {"limit": WHOLE}),  # a digit, but not ASCII
        ([("limit", "9" * 5000)], {"limit": WHOLE}),  # more digits than int() takes
        ([("status", "active")], {"status": [f"Must be one of: {', '.join(STATUSES)}."]}),
        ([("sort", "name"), ("sort", "id")], {"sort": ["Unknown parameter."]}),
        ([("limit", "5"), ("limit", "6")], {"limit": ["Given more than once."]}),
        ([("limit", "0"), ("limit", "6")], {"limit": WHOLE}),  # the first value's error
        ([("cursor", "")], {"cursor": ["Not a cursor this service issued."]}),
        (
            [("cursor", UNFILTERED), ("status", "ACTIVE")],
            {"cursor": ["The cursor belongs to a list with another status filter."]},
        ),
        # A bad status filter: the cursor is not checked against it.
        (
            [("cursor", "x"), ("status", "no")],
            {"status": [f"Must be one of: {', '.join(STATUSES)}."]},
        ),
        (
            [("status", "ACTIVE"), ("status", "ACTIVE"), ("cursor", "x")],
            {"status": ["Given more than once."]},
        ),
    ],
)
def test_the_list_query_refusals(pairs, details):
    assert list_query_details(*pairs) == details


def test_the_documented_list_parameters_are_the_schemas(spec):
    documented = {
        name for name, p in parameters(spec, "GET", CUSTOMERS).items() if p["in"] == "query"
    }
    assert documented == set(schemas.ListQuerySchema().fields)
    assert parameters(spec, "GET", CUSTOMERS)["cursor"]["description"].startswith("Opaque")


def test_only_the_list_reads_a_query():
    assert [route.handler for route in ROUTES if route.query] == [handlers.list_customers]
