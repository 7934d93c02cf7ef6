"""Instance-hour list prices for cost lines: the table shipped in the repo
(``chalicelib/data/prices.json``) first, then, on a stage that enables it
(``TUNELOOP_PRICE_LIST_API=1``, as the template does), the AWS Price List API, whose
answers are cached in the data bucket (``prices/<region>.json``) for 30 days.

The Price List names a SageMaker instance-hour by its usage type,
``<region prefix>-<Train|Processing|Host|Tsform>:<instance type>``; the region's prefix
(``USE1``, ``EU``, ``APN1``, ...) is read once from any of the region's products. A price
the table lacks and the API does not give (or cannot be asked for) leaves the line
unpriced, with the reason in its note.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

TABLE = Path(__file__).parent / "data" / "prices.json"
SERVICE = "AmazonSageMaker"
USAGE = {"training": "Train", "processing": "Processing", "hosting": "Host", "transform": "Tsform"}
# How long an answer (a price, or "the Price List has none") is kept in the bucket.
FRESH = timedelta(days=30)
NONE_FRESH = timedelta(days=1)
# After a failed call (throttled, denied, unreachable) the API is not asked again for this long.
BACKOFF_S = 600.0
# The Price List API answers in these regions only; us-east-1 serves every region's prices.
API_REGION = "us-east-1"
# A region's usage-type prefix (USE1, EU, APN1, ...), and the dearest instance-hour believed.
PREFIX = re.compile(r"[A-Z0-9]{0,8}")
MAX_HOURLY_USD = 1000.0
READ = re.compile(r"AWS Price List,? read (\d{4}-\d{2}-\d{2})")


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(TABLE.read_text())
    return data


@dataclass(frozen=True)
class Price:
    usd: float | None
    # Where the price came from ("prices.json of 2026-11", "AWS Price List, read 2026-12-06"),
    # or, when ``usd`` is None, why there is none.
    source: str


class PriceListApi:
    """SageMaker instance-hour prices from the AWS Price List API, cached in the data bucket."""

    def __init__(self, pricing: Any, s3: Any, bucket: str, clock: Callable[[], datetime],
                 prefix: str = "prices/") -> None:  # fmt: skip
        self._pricing = pricing
        self._s3 = s3
        self._bucket = bucket
        self._clock = clock
        self._prefix = prefix
        self._regions: dict[str, dict[str, Any]] = {}
        self._failed: tuple[float, str] | None = None
        self._lock = threading.Lock()

    def hourly(self, region: str, family: str, instance_type: str) -> Price:
        """Never raises: a cost line is unpriced, with the reason, rather than a budget that
        cannot be read."""
        with self._lock:
            cached = self._region(region)
            key = f"{family}/{instance_type}"
            now = self._clock()
            known = _usable(cached["prices"].get(key), now)
            if known is not None:
                return known
            if self._failed and time.monotonic() - self._failed[0] < BACKOFF_S:
                return Price(None, f"the AWS Price List API failed a moment ago ({self._failed[1]})")
            try:
                usd = self._ask(region, cached, USAGE[family], instance_type, now)
            except Exception as exc:  # throttled, denied, unreachable, or an answer not understood
                code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
                self._failed = (time.monotonic(), f"{code or type(exc).__name__}: {str(exc)[:160]}")
                return Price(None, f"the AWS Price List API failed ({self._failed[1]})")
            self._failed = None
            entry = {"usd": usd, "read": now.isoformat()}
            cached["prices"][key] = entry
            self._save(region, cached)
            return _usable(entry, now) or Price(None, "the AWS Price List gave no usable price")

    def _region(self, region: str) -> dict[str, Any]:
        if region not in self._regions:
            found: dict[str, Any] = {}
            try:
                body = self._s3.get_object(Bucket=self._bucket, Key=f"{self._prefix}{region}.json")["Body"].read()
                loaded = json.loads(body)
                if isinstance(loaded, dict) and isinstance(loaded.get("prices"), dict):
                    found = loaded
            except Exception:  # no cache yet, or one that is not ours: asked again
                pass
            found.setdefault("prices", {})
            self._regions[region] = found
        return self._regions[region]

    def _save(self, region: str, cached: dict[str, Any]) -> None:
        try:
            body = json.dumps(cached, sort_keys=True).encode()
            self._s3.put_object(Bucket=self._bucket, Key=f"{self._prefix}{region}.json", Body=body,
                                ContentType="application/json")  # fmt: skip
        except (ClientError, BotoCoreError):
            pass  # a cache: kept in memory for this process, asked again by the next

    def _ask(self, region: str, cached: dict[str, Any], usage: str, instance_type: str, now: datetime) -> float | None:
        prefix = cached.get("usage_prefix")
        if not (isinstance(prefix, str) and PREFIX.fullmatch(prefix) and _when(cached.get("prefix_read"), now)):
            page = self._pricing.get_products(ServiceCode=SERVICE, Filters=[_match("regionCode", region)],
                                              MaxResults=1)  # fmt: skip
            items = [_item(i) for i in page.get("PriceList", [])]
            if not items:
                return None  # SageMaker has no prices in this region
            usagetype = items[0].get("product", {}).get("attributes", {}).get("usagetype")
            head = usagetype.split(":", 1)[0] if isinstance(usagetype, str) else ""
            prefix = head.split("-", 1)[0] if "-" in head else ""
            if not PREFIX.fullmatch(prefix):
                raise ValueError(f"usage type {str(usagetype)[:80]!r} names no region prefix")
            cached["usage_prefix"], cached["prefix_read"] = prefix, now.isoformat()
        usagetype = f"{prefix}-{usage}:{instance_type}" if prefix else f"{usage}:{instance_type}"
        page = self._pricing.get_products(
            ServiceCode=SERVICE, Filters=[_match("regionCode", region), _match("usagetype", usagetype)], MaxResults=10
        )
        found = [usd for item in page.get("PriceList", []) for usd in _on_demand_hourly(_item(item))]
        # Several products for one usage type differ only in what is not billed by the hour;
        # the dearest hourly rate keeps a budget on the safe side.
        return max(found) if found else None


def _match(field: str, value: str) -> dict[str, str]:
    return {"Type": "TERM_MATCH", "Field": field, "Value": value}


def _item(item: Any) -> dict[str, Any]:
    parsed = json.loads(item) if isinstance(item, str) else item
    if not isinstance(parsed, dict):
        raise ValueError("a Price List item is not a JSON object")
    return parsed


def _objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects among a mapping's values (anything else in a Price List is skipped)."""
    return [v for v in value.values() if isinstance(v, dict)] if isinstance(value, dict) else []


