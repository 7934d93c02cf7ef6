"""The local cloud's resources come from the template CloudFormation gets, and the code's
own description of them (PynamoDB's models) is the template's."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib import models
from tuneloop.local import template

BUCKET = "tuneloop-local"


def keys(schema: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(k["AttributeName"], k["KeyType"]) for k in schema}


def index(name: str, key_schema: Any, projection: Any) -> tuple[str, frozenset[tuple[str, str]], str]:
    return name, frozenset(keys(key_schema)), projection["ProjectionType"]


@pytest.mark.parametrize("model", [models.ProjectModel, models.RunModel], ids=lambda m: m.__name__)
def test_each_model_is_the_templates_table(model: Any) -> None:
    """PynamoDB must know the keys and indexes the template creates (it queries by them):
    the same keys, attribute types, indexes and projections, or the test names the table."""
    suffix = model.Meta.table_name.rsplit("-", 1)[1]
    requests = {r["TableName"]: r for r in template.table_requests(template.load("local", BUCKET))}
    table = requests[f"tuneloop-local-{suffix}"]
    schema = model._get_schema()
    assert keys(schema["key_schema"]) == keys(table["KeySchema"])
    ours = {(a["AttributeName"], a["AttributeType"]) for a in schema["attribute_definitions"]}
    assert ours == {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]}
    mine = {
        index(i["index_name"], i["key_schema"], i["projection"]) for i in schema.get("global_secondary_indexes", [])
    }
    theirs = {index(i["IndexName"], i["KeySchema"], i["Projection"]) for i in table.get("GlobalSecondaryIndexes", [])}
    assert mine == theirs
    assert table["BillingMode"] == "PAY_PER_REQUEST"


def test_every_resource_kind_of_the_merge_template_is_honoured_or_named() -> None:
    resources = template.load("local", BUCKET)
    kinds = {r["Type"] for r in resources.values() if "Type" in r}
    unknown = kinds - set(template.HONOURED) - set(template.NOT_HONOURED)
    assert not unknown, f"the template has resource kinds the local cloud neither honours nor names: {unknown}"
    assert set(template.NOT_HONOURED_RESOURCES) <= set(resources), "a resource named as not made here is gone"
    line = template.summary(resources)
    assert line.startswith("template: ") and "unknown" not in line and "SNS::Topic" in line, line
