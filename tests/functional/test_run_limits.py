"""The per-project cap on runs on their way holds under concurrent drops: each run takes a
slot with one conditional update (DynamoDB Local), and a slot a lost release left behind
is freed when the cap is met."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chalicelib.domain.limits import Limits
from chalicelib.domain.states import RunState
from chalicelib.service import RunLimitError
from tests.conftest import BUCKET, DEMO_CONFIG, T0

DATASET = f"s3://{BUCKET}/datasets/burst/ds-{{}}/reviews.jsonl"


def test_a_burst_of_drops_starts_no_more_runs_than_the_cap(service: Any) -> None:
    service.create_project("burst", DEMO_CONFIG)
    service.limits = Limits(stage="dev", max_active_runs_per_project=2, max_active_runs=100)

    def drop(n: int) -> str:
        try:
            stored, _ = service.start_run("burst", DATASET.format(n), run_id=f"burstrun{n:04d}")
            return stored.run.run_id
        except RunLimitError as exc:
            return f"refused: {exc}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(drop, range(8)))
    started = [a for a in answers if not a.startswith("refused")]
    assert len(started) == 2, answers
    assert all("allows 2 per project (TUNELOOP_LIMIT_MAX_ACTIVE_RUNS_PER_PROJECT)" in a for a in answers
               if a.startswith("refused"))  # fmt: skip
    assert set(service.projects.slots("burst")) == set(started)
    assert len(service.runs.page(project="burst", limit=50).items) == 2

    # A run that stops gives its slot back: the next drop starts.
    from chalicelib.domain.events import StopRequested

    service.apply(started[0], StopRequested(event_id="stop-1", time=T0, run_id=started[0], reason="enough"))
    assert service.runs.get(started[0]).run.state is RunState.STOPPED
    assert set(service.projects.slots("burst")) == {started[1]}
    assert not drop(100).startswith("refused")


def test_a_slot_whose_release_was_lost_is_freed_when_the_cap_is_met_and_one_being_started_is_not(
    service: Any,
) -> None:
    from datetime import timedelta

    service.create_project("burst", DEMO_CONFIG)
    service.limits = Limits(stage="dev", max_active_runs_per_project=1, max_active_runs=100)
    now = service.clock()
    # A claim made a moment ago whose run is not created yet: its start is under way.
    assert service.projects.claim_slot("burst", "startingrun1", 1, now)
    try:
        service.start_run("burst", DATASET.format(1), run_id="burstrun0001")
        raise AssertionError("a run took the slot of one being started")
    except RunLimitError as exc:
        assert "project burst has 1 runs on their way (startingrun1)" in str(exc)
    # Ten minutes on that start has plainly failed: its slot is freed for the next run.
    service.projects.release_slot("burst", "startingrun1")
    assert service.projects.claim_slot("burst", "ghostrun0001", 1, now - timedelta(minutes=10))
    _, created = service.start_run("burst", DATASET.format(1), run_id="burstrun0001")
    assert created and set(service.projects.slots("burst")) == {"burstrun0001"}
    # A retried delivery of the same drop takes no second slot and starts nothing new.
    again, created = service.start_run("burst", DATASET.format(1), run_id="burstrun0001")
    assert not created and again.run.run_id == "burstrun0001"
    try:
        service.start_run("burst", DATASET.format(2), run_id="burstrun0002")
        raise AssertionError("a second run passed a cap of one")
    except RunLimitError as exc:
        assert "project burst has 1 runs on their way (burstrun0001)" in str(exc)
    assert service.runs.get("burstrun0002") is None
    # Changing the config keeps the slots (an UpdateItem of the config, not a PutItem).
    service.update_project("burst", {**DEMO_CONFIG, "approval": "manual"})
    assert service.get_project("burst").config["approval"] == "manual"
    assert set(service.projects.slots("burst")) == {"burstrun0001"}
