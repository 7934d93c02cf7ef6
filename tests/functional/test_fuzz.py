"""A bounded fuzz of every API route (issue 11): hostile path parameters, query strings
and bodies (any JSON value, near-valid configs with one field replaced, bytes that are
not JSON) must get a 4xx with a reason, never a 5xx. Seeded, so a failure reproduces."""

from __future__ import annotations

import copy
import json
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DEMO_TUNED_CONFIG
from tests.functional.conftest import Api

pytestmark = pytest.mark.integration

ROUTES = [
    ("POST", "/projects"),
    ("GET", "/projects"),
    ("GET", "/projects/{name}"),
    ("PUT", "/projects/{name}"),
    ("POST", "/projects/{name}/drift-check"),
    ("POST", "/projects/{name}/feedback"),
    ("GET", "/projects/{name}/feedback"),
    ("GET", "/projects/{name}/status"),
    ("GET", "/projects/{name}/endpoint"),
    ("GET", "/config/schema"),
    ("POST", "/runs"),
    ("GET", "/runs"),
    ("GET", "/runs/{run_id}"),
    ("POST", "/runs/{run_id}/stop"),
    ("POST", "/runs/{run_id}/retrain"),
    ("POST", "/runs/{run_id}/approve"),
    ("POST", "/runs/{run_id}/reject"),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "demo", "s3://", "ml.p5.48xlarge", "macro_f1", "../../etc", "a" * 300]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
path_params = st.one_of(
    st.text(min_size=1, max_size=80),
    st.sampled_from(["demo", "aaaaaaaaaaaa", "tl-x", "%00", "..", "a" * 300, "DEMO", "run id"]),
)


def paths(config: Any) -> list[tuple[Any, ...]]:
    """Every key path into a config (to replace one field)."""
    out: list[tuple[Any, ...]] = []

    def walk(value: Any, at: tuple[Any, ...]) -> None:
        out.append(at)
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, (*at, key))

    walk(config, ())
    return out


CONFIG_PATHS = paths(DEMO_TUNED_CONFIG)
valid_names = st.from_regex(r"[a-z][a-z0-9]{0,15}", fullmatch=True)


@st.composite
def near_valid_config(draw: Any) -> Any:
    config = copy.deepcopy(DEMO_TUNED_CONFIG)
    if draw(st.integers(0, 3)) == 0:
        return config  # valid: the request gets through to the store
    where = draw(st.sampled_from(CONFIG_PATHS))
    value = draw(json_values)
    if not where:
        return value
    target = config
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return config


@st.composite
def bodies(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["json", "project", "run", "feedback", "raw"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "project":
        name = draw(st.one_of(valid_names, valid_names, path_params, json_values))
        return json.dumps({"name": name, "config": draw(near_valid_config())}).encode()
    if kind == "run":
        body = {"project": draw(st.one_of(st.just("demo"), json_values)),
                "dataset_uri": draw(st.one_of(st.just("s3://tuneloop-test/datasets/demo/x.jsonl"), json_values)),
                "reason": draw(json_values)}  # fmt: skip
        return json.dumps(body).encode()
    if kind == "feedback":
        good = st.fixed_dictionaries({"inference_id": st.text(min_size=1, max_size=70), "label": st.text(max_size=10)})
        return json.dumps({"labels": draw(st.lists(st.one_of(good, json_values), max_size=5))}).encode()
    return draw(st.binary(max_size=200))


@st.composite
def requests(draw: Any) -> tuple[str, str, bytes]:
    method, template = draw(st.sampled_from(ROUTES))
    path = template
    for name in ("{name}", "{run_id}"):
        if name in path:
            path = path.replace(name, urllib.parse.quote(draw(path_params), safe=""))
    if method == "GET" and draw(st.booleans()):
        query = {
            key: draw(st.one_of(st.text(max_size=60), st.integers(-5, 10**6).map(str)))
            for key in draw(st.sets(st.sampled_from(["next_token", "limit", "project", "state", "hours"]), max_size=5))
        }
        path += "?" + urllib.parse.urlencode(query)
    body = draw(bodies()) if method in ("POST", "PUT") else b""
    return method, path, body


SEEN: dict[int, int] = {}


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests())
def test_no_request_gets_a_5xx(api: Api, demo: dict[str, Any], s3: Any, request: tuple[str, str, bytes]) -> None:
    method, path, body = request
    status, answer = api.call(method, path, body)
    SEEN[status] = SEEN.get(status, 0) + 1
    assert status < 500, (method, path, body[:300], answer)
    if status >= 400:
        assert isinstance(answer, dict) and (answer.get("Message") or answer.get("message")), answer


def test_the_fuzz_reached_the_app() -> None:
    """Runs after the fuzz (same module, in order): the requests reached the handlers
    (validation 400s, successes, conflicts), not only the router's 404s."""
    assert sum(SEEN.values()) >= 400, SEEN
    assert SEEN.get(400, 0) >= 50 and sum(n for s, n in SEEN.items() if s < 300) >= 10 and len(SEEN) >= 4, SEEN
