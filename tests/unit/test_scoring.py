"""The generation scorers against values worked out by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from training import scoring


def test_exact_match_collapses_whitespace_only() -> None:
    assert scoring.exact_match("  Paris\n", "Paris") == 1.0
    assert scoring.exact_match("the  answer is 4", "the answer is 4") == 1.0
    assert scoring.exact_match("paris", "Paris") == 0.0  # case counts
    assert scoring.exact_match("Paris.", "Paris") == 0.0  # and punctuation


def test_token_f1_by_hand() -> None:
    # generated: the cat sat (3) · expected: the cat sat down (4) · shared 3
    # precision 3/3, recall 3/4 → F1 = 2·1·0.75 / 1.75 = 6/7
    assert scoring.token_f1("The cat sat.", "the cat sat down") == pytest.approx(6 / 7)
    # repeated tokens count as often as both have them: "a a b" vs "a b b" share a, b → 2
    # precision 2/3, recall 2/3 → F1 2/3
    assert scoring.token_f1("a a b", "a b b") == pytest.approx(2 / 3)
    assert scoring.token_f1("x", "y") == 0.0
    assert scoring.token_f1("", "") == 1.0 and scoring.token_f1("", "y") == 0.0


def test_rouge_l_by_hand() -> None:
    # generated: a b c d (4) · expected: a c e d (4) · LCS "a c d" = 3
    # precision 3/4, recall 3/4 → F1 0.75
    assert scoring.rouge_l("A b c d", "a c e d") == pytest.approx(0.75)
    # generated: police killed the gunman (4) · expected: the gunman was killed by police (6)
    # LCS: "the gunman" or "police killed"... longest in order is 2 → P 2/4, R 2/6 → F1 0.4
    assert scoring.lcs(["police", "killed", "the", "gunman"], ["the", "gunman", "was", "killed", "by", "police"]) == 2
    assert scoring.rouge_l("police killed the gunman", "the gunman was killed by police") == pytest.approx(0.4)
    assert scoring.rouge_l("", "") == 1.0 and scoring.rouge_l("a", "b") == 0.0


def test_json_scorers() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    assert scoring.json_valid(' {"city": "Oslo"} ') == 1.0
    assert scoring.json_valid("{city: Oslo}") == 0.0
    assert scoring.json_schema('{"city": "Oslo", "n": 3}', schema) == 1.0
    assert scoring.json_schema('{"city": "Oslo", "n": -1}', schema) == 0.0  # below the minimum
    assert scoring.json_schema('{"n": 3}', schema) == 0.0  # city is required
    assert scoring.json_schema("not json", schema) == 0.0
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        scoring.check_schema({"type": "no-such-type"})


def test_regex_matches_the_whole_generation() -> None:
    assert scoring.regex_match(" 2026-12-01 ", r"\d{4}-\d{2}-\d{2}") == 1.0
    assert scoring.regex_match("on 2026-12-01", r"\d{4}-\d{2}-\d{2}") == 0.0


def test_score_all_and_the_options_scorers_need() -> None:
    pairs = [("4", "4"), ("five", "5")]
    assert scoring.score_all(["exact_match", "json_valid"], pairs) == {"exact_match": [1.0, 0.0],
                                                                       "json_valid": [1.0, 0.0]}  # fmt: skip
    with pytest.raises(ValueError, match=r"generation\.regex"):
        scoring.scorer("regex_match", {})
    with pytest.raises(ValueError, match=r"generation\.json_schema"):
        scoring.scorer("json_schema", {})
    with pytest.raises(ValueError, match="unknown scorer"):
        scoring.scorer("bleu")


def bounded(call: Any, limit_s: float = 10) -> Any:
    """``call()``'s answer, which must come within ``limit_s`` (it runs in a daemon thread:
    an unbounded match would otherwise hold the test for minutes, or hours)."""
    import threading

    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(call()), daemon=True)
    thread.start()
    thread.join(limit_s)
    assert answer, f"no answer within {limit_s}s"
    return answer[0]


@pytest.mark.parametrize("runaway", [r"(a+)+$", r"(a|aa)+$"])
def test_a_catastrophic_pattern_cannot_burn_the_job(runaway: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """(a+)+$ or (a|aa)+$ on 'aaaa…!' backtracks exponentially under Python's re (hours at
    40 a's). The regex module takes the first in linear time and stops the second at the
    time bound: either way no match, quickly, whether it is the project's regex or a
    pattern in its JSON schema (pattern, patternProperties, additionalProperties)."""
    monkeypatch.setattr(scoring, "RUNAWAY", {})
    monkeypatch.setattr(scoring, "RUNAWAY_AFTER", 1)  # dropped at its first timeout, for the order below
    hostile = "a" * 40 + "!"
    assert bounded(lambda: scoring.regex_match("aaaa", runaway)) == 1.0  # a fine match matches
    assert bounded(lambda: scoring.regex_match(hostile, runaway)) == 0.0
    keyed = "^" + runaway.replace("a", "b")
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^" + runaway}},
              "patternProperties": {keyed: {"type": "integer"}}}  # fmt: skip
    assert bounded(lambda: scoring.json_schema(json.dumps({"s": "aaa", "bbb": 1}), schema)) == 1.0
    assert bounded(lambda: scoring.json_schema(json.dumps({"s": "aaa", "b" * 40 + "!": "x"}), schema)) == 1.0
    assert bounded(lambda: scoring.json_schema(json.dumps({"s": hostile}), schema)) == 0.0
    closed = {"type": "object", "patternProperties": {"^" + runaway.replace("a", "c"): {}},
              "additionalProperties": False}  # fmt: skip
    assert bounded(lambda: scoring.json_schema(json.dumps({"c" * 40 + "!": 1}), closed)) == 0.0


def test_a_pattern_that_ran_out_of_time_costs_the_job_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each runaway pattern costs the job its time bound RUNAWAY_AFTER times, however many
    generations: then the regex engine is never asked to run it again, and RUNAWAY (which
    the evaluation reports) says how often it ran out."""
    import regex

    monkeypatch.setattr(scoring, "RUNAWAY", {})
    runs: list[str] = []
    real = regex.fullmatch
    monkeypatch.setattr(regex, "fullmatch", lambda pattern, *a, **k: (runs.append(pattern), real(pattern, *a, **k))[1])
    assert [scoring.regex_match("a" * 40 + "!", r"(a|aa)+$") for _ in range(100)] == [0.0] * 100
    assert runs == [r"(a|aa)+$"] * scoring.RUNAWAY_AFTER
    assert scoring.RUNAWAY == {r"(a|aa)+$": scoring.RUNAWAY_AFTER}


