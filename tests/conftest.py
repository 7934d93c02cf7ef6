"""Shared fixtures. Services are real: DynamoDB Local (AWS's jar) and moto server,
started once per test session on free loopback ports and stopped at the end."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aws_xray_sdk import global_sdk_config
from aws_xray_sdk.core import xray_recorder
from aws_xray_sdk.core.context import Context

from chalicelib.domain.events import Comparison
from tuneloop.local import sigv4
from tuneloop.local.services import Service, aws_env, start_dynamodb_local, start_moto

# On N workers, each worker's PyTorch processes get 1/N of the cores: torch's default of a
# thread per core, times N workers, oversubscribes the machine, and OpenMP threads that
# wait for a descheduled sibling spin (measured on 2 cores: the classifier fixture's
# fine-tune took 86 s of CPU next to a busy worker, 28 s alone). Jobs inherit it; the
# local tuner splits it between parallel trials. Set before anything imports torch.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

EVENTS = Path(__file__).parent / "events"
BUCKET = "tuneloop-test"
# The stage the functional and integration tests run as: the prefix of every name (tl-test-…).
STAGE = "test"


def load_event(name: str, **overrides: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / f"{name}.json").read_text())
    for dotted, value in overrides.items():
        target = event
        *path, last = dotted.split("__")
        for part in path:
            target = target[part]
        target[last] = value
    return event


T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true (and return that), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not met within {timeout:.0f}s")


@pytest.fixture(scope="session")
def local_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    logs = tmp_path_factory.mktemp("service-logs")
    credentials = sigv4.generate()  # the services answer these and nothing else
    dynamodb = start_dynamodb_local(credentials, log_path=logs / "dynamodb.log")
    moto = start_moto(credentials, log_path=logs / "moto.log")
    saved = dict(os.environ)
    os.environ.update(aws_env(dynamodb.endpoint, moto.endpoint, credentials))
    os.environ["TUNELOOP_BUCKET"] = BUCKET
    try:
        yield {"dynamodb": dynamodb, "moto": moto}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        moto.stop()
        dynamodb.stop()


@pytest.fixture
def settings(local_services: dict[str, Service]) -> Iterator[Any]:
    """Fresh tables (unique names) for one test, bound to the PynamoDB models."""
    import boto3

    from chalicelib import models
    from chalicelib.config import Settings
    from tuneloop.local import template

    prefix = f"t{uuid.uuid4().hex[:10]}"
    config = Settings(
        stage=STAGE,
        region="us-east-1",
        bucket=BUCKET,
        projects_table=f"{prefix}-projects",
        runs_table=f"{prefix}-runs",
        outbox_stale_s=0,
    )
    models.bind(config)
    template.create_tables_for(config, boto3.client("dynamodb", region_name=config.region))
    yield config
    for model in (models.ProjectModel, models.RunModel):
        model.delete_table()


@pytest.fixture
def deps(settings: Any) -> Iterator[Any]:
    from chalicelib import deps as deps_module

    built = deps_module.build(settings)
    deps_module.override(built)
    yield built
    deps_module.override(None)


@pytest.fixture
def service(deps: Any) -> Any:
    return deps.service


# What the evaluation of a first classifier says when it beats the majority class.
BEATS_BASELINE = Comparison(metric="macro_f1", challenger=0.9, champion=0.33, low=0.4, high=0.7, confidence=0.95,
                            rows=26, differing_rows=13,
                            against="the majority-class predictor ('negative', 50% of the training split)")  # fmt: skip

# The demo project tunes; most tests want its single-training-job twin.
DEMO_TUNED_CONFIG = json.loads((Path(__file__).parents[1] / "examples" / "demo-project.json").read_text())["config"]
DEMO_CONFIG = {k: v for k, v in DEMO_TUNED_CONFIG.items() if k != "tuning"}


class Collecting:
    """An emitter that keeps the segments instead of sending them to a daemon."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_entity(self, entity: Any) -> None:
        self.sent.append(entity)

    def set_daemon_address(self, address: str) -> None:  # pragma: no cover - interface
        pass


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """X-Ray switched on for one test, its segments collected in memory."""
    monkeypatch.delenv("AWS_XRAY_SDK_ENABLED", raising=False)  # the env var would win over the call below
    was_enabled = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    emitter = Collecting()
    xray_recorder.configure(emitter=emitter, context=Context(), sampling=False, context_missing="IGNORE_ERROR")
    segment = xray_recorder.begin_segment("tuneloop-test")
    yield segment
    xray_recorder.end_segment()
    global_sdk_config.set_sdk_enabled(was_enabled)


# `make test` and `make test-slow` run on two workers (pytest-xdist). Tests that share an expensive
# module or session fixture, or read what an earlier test of their module left, stay on
# one worker, in order; every other test goes wherever a worker is free.
XDIST_GROUPS = {
    "tests/training/test_smollm2.py": "smollm2",  # its own fine-tune, beside the MiniLM one (first match wins)
    "tests/training/": "training",  # one MiniLM fine-tune (the classifier fixture) serves them all
    "tests/integration/test_sagemaker_server.py": "sagemaker-server",
    "tests/functional/test_fuzz.py": "fuzz",  # its last test reads the fuzz's tallies
    "tests/unit/test_template.py": "template",
}


# The longest scopes, in seconds on a worker of two (a clean clone's CI), handed out first:
# xdist gives each worker two scopes ahead, so a long one given late runs alone at the end.
# Only the order of the hand-out depends on these; the rest follow, the largest groups first.
LONGEST_S = {
    "tests/e2e/test_llm.py::test_the_llm_demo": 500,
    "training": 310,
    "tests/e2e/test_llm.py::test_a_tiny_decoder": 260,
    "smollm2": 190,
    "tests/e2e/test_local_cloud.py::": 150,
    "sagemaker-server": 125,
    "tests/e2e/test_chaos.py::": 100,
}


def expected_s(scope: str) -> int:
    return next((seconds for prefix, seconds in LONGEST_S.items() if scope.startswith(prefix)), 0)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's own ``--dist loadgroup`` marks groups by rewriting ``item._nodeid``, which
    pytest 9 no longer reads (node ids live in ``_id``): its groups silently spread over
    workers. This scheduler reads XDIST_GROUPS from the node id instead, and hands the
    scopes out longest first (LONGEST_S)."""
    from collections import OrderedDict

    from xdist.scheduler import LoadScopeScheduling

    class Grouped(LoadScopeScheduling):  # type: ignore[misc]
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the queue is whole by the first hand-out
                self.ordered = True
                queue = sorted(self.workqueue.items(), key=lambda unit: -expected_s(unit[0]))  # stable
                self.workqueue = OrderedDict(queue)
            super()._assign_work_unit(node)

    return Grouped(config, log)


def xdist_scope(nodeid: str) -> str:
    """What runs together on one worker: a group's tests, or a test alone."""
    for prefix, group in XDIST_GROUPS.items():
        if nodeid.startswith(prefix):
            return group
    return nodeid


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.policy_check import USAGE_DIR

    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        for old in USAGE_DIR.glob("*.json"):
            old.unlink()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.policy_check import Used, save_usage

    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    if Used.statements:
        save_usage(worker)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Least privilege, measured: the policy statements no function's call needed."""
    from tests.policy_check import unused_statements

    unused = unused_statements()
    if unused:
        terminalreporter.write_sep("-", "policy statements no call in the functional tests needed")
        for name, sids in unused.items():
            terminalreporter.write_line(f"{name}: {', '.join(sids) or '(every statement was used)'}")
