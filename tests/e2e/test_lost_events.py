"""Events lost on their way (the router drops them, as a failed async invoke would): the
reconciler's sweeper asks SageMaker and moves the run anyway; the late real event is a no-op."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.domain import names
from tests.conftest import DEMO_CONFIG
from tests.e2e.conftest import REPO, http, local_cloud, s3, tuneloop, wait_for

pytestmark = pytest.mark.e2e
LOST = {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Processing Job State Change"]}


@pytest.fixture
def lossy_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, dict[str, Any]]]:
    monkeypatch.setenv("TUNELOOP_DROP_EVENTS", json.dumps(LOST))
    monkeypatch.setenv("TUNELOOP_SWEEP_GRACE_S", "3")
    monkeypatch.setenv("TUNELOOP_SCHEDULE_INTERVAL_S", "2")
    with local_cloud(tmp_path / "home") as started:
        yield started


def test_the_sweeper_moves_a_run_whose_job_events_were_lost(lossy_cloud: tuple[Path, dict[str, Any]]) -> None:
    home, state = lossy_cloud
    config = {
        **DEMO_CONFIG,
        "training": {**DEMO_CONFIG["training"], "hyperparameters": {"max_steps": 6, "batch_size": 8}},
        # Six steps teach little: this run is about lost events, not whether its model is worth serving.
        "gates": {"metrics": {}, "compare_baseline": False},
        "deployment": {"mode": "none"},
    }
    assert http(state, "POST", "/projects", {"name": "demo", "config": config})[0] == 201
    data = (REPO / "examples" / "data" / "reviews.jsonl").read_bytes()
    s3(state).put_object(Bucket=state["bucket"], Key="datasets/demo/lossy/reviews.jsonl", Body=data)
    run_id = wait_for(lambda: http(state, "GET", "/runs?project=demo")[1]["runs"], 60)[0]["run_id"]
    run = wait_for(lambda: (r := http(state, "GET", f"/runs/{run_id}")[1])["state"] == "registered" and r, 300)

    # Every processing job's events were dropped: the prepare and evaluate steps moved on
    # what Describe said, under derived ids; training's own events moved the rest.
    prepare, evaluate = (
        names.job_name(run_id, "prepare", stage="local"),
        names.job_name(run_id, "evaluate", stage="local"),
    )
    moved = {h["event_id"]: (h["from"], h["to"]) for h in run["history"]}
    assert moved[f"sweep-{prepare}:completed"] == ("preparing", "training")
    assert moved[f"sweep-{evaluate}:completed"] == ("evaluating", "gating")
    dropped = [json.loads(line)["event"] for line in (home / "dropped-events.jsonl").read_text().splitlines()]
    finals = [e for e in dropped if e["detail"]["ProcessingJobName"] == prepare
              and e["detail"]["ProcessingJobStatus"] == "Completed"]  # fmt: skip
    assert len(finals) == 1

    # The real event arrives late, under its own id: nothing changes.
    late = home / "late.json"
    late.write_text(json.dumps(finals[0]))
    assert "on_sagemaker_event" in tuneloop(home, "event", "send", str(late)).stdout
    wait_for(lambda: "already applied" in (home / "logs" / "host.log").read_text(), 30)
    assert http(state, "GET", f"/runs/{run_id}")[1]["history"] == run["history"]
