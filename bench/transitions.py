"""Transitions/s on DynamoDB Local with 16-way contention, and lost updates.

16 worker threads deliver SageMaker events for many runs at once. Two patterns:

- "pairs": the threads work in 8 pairs; both threads of a pair deliver every event of
  their runs (EventBridge's at-least-once duplicates, racing), so 16 writers contend
  for the table and two for each item. This is the figure for the goal.
- "hot": all 16 threads deliver every event of the same few runs (16 racers per item,
  the worst case; the integration test checks its correctness).

The baseline is the same pattern with a bare conditional UpdateItem per event (the
store's floor: no decide, no history, no outbox), run in the same process against the
same DynamoDB Local. The benchmark builds its own project config (one training job, no
tuning: the event stream's path) and executes the commands with a recording executor
that answers at once: it measures the state machine and the store, not SageMaker. The
app's JSON logs (a line per event) go to a file, as the local cloud's host writes them.

A transition costs tuneloop two writes (the conditional commit with its outbox, then the
outbox's outcome) where the floor's update costs one; tuneloop decides on the process's
latest copy of a run (the version it last committed) and reads the table again only
when a commit conflicts or a decision that changes nothing needs confirming, while the
floor reads before every update. So "hot" can exceed 1x: most of its deliveries are
duplicates, which tuneloop answers from the copy that already holds them.

Goals (issues 2 and 12): tuneloop >= 0.5x the floor's rate in the same run, 0 lost
updates in every pattern (each run's history exactly the expected path, each command
executed). ``--quick`` runs a few runs per pattern in seconds and exits non-zero when a
correctness figure is off; the test suite runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from chalicelib.domain import names  # noqa: E402
from chalicelib.domain.commands import Command  # noqa: E402
from chalicelib.domain.events import ProcessingJobChanged, TrainingJobChanged  # noqa: E402
from chalicelib.domain.run import Run  # noqa: E402
from chalicelib.executors import Executors, Outcome  # noqa: E402
from tuneloop.local import sigv4, template  # noqa: E402
from tuneloop.local.services import aws_env, start_dynamodb_local  # noqa: E402

THREADS = 16
Item = tuple[str, Any]


STAGE = "bench"


def stream(run_id: str, t0):  # type: ignore[no-untyped-def]
    def job(run: str, step: str, attempt: int = 1) -> str:  # the names the bench stage's runs make
        return names.job_name(run, step, attempt, stage=STAGE)

    return [
        ProcessingJobChanged(
            event_id=f"{run_id}-1", time=t0, run_id=run_id, job_name=job(run_id, "prepare"), status="Completed"
        ),
        TrainingJobChanged(
            event_id=f"{run_id}-2",
            time=t0,
            run_id=run_id,
            job_name=job(run_id, "train", 1),
            status="Stopped",
            secondary_status="Interrupted",
        ),
        TrainingJobChanged(
            event_id=f"{run_id}-3", time=t0, run_id=run_id, job_name=job(run_id, "train", 2), status="Completed"
        ),
        ProcessingJobChanged(
            event_id=f"{run_id}-4", time=t0, run_id=run_id, job_name=job(run_id, "evaluate"), status="Completed"
        ),
    ]


def race(work: Callable[[Item], bool], items_per_thread: list[list[Item]]) -> tuple[int, float]:
    """Run ``work`` over each thread's items, all threads released at once: (wins, seconds)."""
    barrier = threading.Barrier(len(items_per_thread))
    errors: list[BaseException] = []
    wins: list[bool] = []

    def worker(items: list[Item]) -> None:
        barrier.wait()
        try:
            wins.extend(work(item) for item in items)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(items,)) for items in items_per_thread]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(wins), time.perf_counter() - start


class Floor:
    """The baseline: a bare conditional UpdateItem per event on a one-number item."""

    def __init__(self) -> None:
        self.table = boto3.client("dynamodb", config=Config(max_pool_connections=32))
        self.table.create_table(
            TableName="bench-floor",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        )

    def add(self, run_id: str) -> None:
        self.table.put_item(TableName="bench-floor", Item={"id": {"S": run_id}, "step": {"N": "0"}})

    def deliver(self, item: Item) -> bool:
        run_id, event = item
        step = int(event.event_id.rsplit("-", 1)[1])
        got = self.table.get_item(TableName="bench-floor", Key={"id": {"S": run_id}}, ConsistentRead=True)
        if int(got["Item"]["step"]["N"]) >= step:
            return False
        try:
            self.table.update_item(
                TableName="bench-floor",
                Key={"id": {"S": run_id}},
                UpdateExpression="SET step = :new",
                ConditionExpression="step = :old",
                ExpressionAttributeValues={":new": {"N": str(step)}, ":old": {"N": str(step - 1)}},
            )
        except self.table.exceptions.ConditionalCheckFailedException:
            return False
        return True


EXPECTED = ["received", "preparing", "training", "training", "evaluating", "gating"]
# The benchmark's project: one training job per run (the stream above), nothing tuned.
CONFIG = {
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "task": "text-classification",
    "training": {"instance_type": "ml.m5.xlarge", "spot": True, "max_spot_retries": 2},
    "approval": "manual",
}


