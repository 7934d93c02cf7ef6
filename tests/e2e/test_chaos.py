"""Chaos on the local cloud: the app host SIGKILLed (by PID) at random moments of real
runs — while jobs are created, while they run, mid-commit — and started again with `up`.
Every run must end where it would have without the crashes: no drop lost (drops uploaded
while the host was down included), no job started twice, no run stuck, no process orphaned.

The seed is printed; TUNELOOP_CHAOS_SEED replays a sequence, TUNELOOP_CHAOS_ROUNDS sets
how many crashes (3 keeps the suite quick)."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.domain import names
from tests.conftest import DEMO_CONFIG
from tests.e2e.conftest import REPO, client, http, local_cloud, s3, tuneloop, wait_for
from tuneloop.local.processes import ProcessRecord

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DATA = (REPO / "examples" / "data" / "reviews.jsonl").read_bytes()
CONFIG = {
    **DEMO_CONFIG,
    "training": {**DEMO_CONFIG["training"], "hyperparameters": {"max_steps": 8, "batch_size": 8}},
    # Eight steps teach little: these runs are about events and crashes, not whether a model is worth serving.
    "gates": {"metrics": {}, "compare_baseline": False},
    "deployment": {"mode": "none"},
}
TERMINAL = {"registered", "completed", "superseded", "rejected", "rolled_back", "failed", "stopped"}


@pytest.fixture
def chaos_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, dict[str, Any]]]:
    monkeypatch.setenv("TUNELOOP_SWEEP_GRACE_S", "5")
    monkeypatch.setenv("TUNELOOP_SCHEDULE_INTERVAL_S", "2")
    with local_cloud(tmp_path / "home") as started:
        yield started


def state_of(home: Path) -> dict[str, Any]:
    return dict(json.loads((home / "state.json").read_text()))


def kill_host(home: Path) -> None:
    state = state_of(home)
    host = ProcessRecord(state["host_pid"], state["host_started"])
    os.kill(host.pid, signal.SIGKILL)
    wait_for(lambda: not host.running(), 10)


def jobs(state: dict[str, Any]) -> list[str]:
    sagemaker = client(state, "sagemaker")
    processing = sagemaker.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]
    training = sagemaker.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
    return [j["ProcessingJobName"] for j in processing] + [j["TrainingJobName"] for j in training]


def test_runs_survive_host_crashes_at_random_moments(chaos_cloud: tuple[Path, dict[str, Any]]) -> None:
    home, state = chaos_cloud
    seed = int(os.environ.get("TUNELOOP_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    rounds = int(os.environ.get("TUNELOOP_CHAOS_ROUNDS", "3"))
    rng = random.Random(seed)
    began = time.monotonic()
    assert http(state, "POST", "/projects", {"name": "demo", "config": CONFIG})[0] == 201
    drops: list[str] = []
    kills: list[str] = []

    def drop(name: str) -> None:
        s3(state_of(home)).put_object(Bucket=state["bucket"], Key=f"datasets/demo/{name}/reviews.jsonl", Body=DATA)
        drops.append(name)

    drop("first")
    for n in range(rounds):
        delay = rng.uniform(0.5, 20.0)
        time.sleep(delay)  # the crash's random moment: the point of the test, not a wait for something
        runs = http(state_of(home), "GET", "/runs?project=demo&limit=100")[1]["runs"]
        kill_host(home)
        kills.append(f"{delay:.1f}s into round {n + 1} ({', '.join(sorted(r['state'] for r in runs))})")
        if rng.random() < 0.5:
            drop(f"while-down-{n}")  # moto is up: the event waits in its queue
        tuneloop(home, "up")
        if rng.random() < 0.5:
            drop(f"after-{n}")

    state = state_of(home)

    def settled() -> list[dict[str, Any]] | None:
        runs = http(state, "GET", "/runs?project=demo&limit=100")[1]["runs"]
        return runs if len(runs) >= len(drops) and all(r["state"] in TERMINAL for r in runs) else None

    try:
        runs = wait_for(settled, 420)
    finally:
        print(f"\nchaos seed {seed}: {rounds} host kills at {'; '.join(kills)}")
    details = [http(state, "GET", f"/runs/{r['run_id']}")[1] for r in runs]
    dropped = sorted(d["dataset_uri"].split("/")[-2] for d in details)
    stuck = [d["run_id"] for d in details if d["state"] not in TERMINAL]
    not_registered = {
        d["run_id"]: (d["state"], d["history"][-1]["reason"]) for d in details if d["state"] != "registered"
    }
    expected = {
        names.job_name(d["run_id"], step, stage="local") for d in details for step in ("prepare", "train", "evaluate")
    }
    made = jobs(state)
    duplicates = sorted(set(made) - expected) + sorted(j for j in set(made) if made.count(j) > 1)
    orphans = [
        str(path)
        for path in (home / "sagemaker").rglob("process.json")
        if (record := ProcessRecord.load(path)) is not None and record.running()
    ]
    print(
        f"chaos: {len(drops)} drops ({sum('while-down' in d for d in drops)} while the host was down), "
        f"{len(runs)} runs, {len(runs) - len(not_registered)} registered, {len(stuck)} stuck, "
        f"{len(duplicates)} duplicate jobs, {len(orphans)} orphaned processes, "
        f"{time.monotonic() - began:.0f}s"
    )
    assert dropped == sorted(drops)  # every drop has exactly one run
    assert not stuck and not not_registered, not_registered
    assert not duplicates and not orphans, (duplicates, orphans)