def test_a_schema_whose_patterns_jsonschema_would_match_unbounded_is_refused() -> None:
    """unevaluatedProperties with patternProperties: jsonschema matches those patterns
    itself, with Python's re, where no time bound reaches."""
    from chalicelib.domain.project import ConfigError, normalise_config
    from tests.conftest import DEMO_CONFIG

    schema = {"type": "object", "allOf": [{"patternProperties": {"^(a|aa)+$": {}}}], "unevaluatedProperties": False}
    with pytest.raises(ValueError, match="unevaluatedProperties with patternProperties"):
        scoring.scorer("json_schema", {"json_schema": schema})
    config = {**DEMO_CONFIG, "generation": {"scorers": ["json_schema"], "json_schema": schema}}
    with pytest.raises(ConfigError, match="unevaluatedProperties") as info:
        normalise_config(config)
    assert info.value.field == "generation.json_schema"


@pytest.mark.parametrize("reference", ["http://127.0.0.1:9/evil.json", "file:///etc/passwd", "other.json#/x"])
def test_a_schema_that_reaches_outside_itself_is_refused(reference: str) -> None:
    """A reference outside the schema would have the evaluate job fetch it (and what it
    fetched could hold any pattern): only references within the schema are taken, and
    the validator resolves nothing else, ever."""
    from chalicelib.domain.project import ConfigError, normalise_config
    from tests.conftest import DEMO_CONFIG

    schema = {"type": "object", "unevaluatedProperties": False, "allOf": [{"$ref": reference}]}
    with pytest.raises(ValueError, match="points outside the schema"):
        scoring.scorer("json_schema", {"json_schema": schema})
    with pytest.raises(ConfigError, match="points outside the schema"):
        normalise_config({**DEMO_CONFIG, "generation": {"scorers": ["json_schema"], "json_schema": schema}})
    local = {"$defs": {"city": {"type": "string"}}, "type": "object", "properties": {"c": {"$ref": "#/$defs/city"}}}
    assert scoring.json_schema('{"c": "Oslo"}', local) == 1.0 and scoring.json_schema('{"c": 1}', local) == 0.0
    # Even a schema that was never checked fetches nothing: the reference is simply unresolvable.
    import referencing.exceptions

    with pytest.raises(referencing.exceptions.Unresolvable):
        scoring.json_schema('{"c": 1}', {"properties": {"c": {"$ref": reference}}})
