"""The project config's JSON Schema is made from the validator that enforces it, so the two
agree: every example config passes both, and a wrong type, a value outside a field's choices
or limits, or an unknown field fails both, at every field the schema describes. The API
serves it; docs/config.md and docs/config.schema.json are written from it (`tuneloop docs`)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from chalicelib.domain.project import ConfigError, normalise_config, project_schema
from tests.conftest import DEMO_CONFIG, DEMO_TUNED_CONFIG
from tuneloop import configdoc

REPO = Path(__file__).resolve().parents[2]
SCHEMA = project_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
EXAMPLES = {path.name: json.loads(path.read_text())["config"] for path in sorted((REPO / "examples").glob("*.json"))}


def test_the_schema_is_a_valid_json_schema_and_the_docs_are_written_from_it() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert json.loads((REPO / "docs" / "config.schema.json").read_text()) == SCHEMA
    assert (REPO / "docs" / "config.md").read_text() == configdoc.render()
    documented = (REPO / "docs" / "config.md").read_text()
    assert all(f"`{path}`" in documented for path in configdoc.field_paths())
    # Every field says what it is for.
    undocumented = [path for path, field in leaves(SCHEMA) if not field.get("description")]
    assert undocumented == []


@pytest.mark.parametrize("name", [*EXAMPLES, "demo", "demo-tuned"])
def test_every_example_and_its_normalised_form_pass_both(name: str) -> None:
    config = {"demo": DEMO_CONFIG, "demo-tuned": DEMO_TUNED_CONFIG}.get(name) or EXAMPLES[name]
    assert list(VALIDATOR.iter_errors(config)) == []
    normalised = normalise_config(config)
    assert list(VALIDATOR.iter_errors(normalised)) == []
    assert normalise_config(normalised) == normalised


def leaves(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for name, field in schema.get("properties", {}).items():
        path = (*prefix, name)
        yield path, field
        yield from leaves(field, path)


def with_value(config: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    at = changed
    for name in path[:-1]:
        at = at.setdefault(name, {}) if isinstance(at.get(name), dict) or name not in at else at[name]
    at[path[-1]] = value
    return changed


def wrong_values(field: dict[str, Any]) -> Iterator[Any]:
    """Values outside what the field's schema allows, of each kind it can be wrong in."""
    if "anyOf" in field:  # a hyperparameter: its JSON type, or that as a string
        shape = field["anyOf"][0]
        yield from (v for v in wrong_values(shape) if not isinstance(v, str))
        yield "not a value"
        return
    kinds = set(field["type"]) if isinstance(field.get("type"), list) else {field.get("type")}
    if "enum" in field:
        yield "not-one-of-them"
    if kinds & {"integer", "number"}:
        yield "7"
        if "minimum" in field:
            yield field["minimum"] - 1
        if "maximum" in field:
            yield field["maximum"] + 1
        if "integer" in kinds:
            yield 1.5
    if "string" in kinds:
        yield 7
        if "pattern" in field:
            yield "not an instance"
    if "boolean" in kinds:
        yield "yes"
    if "object" in kinds:
        yield [1]
    if "array" in kinds:
        yield {"a": 1}


def base_for(path: tuple[str, ...]) -> dict[str, Any]:
    """A valid config in which the field at ``path`` is in play."""
    if path[0] == "tuning":
        return copy.deepcopy(DEMO_TUNED_CONFIG)
    if path[0] == "generation" or path[-1].startswith("dpo_") or path == ("training", "method"):
        return copy.deepcopy(EXAMPLES["llm-project.json"])
    return copy.deepcopy(DEMO_CONFIG)


CASES = [
    (path, value)
    for path, field in leaves(SCHEMA)
    if "<" not in "".join(path) and not field.get("key")
    for value in wrong_values(field)
]


@pytest.mark.parametrize("path,value", CASES, ids=[f"{'.'.join(p)}={v!r}"[:60] for p, v in CASES])
def test_a_value_the_schema_refuses_the_validator_refuses_at_that_field(path: tuple[str, ...], value: Any) -> None:
    config = with_value(base_for(path), path, value)
    assert list(VALIDATOR.iter_errors(config)), f"the schema accepts {'.'.join(path)}={value!r}"
    with pytest.raises(ConfigError) as info:
        normalise_config(config)
    assert info.value.field.startswith(".".join(path)), (info.value.field, info.value.message)


@pytest.mark.parametrize(
    "path", [("colour",), ("training", "colour"), ("drift", "thresholds", "prediction_psy"),
             ("quality", "thresholds", "production_acuracy"), ("training", "hyperparameters", "learning_rat")]
)  # fmt: skip
def test_an_unknown_field_or_metric_name_fails_both(path: tuple[str, ...]) -> None:
    config = with_value(base_for(path), path, 0.5)
    assert list(VALIDATOR.iter_errors(config))
    with pytest.raises(ConfigError) as info:
        normalise_config(config)
    assert info.value.field == ".".join(path)