def _on_demand_hourly(item: dict[str, Any]) -> list[float]:
    terms = item.get("terms")
    out = []
    for term in _objects(terms.get("OnDemand") if isinstance(terms, dict) else None):
        for dimension in _objects(term.get("priceDimensions")):
            per_unit = dimension.get("pricePerUnit")
            usd = _valid_usd(per_unit.get("USD") if isinstance(per_unit, dict) else None)
            if str(dimension.get("unit", "")).lower().startswith("hr") and usd is not None:
                out.append(usd)
    return out


def _valid_usd(value: Any) -> float | None:
    """A price an instance-hour can have: finite, above 0, at most MAX_HOURLY_USD."""
    try:
        usd = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return usd if math.isfinite(usd) and 0 < usd <= MAX_HOURLY_USD else None


def _when(value: Any, now: datetime, fresh: timedelta = FRESH) -> bool:
    """``value`` is a time (with its zone) in the last ``fresh`` and not in the future."""
    try:
        read = datetime.fromisoformat(str(value))
    except ValueError:
        return False
    if read.tzinfo is None:
        return False
    return now - fresh < read <= now + timedelta(minutes=5)


def _usable(entry: Any, now: datetime) -> Price | None:
    """A cached answer, if it is one this code wrote and is still fresh; else None (ask)."""
    if not isinstance(entry, dict):
        return None
    read = str(entry.get("read", ""))
    if entry.get("usd") is None:
        return Price(None, f"the AWS Price List has no such price (asked {read[:10]})") if _when(
            read, now, NONE_FRESH) else None  # fmt: skip
    usd = _valid_usd(entry.get("usd"))
    if usd is None or not _when(read, now):
        return None
    return Price(usd, f"AWS Price List, read {read[:10]}")


class PriceBook:
    """The shipped table, then the Price List API where a stage enables it."""

    def __init__(self, api: PriceListApi | None = None) -> None:
        self._api = api

    def hourly(self, region: str, family: str, instance_type: str) -> Price:
        shipped = table()
        value = shipped["regions"].get(region, {}).get(family, {}).get(instance_type)
        if value is not None:
            return Price(float(value), f"prices.json of {shipped['as_of']}")
        if family not in USAGE or not instance_type.startswith("ml."):
            return Price(None, f"no {family} price for {instance_type!r}")
        if self._api is None:
            covered = ", ".join(sorted(shipped["regions"]))
            return Price(None, f"prices.json covers {covered} only, and this stage does not ask the AWS Price List "
                               "API (TUNELOOP_PRICE_LIST_API=1)")  # fmt: skip
        return self._api.hourly(region, family, instance_type)

    def as_of(self, sources: list[str]) -> str:
        """Where the prices of a set of lines come from: the table (its date), the API (the
        latest read), or both. ``sources``: lines' price sources, or costs' own as_of."""
        shipped = f"{table()['as_of']}"
        read = sorted({m for s in sources for m in READ.findall(s)})
        from_table = any(s and ("prices.json" in s or not READ.search(s)) for s in sources)
        if not read:
            return shipped
        listed = f"AWS Price List read {read[-1]}"
        return f"{shipped} (prices.json), {listed}" if from_table else listed


SHIPPED = PriceBook()
