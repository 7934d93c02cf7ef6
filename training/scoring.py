"""Scorers of generated text: each gives one example a score in [0, 1]; a metric is their
mean over the test split (or, during training, a validation sample).

- ``exact_match``: the generation equals the expected completion, whitespace collapsed and
  trimmed (case and punctuation count);
- ``token_f1``: F1 of the tokens the two share (SQuAD's: lowercase, punctuation dropped,
  split on whitespace, each shared token counted as often as both have it);
- ``rouge_l``: ROUGE-L F1 on those tokens (the longest common subsequence, precision and
  recall weighted equally);
- ``json_valid``: the generation parses as JSON;
- ``json_schema``: it parses and validates against the project's JSON schema;
- ``regex_match``: the whole generation (trimmed) matches the project's regular expression.

Two empty texts agree fully (F1 and ROUGE-L 1); one empty against a non-empty one scores 0.

The project's patterns (``regex``, a JSON schema's ``pattern``, ``patternProperties`` and
``additionalProperties``) run on every generation with a time bound (``PATTERN_TIMEOUT_S``,
the ``regex`` module's timeout): a catastrophic pattern such as ``(a|aa)+$`` cannot burn
the job to its MaxRuntime. A match that runs out of time counts as no match, and the
evaluation says which patterns did (``patterns_out_of_time``).
"""

from __future__ import annotations

import json
import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Imported as a job's own module and as training.scoring (tests): spec sits next to it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import spec

SCORERS = spec.SCORERS
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalised(text: str) -> str:
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return text.lower().translate(_PUNCTUATION).split()


def exact_match(generated: str, expected: str) -> float:
    return float(normalised(generated) == normalised(expected))


def token_f1(generated: str, expected: str) -> float:
    ours, theirs = tokens(generated), tokens(expected)
    if not ours or not theirs:
        return float(ours == theirs)
    shared = sum((Counter(ours) & Counter(theirs)).values())
    if not shared:
        return 0.0
    precision, recall = shared / len(ours), shared / len(theirs)
    return 2 * precision * recall / (precision + recall)


def lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(generated: str, expected: str) -> float:
    ours, theirs = tokens(generated), tokens(expected)
    if not ours or not theirs:
        return float(ours == theirs)
    common = lcs(ours, theirs)
    if not common:
        return 0.0
    precision, recall = common / len(ours), common / len(theirs)
    return 2 * precision * recall / (precision + recall)


def json_valid(generated: str) -> float:
    try:
        json.loads(generated.strip())
    except ValueError:
        return 0.0
    return 1.0


