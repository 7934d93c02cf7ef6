"""The local cloud after a crash and after down/up: nothing queued is lost, nothing is
left running that the next host does not know about."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_CONFIG
from tests.e2e.conftest import REPO, http, s3, tuneloop, wait_for
from tuneloop.local.processes import ProcessRecord

pytestmark = pytest.mark.e2e
DATA = (REPO / "examples" / "data" / "reviews.jsonl").read_bytes()


def datasets(state: dict[str, Any]) -> list[str]:
    """The dataset of each of the project's runs."""
    runs = http(state, "GET", "/runs?project=demo&limit=100")[1]["runs"]
    return [http(state, "GET", f"/runs/{r['run_id']}")[1]["dataset_uri"] for r in runs]


def test_events_queued_while_the_host_is_down_are_delivered(cloud: tuple[Path, dict[str, Any]]) -> None:
    home, state = cloud
    # These runs are about their events: a short training job, no gate or endpoint to wait on.
    config = {
        **DEMO_CONFIG,
        "training": {**DEMO_CONFIG["training"], "hyperparameters": {"max_steps": 2, "batch_size": 8}},
        "gates": {"metrics": {}, "compare_baseline": False},
        "deployment": {"mode": "none"},
    }
    assert http(state, "POST", "/projects", {"name": "demo", "config": config})[0] == 201

    # The host crashes (SIGKILL): moto and DynamoDB Local live on, and so do their queues.
    host = ProcessRecord(state["host_pid"], state["host_started"])
    os.kill(host.pid, signal.SIGKILL)
    wait_for(lambda: not host.running(), 10)
    assert "STOPPED" in tuneloop(home, "status", check=False).stdout
    s3(state).put_object(Bucket=state["bucket"], Key="datasets/demo/while-down/data.jsonl", Body=DATA)

    # up starts the host alone; the upload made while it was down starts its run.
    out = tuneloop(home, "up").stdout
    assert "starting it again" in out, out
    restarted = json.loads((home / "state.json").read_text())
    assert (restarted["moto_pid"], restarted["dynamodb_pid"]) == (state["moto_pid"], state["dynamodb_pid"])
    state = restarted
    wait_for(lambda: any(d.endswith("while-down/data.jsonl") for d in datasets(state)), 60)

    # Down and up, with an upload no host ever saw: `down` keeps the queued event, `up` delivers it.
    host = ProcessRecord(state["host_pid"], state["host_started"])
    os.kill(host.pid, signal.SIGKILL)
    wait_for(lambda: not host.running(), 10)
    # moto puts the upload's event on the queue before it answers the PUT.
    s3(state).put_object(Bucket=state["bucket"], Key="datasets/demo/before-down/data.jsonl", Body=DATA)
    assert "undelivered events" in tuneloop(home, "down").stdout
    tuneloop(home, "up")
    state = json.loads((home / "state.json").read_text())
    wait_for(lambda: any(d.endswith("before-down/data.jsonl") for d in datasets(state)), 60)
    assert len(datasets(state)) == 2  # and the first drop started no second run