class Recording:
    """Executes every command at once and keeps it: what the run asked for, counted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commands: dict[str, list[str]] = {}

    def __call__(self, command: Command, run: Run) -> Outcome:
        with self.lock:
            self.commands.setdefault(command.run_id, []).append(type(command).__name__)
        return Outcome(done=True, note="recorded")

    def executors(self) -> Executors:
        from chalicelib.domain import commands

        kinds = [
            c for c in vars(commands).values() if isinstance(c, type) and issubclass(c, Command) and c is not Command
        ]
        return Executors({kind: self for kind in kinds})


def measure(service: Any, floor: Floor, pattern: str, run_count: int) -> tuple[float, int]:
    """(tuneloop's rate / the floor's, lost updates) for one contention pattern."""
    t0 = service.clock()
    run_ids = [
        service.start_run("bench", "s3://bench/datasets/bench/d/x.jsonl")[0].run.run_id for _ in range(run_count)
    ]
    if pattern == "spread":
        work = [[(r, e) for r in run_ids[n::THREADS] for e in stream(r, t0)] for n in range(THREADS)]
    elif pattern == "pairs":
        per_pair = [[(r, e) for r in run_ids[p::8] for e in stream(r, t0)] for p in range(8)]
        work = [per_pair[n // 2] for n in range(THREADS)]
    else:
        everything = [(r, e) for r in run_ids for e in stream(r, t0)]
        work = [everything for _ in range(THREADS)]
    for run_id in run_ids:
        floor.add(run_id)
    floor_wins, floor_s = race(floor.deliver, work)
    wins, tuneloop_s = race(lambda item: bool(service.apply(*item).decision.changed), work)
    lost = 0
    for run_id in run_ids:
        stored = service.runs.get(run_id)
        history = stored.run.history
        path = [history[0].from_state.value] + [h.to_state.value for h in history]
        # Every transition's commands ran (none left pending in the outbox).
        lost += path != EXPECTED or bool(stored.pending)
    rate, floor_rate = wins / tuneloop_s, floor_wins / floor_s
    deliveries = sum(len(items) for items in work)
    ratio = rate / floor_rate
    print(f"[{pattern}] runs={run_count} transitions={wins} deliveries={deliveries} threads={THREADS}")
    print(f"  baseline (bare conditional UpdateItem): {floor_rate:7.0f} updates/s")
    print(f"  tuneloop (decide + commit + outbox):    {rate:7.0f} transitions/s")
    print(f"  ratio tuneloop/baseline: {ratio:.2f}x (goal >= 0.5x)   lost updates: {lost} (goal 0)")
    return ratio, lost


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=192)
    parser.add_argument("--quick", action="store_true", help="a few runs per pattern; check, don't measure")
    args = parser.parse_args()
    runs, hot = (6, 2) if args.quick else (args.runs, 4)
    credentials = sigv4.generate()
    folder = tempfile.TemporaryDirectory(prefix="tuneloop-bench-")
    logs = Path(folder.name) / "app.log"
    dynamodb = start_dynamodb_local(credentials)
    os.environ.update(aws_env(dynamodb.endpoint, "http://127.0.0.1:9", credentials))
    os.environ["TUNELOOP_BUCKET"] = "bench"
    try:
        from chalicelib import deps
        from chalicelib.config import Settings
        from chalicelib.observability import logger as app_logger

        settings = Settings(
            stage=STAGE, region="us-east-1", bucket="bench", projects_table="bench-projects", runs_table="bench-runs"
        )
        service = deps.build(settings).service
        app_logger.registered_handler.setStream(logs.open("w"))  # type: ignore[attr-defined]
        recording = Recording()
        service.executors = recording.executors()
        template.create_tables_for(settings, boto3.client("dynamodb", region_name="us-east-1"))
        service.create_project("bench", CONFIG)
        floor = Floor()
        warm_up_lost = 0
        if not args.quick:
            # Not reported: DynamoDB Local's JIT and both connection pools warm up first.
            with contextlib.redirect_stdout(io.StringIO()):
                warm_up_lost = measure(service, floor, "spread", 32)[1]
        results = {
            "spread": measure(service, floor, "spread", runs),
            "pairs": measure(service, floor, "pairs", runs),
            "hot": measure(service, floor, "hot", hot),
        }
    finally:
        dynamodb.stop()
    executed = sum(len(c) for c in recording.commands.values())
    print(f"commands executed: {executed} for {len(recording.commands)} runs (each at most once per transition)")
    with logs.open() as written:
        print(f"app logs: {sum(1 for _ in written)} JSON lines (written to a file, as the host's are)")
    folder.cleanup()
    lost = warm_up_lost + sum(lost for _, lost in results.values())
    if lost:
        print(f"FAILED: {lost} run(s) lost an update or kept a command pending")
        return 1
    if not args.quick and any(ratio < 0.5 for ratio, _ in results.values()):
        print("goal NOT met: tuneloop below 0.5x the floor in some pattern")
    return 0


if __name__ == "__main__":
    sys.exit(main())