def check_schema(schema: Any) -> None:
    """Raise ValueError when ``schema`` is not a valid JSON schema, or one whose patterns
    would run with no time bound (spec.unbounded_patterns)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from exc
    refusal = spec.schema_refusal(schema)
    if refusal:
        raise ValueError(refusal)


# How long one pattern may take on one text before it counts as no match, and how many
# times: a pattern that ran out of time RUNAWAY_AFTER times matches nothing more in this
# job, so each costs the job at most PATTERN_TIMEOUT_S * RUNAWAY_AFTER however many
# generations are scored. RUNAWAY counts each pattern's timeouts; the evaluation reports it.
PATTERN_TIMEOUT_S = 0.25
RUNAWAY_AFTER = 4
RUNAWAY: dict[str, int] = {}


def matches(pattern: str, text: str, whole: bool = False) -> bool:
    """``pattern`` found in ``text`` (``whole``: matching all of it, dot matching newlines),
    within PATTERN_TIMEOUT_S; False when it took longer, and always once it has run out of
    time RUNAWAY_AFTER times."""
    import regex

    if RUNAWAY.get(pattern, 0) >= RUNAWAY_AFTER:
        return False
    try:
        if whole:
            return regex.fullmatch(pattern, text, flags=regex.S, timeout=PATTERN_TIMEOUT_S) is not None
        return regex.search(pattern, text, timeout=PATTERN_TIMEOUT_S) is not None
    except TimeoutError:
        RUNAWAY[pattern] = RUNAWAY.get(pattern, 0) + 1
        if RUNAWAY[pattern] == RUNAWAY_AFTER:
            print(f"pattern {pattern[:80]!r} ran out of time ({PATTERN_TIMEOUT_S} s) {RUNAWAY_AFTER} times; "
                  "it matches nothing more in this job", file=sys.stderr)  # fmt: skip
        return False


def _bounded_validator(schema: Mapping[str, Any]) -> Any:
    """The schema's validator, its ``pattern``, ``patternProperties`` and
    ``additionalProperties`` keywords run with the time bound (jsonschema's own use
    ``re.search``, with none)."""
    import jsonschema

    def pattern(validator: Any, expected: str, instance: Any, _schema: Any) -> Any:
        if validator.is_type(instance, "string") and not matches(expected, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {expected!r}")

    def pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any, _schema: Any) -> Any:
        if not validator.is_type(instance, "object"):
            return
        for expected, subschema in patterns.items():
            for key, value in instance.items():
                if matches(expected, key):
                    yield from validator.descend(value, subschema, path=key, schema_path=expected)

    def additional_properties(validator: Any, allowed: Any, instance: Any, schema: Mapping[str, Any]) -> Any:
        if not validator.is_type(instance, "object"):
            return
        known, patterns = schema.get("properties", {}), list(schema.get("patternProperties", {}))
        extras = [key for key in instance if key not in known and not any(matches(p, key) for p in patterns)]
        if validator.is_type(allowed, "object"):
            for extra in extras:
                yield from validator.descend(instance[extra], allowed, path=extra)
        elif not allowed and extras:
            yield jsonschema.ValidationError(f"additional properties are not allowed ({', '.join(map(repr, extras))})")

    from referencing import Registry

    base = jsonschema.validators.validator_for(schema)
    keywords = {"pattern": pattern, "patternProperties": pattern_properties}
    keywords["additionalProperties"] = additional_properties
    # An empty registry: a reference outside the schema resolves to nothing, never a fetch.
    return jsonschema.validators.extend(base, keywords)(schema, registry=Registry())


def json_schema(generated: str, schema: Mapping[str, Any]) -> float:
    try:
        value = json.loads(generated.strip())
    except ValueError:
        return 0.0
    return float(_bounded_validator(schema).is_valid(value))


def regex_match(generated: str, pattern: str) -> float:
    return float(matches(pattern, generated.strip(), whole=True))


def scorer(name: str, options: Mapping[str, Any] | None = None) -> Callable[[str, str], float]:
    """``name``'s function of (generated, expected); format scorers take their option
    (``json_schema``: the schema, ``regex_match``: ``regex``) from ``options``."""
    options = options or {}
    if name == "exact_match":
        return exact_match
    if name == "token_f1":
        return token_f1
    if name == "rouge_l":
        return rouge_l
    if name == "json_valid":
        return lambda generated, _expected: json_valid(generated)
    if name == "json_schema":
        schema = options.get("json_schema")
        if not isinstance(schema, dict):
            raise ValueError("the json_schema scorer needs generation.json_schema (an object)")
        check_schema(schema)
        return lambda generated, _expected: json_schema(generated, schema)
    if name == "regex_match":
        pattern = options.get("regex")
        if not isinstance(pattern, str):
            raise ValueError("the regex_match scorer needs generation.regex")
        re.compile(pattern)
        return lambda generated, _expected: regex_match(generated, pattern)
    raise ValueError(f"unknown scorer {name!r}; one of {', '.join(SCORERS)}")


def score_all(
    names: list[str], pairs: list[tuple[str, str]], options: Mapping[str, Any] | None = None
) -> dict[str, list[float]]:
    """Each scorer's per-example scores for (generated, expected) pairs."""
    return {name: [scorer(name, options)(g, e) for g, e in pairs] for name in names}
