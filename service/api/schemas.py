"""Marshmallow schemas for what callers send and what they get back (contract 3 and 4).

Types are checked, never coerced: "365" is no integer, 1 is no boolean. Unknown
fields are rejected at every depth (marshmallow's RAISE, the default of every schema
here). Errors come back as dotted paths, the form of the contract's `details`.
"""

from __future__ import annotations

import importlib.resources
import math
import re
from dataclasses import dataclass
from typing import Any

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    missing,
    validate,
    validates,
)
from multidict import MultiMapping

from service.api.pagination import BadCursor, CursorSigner, Position
from service.domain import api_keys
from service.domain.customer import (
    ALERT_FREQUENCIES,
    CUSTOMER_ID,
    STATUSES,
)
from service.error_codes import ErrorCode

_PHONE = re.compile(r"[0-9+ .()\-]+")
# The zone names of the tz database as shipped by the tzdata package, not whatever the
# host's zoneinfo directory holds (which adds host files such as `localtime`).
_TIMEZONES = frozenset(importlib.resources.files("tzdata").joinpath("zones").read_text().split())

# A plain-ASCII address that email-validator certainly accepts: dot-atom local part of at
# most 64, hostname labels of letters, digits and inner hyphens (no "--" anywhere, so no
# Punycode or reserved "ab--" labels), an alphabetic top-level label, not a special-use
# domain. Such an address skips email-validator's Unicode (UTS-46) and IDNA work, which
# costs more than the rest of its checks; anything else goes through email-validator,
# which alone may reject. tests/unit/test_schemas.py checks the fast path never
# accepts what email-validator rejects.
_PLAIN_EMAIL = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?!.*--)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)


def plain_email_ok(value: str) -> bool:
    """True only for addresses email-validator would accept; False means "ask it"."""
    if len(value) > 254 or not _PLAIN_EMAIL.fullmatch(value):
        return False
    domain = value.rpartition("@")[2].lower()
    return not any(domain == s or domain.endswith("." + s) for s in _SPECIAL_USE)


