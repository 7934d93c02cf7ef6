"""Prices for every region: the shipped table, then the AWS Price List API (requests and
answers checked against botocore's model by Stubber), cached in the data bucket (moto)."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.cost import endpoint_line, run_cost
from chalicelib.domain.run import HistoryEntry, Run
from chalicelib.domain.states import RunState
from chalicelib.pricing import SHIPPED, PriceBook, PriceListApi
from tests.conftest import BUCKET, T0
from tests.unit.test_cost import described, entry
from tests.unit.test_sagemaker_requests import RUN_ID, tuning_run


def prepared_run() -> Run:
    """A run whose one job is a 360 s processing job on an ml.m5.large."""
    return dataclasses.replace(
        tuning_run(), history=(entry(1, RunState.RECEIVED, RunState.PREPARING, f"tl-{RUN_ID}-prepare-1"),)
    )


def product(usagetype: str, usd: str, unit: str = "Hrs") -> str:
    """One Price List item as the API sends it: a JSON document in a string."""
    return json.dumps({
        "product": {"productFamily": "ML Instance", "sku": "SKU1",
                    "attributes": {"usagetype": usagetype, "servicecode": "AmazonSageMaker"}},
        "serviceCode": "AmazonSageMaker",
        "terms": {"OnDemand": {"SKU1.T": {"priceDimensions": {"SKU1.T.D": {
            "unit": unit, "pricePerUnit": {"USD": usd}, "description": f"${usd} per hour"}}}}},
    })  # fmt: skip


def filters(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in pairs]


def cache(entry: dict[str, Any]) -> dict[str, Any]:
    """A prices/<region>.json as someone with write access to the bucket may have left it."""
    return {"usage_prefix": "EU", "prefix_read": T0.isoformat(), "prices": {"hosting/ml.m5.large": entry}}


def asked(region: str, usagetype: str) -> dict[str, Any]:
    return {"ServiceCode": "AmazonSageMaker", "MaxResults": 10,
            "Filters": filters(("regionCode", region), ("usagetype", usagetype))}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> Any:
        return self.now


@pytest.fixture
def pricing() -> Any:
    return boto3.client("pricing", region_name="us-east-1")


@pytest.fixture
def clean(s3: Any) -> Any:
    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="prices/").get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=o["Key"])
    return s3


def test_a_region_the_table_lacks_is_priced_by_the_price_list_once_then_from_the_bucket(
    pricing: Any, clean: Any
) -> None:
    clock = Clock()
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"PriceList": [product("EU-Notebk:ml.t3.medium", "0.05")]},
                          {"ServiceCode": "AmazonSageMaker", "Filters": filters(("regionCode", "eu-west-1")),
                           "MaxResults": 1})  # fmt: skip
        stub.add_response("get_products", {"PriceList": [product("EU-Train:ml.m5.large", "0.128"),
                                                         product("EU-Train:ml.m5.large", "0.0", unit="Quantity")]},
                          asked("eu-west-1", "EU-Train:ml.m5.large"))  # fmt: skip
        book = PriceBook(PriceListApi(pricing, clean, BUCKET, clock))
        price = book.hourly("eu-west-1", "training", "ml.m5.large")
        assert price.usd == 0.128 and price.source == f"AWS Price List, read {T0:%Y-%m-%d}"
        assert book.hourly("eu-west-1", "training", "ml.m5.large") == price  # from memory: no third call
        stub.assert_no_pending_responses()
    cached = json.loads(clean.get_object(Bucket=BUCKET, Key="prices/eu-west-1.json")["Body"].read())
    assert cached["usage_prefix"] == "EU" and cached["prices"]["training/ml.m5.large"]["usd"] == 0.128

    # Another function (a fresh process) reads the bucket and asks nothing: this Stubber has no answers.
    with Stubber(pricing):
        again = PriceBook(PriceListApi(pricing, clean, BUCKET, clock)).hourly("eu-west-1", "training", "ml.m5.large")
    assert again.usd == 0.128

    clock.now = T0 + timedelta(days=31)  # a month on, the prefix and the price are read again
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"PriceList": [product("EU-Notebk:ml.t3.medium", "0.05")]})
        stub.add_response("get_products", {"PriceList": [product("EU-Train:ml.m5.large", "0.131")]},
                          asked("eu-west-1", "EU-Train:ml.m5.large"))  # fmt: skip
        assert PriceBook(PriceListApi(pricing, clean, BUCKET, clock)).hourly(
            "eu-west-1", "training", "ml.m5.large").usd == 0.131  # fmt: skip


def test_a_run_in_another_region_is_priced_and_says_from_where(pricing: Any, clean: Any) -> None:
    clock = Clock()
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"PriceList": [product("EUW2-Host:ml.c5.large", "0.12")]})
        stub.add_response("get_products", {"PriceList": [product("EUW2-Processing:ml.m5.large", "0.134")]},
                          asked("eu-west-2", "EUW2-Processing:ml.m5.large"))  # fmt: skip
        book = PriceBook(PriceListApi(pricing, clean, BUCKET, clock))
        cost = run_cost(prepared_run(), "eu-west-2", described, lambda job: [], T0, book)
    line = cost["lines"][0]
    assert line["usd"] == round(360 / 3600 * 0.134, 4) and cost["complete"]
    assert line["price_source"].startswith("AWS Price List") and "AWS Price List read" in cost["prices_as_of"]


def test_without_the_price_list_a_line_says_why_it_is_unpriced() -> None:
    cost = run_cost(prepared_run(), "eu-west-1", described, lambda job: [], T0, SHIPPED)
    note = cost["lines"][0]["note"]
    assert cost["lines"][0]["usd"] is None and not cost["complete"]
    assert "prices.json covers us-east-1 only" in note and "TUNELOOP_PRICE_LIST_API=1" in note
    # The shipped region is priced from the table, never from the API.
    assert SHIPPED.hourly("us-east-1", "processing", "ml.m5.large").source.startswith("prices.json of ")


def test_no_price_a_failed_call_and_a_malformed_answer_each_leave_the_line_unpriced_with_the_reason(
    pricing: Any, clean: Any
) -> None:
    clock = Clock()
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"PriceList": [product("APN1-Host:ml.m5.large", "0.149")]})
        stub.add_response("get_products", {"PriceList": []})
        book = PriceBook(PriceListApi(pricing, clean, BUCKET, clock))
        none = book.hourly("ap-northeast-1", "transform", "ml.p9.large")
        assert none.usd is None and "has no such price" in none.source
        assert book.hourly("ap-northeast-1", "transform", "ml.p9.large") == none  # kept a day: not asked again
    with Stubber(pricing) as stub:
        stub.add_client_error("get_products", "AccessDeniedException", "not authorized to perform pricing:GetProducts")
        api = PriceListApi(pricing, clean, BUCKET, clock)
        denied = PriceBook(api).hourly("sa-east-1", "hosting", "ml.m5.large")
        assert denied.usd is None and "AccessDeniedException" in denied.source
        # Within the back-off the API is not asked again (the Stubber has no more answers).
        assert "failed a moment ago" in PriceBook(api).hourly("sa-east-1", "hosting", "ml.m5.xlarge").source
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"PriceList": ["[1, 2]"]})
        odd = PriceBook(PriceListApi(pricing, clean, BUCKET, clock)).hourly("ca-central-1", "hosting", "ml.m5.large")
        assert odd.usd is None and "not a JSON object" in odd.source
    clean.put_object(Bucket=BUCKET, Key="prices/me-south-1.json", Body=b"[not json")
    with Stubber(pricing) as stub:  # a cache that is not ours is asked again, then replaced
        stub.add_response("get_products", {"PriceList": [product("MES1-Host:ml.m5.large", "0.15")]})
        stub.add_response("get_products", {"PriceList": [product("MES1-Host:ml.m5.large", "0.15")]})
        assert PriceBook(PriceListApi(pricing, clean, BUCKET, clock)).hourly("me-south-1", "hosting",
                                                                             "ml.m5.large").usd == 0.15  # fmt: skip


def test_an_unpriced_endpoint_line_says_why() -> None:
    run = dataclasses.replace(prepared_run(), history=(
        HistoryEntry("e1", "x", RunState.DEPLOYING, RunState.DEPLOYED, "r", T0, (), None),))  # fmt: skip
    line = endpoint_line(run, "eu-west-1", T0 + timedelta(hours=2))
    assert line is not None and line["usd"] is None and "prices.json covers" in line["note"]


def test_any_json_the_price_list_or_the_cache_holds_prices_nothing_wrong_and_raises_nothing(
    pricing: Any, clean: Any
) -> None:
    """Odd answers (terms of the wrong type, prices that are not finite, negative or absurd)
    give no price; a cache entry someone else wrote (a negative or NaN price, a read date
    in the future or without a zone, a prefix that is not one) is not believed: asked again."""
    clock = Clock()
    odd_items = [
        json.dumps({"terms": []}),
        json.dumps({"terms": {"OnDemand": "x"}}),
        json.dumps({"terms": {"OnDemand": {"t": {"priceDimensions": {"d": {"unit": "Hrs", "pricePerUnit": "1"}}}}}}),
        product("EU-Host:ml.m5.large", "Infinity"),
        product("EU-Host:ml.m5.large", "-0.5"),
        product("EU-Host:ml.m5.large", "1e9"),
        "[" * 5000 + "]" * 5000,  # nested deeper than the parser goes
    ]
    for n, item in enumerate(odd_items):
        with Stubber(pricing) as stub:
            stub.add_response("get_products", {"PriceList": [product("EU-Host:ml.c5.large", "0.1")]})
            stub.add_response("get_products", {"PriceList": [item]})
            price = PriceBook(PriceListApi(pricing, clean, BUCKET, clock)).hourly("eu-west-1", "hosting", "ml.m5.large")
        assert price.usd is None, (n, price)
        clean.delete_object(Bucket=BUCKET, Key="prices/eu-west-1.json")
    for poisoned in (
        cache({"usd": -1, "read": T0.isoformat()}),
        cache({"usd": "NaN", "read": T0.isoformat()}),
        cache({"usd": 0.01, "read": (T0 + timedelta(days=300)).isoformat()}),
        cache({"usd": 0.01, "read": T0.replace(tzinfo=None).isoformat()}),
        {**cache({}), "usage_prefix": 'EU"-X'},
    ):
        clean.put_object(Bucket=BUCKET, Key="prices/eu-west-1.json", Body=json.dumps(poisoned).encode())
        with Stubber(pricing) as stub:
            if 'EU"' in poisoned["usage_prefix"]:  # a prefix that is not one is read again
                stub.add_response("get_products", {"PriceList": [product("EU-Host:ml.c5.large", "0.1")]})
            stub.add_response("get_products", {"PriceList": [product("EU-Host:ml.m5.large", "0.13")]},
                              asked("eu-west-1", "EU-Host:ml.m5.large"))  # fmt: skip
            price = PriceBook(PriceListApi(pricing, clean, BUCKET, clock)).hourly("eu-west-1", "hosting", "ml.m5.large")
            stub.assert_no_pending_responses()
        assert price.usd == 0.13, poisoned


def test_prices_as_of_names_the_sources_the_lines_used() -> None:
    shipped = SHIPPED.hourly("us-east-1", "training", "ml.m5.large").source
    api = "AWS Price List, read 2026-12-06"
    as_of = SHIPPED.as_of
    table = SHIPPED.hourly("us-east-1", "training", "ml.m5.large").source.removeprefix("prices.json of ")
    assert as_of([shipped]) == table and as_of([]) == table
    assert as_of([api, ""]) == "AWS Price List read 2026-12-06"
    assert as_of([shipped, api]) == f"{table} (prices.json), AWS Price List read 2026-12-06"
    # A month's spend reads its runs' own as_of: the same rule.
    assert as_of(["AWS Price List read 2026-12-06", table]) == f"{table} (prices.json), AWS Price List read 2026-12-06"
