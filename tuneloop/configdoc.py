"""docs/config.md and docs/config.schema.json: the project config reference, written from
the JSON Schema the validator carries (``chalicelib.domain.project.project_schema``), so the
reference, the API's ``GET /config/schema`` and the dashboard's editor say the same.
``tuneloop docs`` writes them; ``tuneloop docs --check`` fails when they are out of date."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chalicelib.domain.project import project_schema

HEADER = """# Project config reference

Every field of a project's config (`POST /projects`, `PUT /projects/{name}`,
`tuneloop project create|update --file`), with its type, default, limits and meaning.
A field left out, or `null`, takes its default. This page and
[config.schema.json](config.schema.json) are generated from the validator that enforces
the config (`tuneloop docs`); `GET /config/schema` serves the same schema. What a schema
cannot say (checks across fields: a gate on a metric the task does not measure, spot's
`max_wait_s` over `max_runtime_s`, a stage's limits) the API still refuses, naming the field.

For how to write one, with examples per task, see [configuration.md](configuration.md).
"""


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:  # a hyperparameter: its type, or that as a string (or "auto")
        auto = ' or `"auto"`' if len(schema["anyOf"]) > 2 else ""
        return f"{_type(schema['anyOf'][0])} (or a string of one){auto}"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"] if v is not None)
    kinds = schema.get("type", "any")
    kinds = [k for k in kinds if k != "null"] if isinstance(kinds, list) else [kinds]
    text = " or ".join(kinds)
    if "array" in kinds and isinstance(schema.get("items"), dict) and "enum" in schema["items"]:
        text += " of " + ", ".join(f"`{v}`" for v in schema["items"]["enum"])
    return text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _limits(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return _limits(schema["anyOf"][0])
    parts = []
    if "minimum" in schema and "maximum" in schema:
        parts.append(f"{_number(schema['minimum'])} to {_number(schema['maximum'])}")
    elif "minimum" in schema:
        parts.append(f"at least {_number(schema['minimum'])}")
    elif "maximum" in schema:
        parts.append(f"at most {_number(schema['maximum'])}")
    if "maxLength" in schema:
        parts.append(f"at most {schema['maxLength']} characters")
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    if schema.get("minItems"):
        parts.append("not empty")
    if schema.get("uniqueItems"):
        parts.append("no repeats")
    if schema.get("minProperties"):
        parts.append("not empty")
    return "; ".join(parts)


def _default(schema: dict[str, Any]) -> str:
    if schema.get("key"):
        return "optional"
    if "default" not in schema:
        return "required"
    value = schema["default"]
    if value is None:
        return "unset"
    if isinstance(value, dict) and "properties" in schema and not _is_keyed_map(schema):
        return "its fields' defaults"
    text = json.dumps(value)
    return f"`{text}`" if len(text) <= 60 else "below"


def _rows(prefix: str, schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, schema) of every leaf under an object schema, depth first."""
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        nested = prop.get("properties")
        free = prop.get("additionalProperties")
        if _is_keyed_map(prop):  # the map, then each name it may have
            yield path, prop
            yield from ((f"{path}.{key}", {**sub, "key": True}) for key, sub in prop["properties"].items())
        elif nested and prop.get("additionalProperties") is False:
            yield from _rows(f"{path}.", prop)
        elif isinstance(free, dict) and free.get("properties"):
            yield path, prop
            yield from _rows(f"{path}.<name>.", free)
        else:
            yield path, prop


def _is_keyed_map(schema: dict[str, Any]) -> bool:
    """An object whose keys are names to pick from (thresholds per metric), not fields."""
    properties = schema.get("properties", {})
    return bool(properties) and all("default" not in p for p in properties.values()) and "default" in schema


def _table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = ["| field | type | default | limits | meaning |", "|---|---|---|---|---|"]
    for path, schema in rows:
        meaning = schema.get("description", "").replace("|", "\\|")
        out.append(f"| `{path}` | {_type(schema)} | {_default(schema)} | {_limits(schema)} | {meaning} |")
    return out


def field_paths(schema: dict[str, Any] | None = None) -> list[str]:
    """Every field the reference lists, by dotted path (the dashboard's list is the same)."""
    return [path for path, _ in _rows("", schema or project_schema())]


def render(schema: dict[str, Any] | None = None) -> str:
    schema = schema or project_schema()
    lines = [HEADER]
    top = [(name, prop) for name, prop in schema["properties"].items() if "properties" not in prop]
    lines += ["## Top level", "", *_table(top), ""]
    for name, prop in schema["properties"].items():
        if "properties" not in prop:
            continue
        lines += [f"## `{name}`", "", prop.get("description", "") + ("" if "default" in prop else " (required)"), ""]
        lines += [*_table(list(_rows(f"{name}.", prop))), ""]
        defaults = {
            path: sub["default"]
            for path, sub in _rows(f"{name}.", prop)
            if "default" in sub and len(json.dumps(sub["default"])) > 60
        }
        for path, value in defaults.items():
            lines += [f"Default of `{path}`:", "", "```json", json.dumps(value, indent=2), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def outputs(folder: Path) -> dict[Path, str]:
    """What `tuneloop docs` writes, by path."""
    return {
        folder / "config.md": render(),
        folder / "config.schema.json": json.dumps(project_schema(), indent=2) + "\n",
    }