class Text(fields.String):
    """A JSON string PostgreSQL can store: no NUL character, no lone surrogate."""

    default_error_messages = {
        "nul": "Must not contain NUL characters.",
        "surrogate": "Must be valid Unicode text.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise self.make_error("nul")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise self.make_error("surrogate") from None
        return text


class StrictInteger(fields.Field):
    default_error_messages = {"invalid": "Not a valid integer."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if type(value) is not int:  # bool is an int subclass: excluded on purpose
            raise self.make_error("invalid")
        return value


class StrictNumber(fields.Field):
    default_error_messages = {"invalid": "Not a valid number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise self.make_error("invalid")
        return value


class StrictBoolean(fields.Field):
    default_error_messages = {"invalid": "Not a valid boolean."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise self.make_error("invalid")
        return value


def _optional_text(max_length: int) -> Text:
    return Text(allow_none=True, validate=validate.Length(max=max_length))


class AddressSchema(Schema):
    street = _optional_text(200)
    city = _optional_text(200)
    state = _optional_text(200)
    postalCode = _optional_text(200)
    country = _optional_text(100)


class ContactInfoSchema(Schema):
    email = Text(required=True, validate=validate.Length(max=254))
    phone = Text(allow_none=True)
    address = fields.Nested(AddressSchema, allow_none=True)

    @validates("email")
    def _email(self, value: str, **_: Any) -> None:
        if plain_email_ok(value):
            return
        try:
            validate_email(value, check_deliverability=False)
        except EmailNotValidError:
            raise ValidationError("Not a valid email address.") from None

    @validates("phone")
    def _phone(self, value: str | None, **_: Any) -> None:
        if value is None:
            return
        digits = sum(c.isdigit() for c in value)
        if not _PHONE.fullmatch(value) or not 7 <= digits <= 15:
            raise ValidationError(
                "Must be +, digits, spaces, '-', '.', '(' or ')', with 7 to 15 digits."
            )


class BusinessInfoSchema(Schema):
    industry = _optional_text(200)
    sector = _optional_text(200)
    timezone = Text(allow_none=True)

    @validates("timezone")
    def _timezone(self, value: str | None, **_: Any) -> None:
        if value is not None and value not in _TIMEZONES:
            raise ValidationError("Not a known IANA time zone name.")


class SettingsSchema(Schema):
    dataRetentionDays = StrictInteger(allow_none=True, validate=validate.Range(1, 3650))
    alertFrequency = Text(allow_none=True, validate=validate.OneOf(ALERT_FREQUENCIES))
    reportingEnabled = StrictBoolean(allow_none=True)


class LocationSchema(Schema):
    latitude = StrictNumber(allow_none=True, validate=validate.Range(-90, 90))
    longitude = StrictNumber(allow_none=True, validate=validate.Range(-180, 180))
    name = _optional_text(200)


class CustomerUpdateSchema(Schema):
    """PUT body: the POST rules, but customerId may be left out."""

    customerId = Text(validate=validate.Regexp(CUSTOMER_ID.pattern + r"\Z"))
    customerName = Text(required=True, validate=validate.Length(min=1, max=200))
    description = _optional_text(2000)
    contactInfo = fields.Nested(ContactInfoSchema, required=True)
    businessInfo = fields.Nested(BusinessInfoSchema, allow_none=True)
    settings = fields.Nested(SettingsSchema, allow_none=True)
    location = fields.Nested(LocationSchema, allow_none=True)
    status = Text(required=True, validate=validate.OneOf(STATUSES))

    @validates("customerName")
    def _not_blank(self, value: str, **_: Any) -> None:
        if not value.strip():
            raise ValidationError("Must not be blank.")


class CustomerCreateSchema(CustomerUpdateSchema):
    """POST body."""

    customerId = Text(required=True, validate=validate.Regexp(CUSTOMER_ID.pattern + r"\Z"))


# Representation (contract section 4): documents the answer shape and lets tests check it.
class LimitsSchema(Schema):
    maxDevices = fields.Integer(required=True)
    maxUsers = fields.Integer(required=True)
    maxDataPoints = fields.Integer(required=True)


class CustomerSchema(CustomerCreateSchema):
    limits = fields.Nested(LimitsSchema, required=True)
    createdAt = fields.String(required=True)
    updatedAt = fields.String(required=True)


class ApiKeysSchema(Schema):
    primary = fields.String(required=True)
    secondary = fields.String(required=True)


class CustomerCreatedSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    customerId = fields.String(required=True)
    customerName = fields.String(required=True)
    status = fields.String(required=True)
    createdAt = fields.String(required=True)
    apiKeys = fields.Nested(ApiKeysSchema, required=True)
    limits = fields.Nested(LimitsSchema, required=True)


def dotted(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error dict -> {"contactInfo.email": ["..."]}."""
    if isinstance(messages, list):
        return {prefix or "_schema": [str(m) for m in messages]}
    flat: dict[str, list[str]] = {}
    for key, value in messages.items():
        if key == "_schema":  # an error of the object itself belongs to its own path
            path = prefix or "_schema"
        else:
            path = f"{prefix}.{key}" if prefix else str(key)
        flat.update(dotted(value, path))
    return flat


_CREATE = CustomerCreateSchema()
_UPDATE = CustomerUpdateSchema()


def load_create(body: dict[str, Any]) -> dict[str, Any]:
    """Validated POST body; raises ValidationError."""
    return _CREATE.load(body)


def load_update(body: dict[str, Any]) -> dict[str, Any]:
    return _UPDATE.load(body)


# --- API keys (contract section 13) ---------------------------------------------------


class VerifyRequestSchema(Schema):
    apiKey = fields.String(required=True)


class VerifiedKeySchema(Schema):
    customerId = fields.String(required=True)
    slot = fields.String(required=True, metadata={"enum": list(api_keys.SLOTS)})
    status = fields.String(required=True)


class RotatedKeySchema(Schema):
    customerId = fields.String(required=True)
    slot = fields.String(required=True, metadata={"enum": list(api_keys.SLOTS)})
    apiKey = fields.String(required=True, metadata={"description": "Shown this once."})
    rotatedAt = fields.String(required=True)


VERIFY_REQUEST = VerifyRequestSchema()


# --- answer shapes the handlers build by hand (documented in the OpenAPI document) -----


class ErrorSchema(Schema):
    class Meta:
        unknown = INCLUDE  # the contract's `{"error", "message", ...more}`

    error = fields.String(required=True, validate=validate.OneOf([c.value for c in ErrorCode]))
    message = fields.String(required=True, metadata={"description": "Human text."})
    details = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "VALIDATION_ERROR: dotted field path -> messages."},
    )
    customerId = fields.String(metadata={"description": "CUSTOMER_EXISTS, CUSTOMER_NOT_FOUND."})
    requestId = fields.String(metadata={"description": "INTERNAL_ERROR: the X-Request-Id."})


class CustomerListSchema(Schema):
    customers = fields.List(fields.Nested(CustomerSchema), required=True)
    nextCursor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last."},
    )


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class RelaysSchema(Schema):
    live = fields.Integer(required=True, metadata={"description": "Relays running anywhere."})
    lanesHeld = fields.Integer(required=True, metadata={"description": "Lanes they hold."})
    lanes = fields.Integer(required=True, metadata={"description": "Lanes in all."})


class ReadinessSchema(Schema):
    class Meta:
        unknown = INCLUDE

    status = fields.String(required=True, validate=validate.OneOf(["ready"]))
    database = fields.String()
    relays = fields.Nested(
        RelaysSchema,
        metadata={"description": "What PostgreSQL's lock table says of the outbox relays."},
    )


# --- the list's query (contract section 5) --------------------------------------------

_LIMIT_RULE = "Must be a whole number from 1 to 100."


class _OnceOnly:
    """A query parameter's field. It receives every value the parameter was given; the
    first one's own error comes first, then "Given more than once." for a repeat."""

    def deserialize(self, value: Any, attr: str | None = None, data: Any = None, **kw: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        result = super().deserialize(values[0], attr, data, **kw)  # type: ignore[misc]
        if len(values) > 1:
            raise ValidationError("Given more than once.")
        return result


class QueryInteger(_OnceOnly, fields.Integer):
    """Digits only: "+5", " 5" and "5.0" are no whole numbers here."""

    default_error_messages = {"invalid": _LIMIT_RULE}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise self.make_error("invalid")
        try:
            return int(value)
        except ValueError:  # more digits than Python converts: no whole number from 1 to 100
            raise self.make_error("invalid") from None


class QueryString(_OnceOnly, fields.String):
    pass


class Cursor(QueryString):
    """Decoded into a Position, under the status filter of the same query: a cursor is
    only checked when that filter is valid (else the filter's error says enough)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        query = self.parent
        assert isinstance(query, ListQuerySchema) and query.cursors is not None
        try:
            status = query.fields["status"].deserialize(data.get("status", missing), "status")
        except ValidationError:
            return text  # the status's own error fails the load
        try:
            return query.cursors.decode(text, None if status is missing else status)
        except BadCursor as exc:
            raise ValidationError(str(exc)) from None


class ListQuerySchema(Schema):
    """GET /xcloud/v1/customers?limit&cursor&status: unknown or repeated parameters are
    refused. Loads `{name: [values]}` (see `load_list_query`)."""

    error_messages = {"unknown": "Unknown parameter."}

    limit = QueryInteger(load_default=50, validate=validate.Range(1, 100, error=_LIMIT_RULE))
    cursor = Cursor(
        metadata={
            "description": "Opaque: the nextCursor of the previous page, with the same status."
        }
    )
    status = QueryString(validate=validate.OneOf(STATUSES, error="Must be one of: {choices}."))

    def __init__(self, cursors: CursorSigner | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cursors = cursors  # None: a schema for the OpenAPI document only


@dataclass(frozen=True, slots=True)
class ListQuery:
    limit: int
    status: str | None
    after: Position | None


def load_list_query(schema: ListQuerySchema, query: MultiMapping[str]) -> ListQuery:
    """The list's parameters; ValidationError with the contract's details for bad ones."""
    loaded = schema.load({name: query.getall(name) for name in query})
    return ListQuery(loaded["limit"], loaded.get("status"), loaded.get("cursor"))
