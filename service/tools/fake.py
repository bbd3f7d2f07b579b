"""Realistic, valid customers for tests, demos and benchmarks (`xcloud fake N`).

Faker supplies the names, addresses, emails and places; the rest (industries, settings,
phone numbers) is drawn here so that every customer passes the service's schema.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from faker import Faker
from faker.providers.geo import Provider as GeoProvider

from service.domain.customer import ALERT_FREQUENCIES, is_customer_id

# With --seed and no --timestamp the ids must not depend on the clock either.
SEEDED_TIMESTAMP_MS = 1_700_000_000_000
IDENTIFIER_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")

# (industry, sectors): customers of a device and data platform.
_INDUSTRIES = (
    ("Water Management", ("Municipal Services", "Dewatering", "Wastewater Treatment")),
    ("Agriculture", ("Irrigation", "Livestock", "Grain Storage")),
    ("Oil and Gas", ("Upstream", "Pipelines", "Tank Monitoring")),
    ("Utilities", ("Electric Distribution", "Gas Distribution", "Metering")),
    ("Construction", ("Heavy Equipment", "Site Monitoring")),
    ("Logistics", ("Fleet Tracking", "Cold Chain", "Warehousing")),
    ("Mining", ("Surface Mining", "Tailings Monitoring")),
    ("Environmental Services", ("Air Quality", "Flood Warning", "Weather Stations")),
)
_RETENTION_DAYS = (30, 90, 180, 365, 365, 365, 730, 1825, 3650)
_STATUS_WEIGHTS = {"ACTIVE": 0.85, "INACTIVE": 0.1, "SUSPENDED": 0.05}
_MAILBOXES = ("contact", "info", "operations", "admin", "support")
_TLDS = (".com", ".com", ".com", ".net", ".org", ".us")
# (latitude, longitude, place, country, IANA zone) of US places: Faker's local_latlng
# filters its whole table on every call, a third of the time of a customer.
_US_PLACES = tuple(p for p in GeoProvider.land_coords if p[3] == "US")


def _domain(company: str) -> str:
    """'Garcia, White and Sons' -> 'garcia-white-and-sons' (a DNS label)."""
    return "-".join(re.findall(r"[a-z0-9]+", company.lower()))[:63].strip("-") or "customer"


def _slug(company: str) -> str:
    """'Garcia, White and Sons' -> 'GarciaWhiteAndSons' (id-safe, at most 40 characters)."""
    words = re.findall(r"[A-Za-z0-9]+", company)
    return "".join(w[:1].upper() + w[1:] for w in words)[:40] or "Customer"


def customers(
    count: int,
    *,
    seed: int | None = None,
    prefix: str | None = None,
    timestamp_ms: int | None = None,
) -> Iterator[dict[str, Any]]:
    """`count` customers with ids `FST-{timestamp_ms}-{identifier}`, unique within the run.

    The identifier is `{prefix}{n}` when a prefix is given, else the company name and n
    (`GarciaWhite-42`). The same seed (and timestamp) gives the same customers.
    """
    if prefix is not None and not IDENTIFIER_PREFIX.fullmatch(prefix):
        raise ValueError("prefix must be 1-48 of [A-Za-z0-9_-], starting with a letter or digit")
    if timestamp_ms is None:
        timestamp_ms = SEEDED_TIMESTAMP_MS if seed is not None else int(time.time() * 1000)
    # Unweighted picks: five times faster, which matters at 100,000 customers.
    fake = Faker("en_US", use_weighting=False)
    if seed is not None:
        fake.seed_instance(seed)
    rnd = fake.random
    for n in range(1, count + 1):
        company = fake.company()
        identifier = f"{prefix}{n}" if prefix is not None else f"{_slug(company)}-{n}"
        customer_id = f"FST-{timestamp_ms}-{identifier}"
        if not is_customer_id(customer_id):
            raise ValueError(f"not a valid customer id: {customer_id!r}")
        industry, sectors = rnd.choice(_INDUSTRIES)
        latitude, longitude, place, _, zone = rnd.choice(_US_PLACES)
        mailbox = rnd.choice((*_MAILBOXES, fake.first_name().lower()))
        contact: dict[str, Any] = {
            "email": f"{mailbox}@{_domain(company)}{rnd.choice(_TLDS)}",
            "address": {
                "street": fake.street_address(),
                "city": fake.city(),
                "state": fake.state_abbr(),
                "postalCode": fake.postcode(),
                "country": "USA",
            },
        }
        if rnd.random() < 0.9:
            # 555-01xx: the numbers set aside for fiction in North America.
            contact["phone"] = fake.numerify("+1-%##-555-01##")
        customer: dict[str, Any] = {
            "customerId": customer_id,
            "customerName": company,
        }
        if rnd.random() < 0.8:
            customer["description"] = f"{fake.catch_phrase()} for {sectors[0].lower()}"
        customer["contactInfo"] = contact
        customer["businessInfo"] = {
            "industry": industry,
            "sector": rnd.choice(sectors),
            "timezone": zone,
        }
        customer["settings"] = {
            "dataRetentionDays": rnd.choice(_RETENTION_DAYS),
            "alertFrequency": rnd.choice(ALERT_FREQUENCIES),
            "reportingEnabled": rnd.random() < 0.8,
        }
        if rnd.random() < 0.7:
            customer["location"] = {
                "latitude": float(latitude),
                "longitude": float(longitude),
                "name": f"{place} site",
            }
        customer["status"] = rnd.choices(
            list(_STATUS_WEIGHTS), weights=list(_STATUS_WEIGHTS.values())
        )[0]
        yield customer
