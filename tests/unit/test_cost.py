"""Run cost: billable seconds per job priced from the repo's table, spot savings, endpoints."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from chalicelib.cost import jobs_of, month_spend, run_cost
from chalicelib.domain.run import HistoryEntry
from chalicelib.domain.states import RunState
from chalicelib.pricing import SHIPPED
from tests.conftest import T0
from tests.unit.test_sagemaker_requests import RUN_ID, tuning_run

S = RunState


def hourly(region: str, family: str, instance_type: str) -> float | None:
    return SHIPPED.hourly(region, family, instance_type).usd


TUNE = f"tl-{RUN_ID}-tune-1"


def entry(n: int, frm: RunState, to: RunState, awaits: str | None, minutes: float = 0) -> HistoryEntry:
    return HistoryEntry(f"e{n}", "x", frm, to, "r", T0 + timedelta(minutes=minutes), (), awaits)


def described(kind: str, name: str) -> dict[str, Any]:
    if kind == "processing":
        return {"ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1}},
                "ProcessingStartTime": T0, "ProcessingEndTime": T0 + timedelta(seconds=360)}  # fmt: skip
    return {"ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1}, "EnableManagedSpotTraining": True,
            "TrainingTimeInSeconds": 1000, "BillableTimeInSeconds": 300}  # fmt: skip


def test_a_tuned_and_deployed_run_costs_its_jobs_trials_and_endpoint_hours() -> None:
    run = dataclasses.replace(
        tuning_run(),
        state=S.SUPERSEDED,
        history=(
            entry(1, S.RECEIVED, S.PREPARING, f"tl-{RUN_ID}-prepare-1"),
            entry(2, S.PREPARING, S.TUNING, TUNE),
            entry(3, S.TUNING, S.EVALUATING, f"tl-{RUN_ID}-evaluate-1"),
            entry(4, S.DEPLOYING, S.DEPLOYED, None, minutes=10),
            entry(5, S.DEPLOYED, S.SUPERSEDED, None, minutes=130),
        ),
    )
    assert [t for t, _ in jobs_of(run)] == ["processing", "tuning", "processing"]
    cost = run_cost(run, "us-east-1", described, lambda job: [f"{job}-001-aa", f"{job}-002-bb"], T0)
    lines = {line.get("job") or line.get("endpoint"): line for line in cost["lines"]}
    trial = lines[f"{TUNE}-001-aa"]
    assert trial["billable_seconds"] == 300 and trial["spot_savings_pct"] == 70.0
    assert trial["usd"] == round(300 / 3600 * hourly("us-east-1", "training", "ml.g5.xlarge"), 4)
    assert lines[f"tl-{RUN_ID}-prepare-1"]["seconds"] == 360
    endpoint = lines["tl-demo"]
    assert endpoint["hours"] == 2.0 and endpoint["usd"] == round(2 * 0.115, 4)
    assert cost["complete"] and cost["total_usd"] == round(sum(line["usd"] for line in cost["lines"]), 4)


def test_unpriced_and_undescribed_jobs_are_shown_not_dropped() -> None:
    run = dataclasses.replace(tuning_run(), history=(entry(1, S.RECEIVED, S.PREPARING, f"tl-{RUN_ID}-prepare-1"),))

    def odd(kind: str, name: str) -> dict[str, Any]:
        raise RuntimeError("gone")

    cost = run_cost(run, "us-east-1", odd, lambda job: [], T0)
    assert cost["lines"][0]["usd"] is None and "gone" in cost["lines"][0]["note"] and not cost["complete"]
    far = run_cost(run, "ap-south-9", described, lambda job: [], T0)
    assert "no processing price" in far["lines"][0]["note"]


def test_a_tuning_job_not_created_yet_is_a_note_not_an_error() -> None:
    run = dataclasses.replace(tuning_run(), history=(entry(1, S.PREPARING, S.TUNING, TUNE),))

    def missing(job: str) -> list[str]:
        raise RuntimeError(f"Amazon SageMaker can't find a tuning job with name {job}")

    cost = run_cost(run, "us-east-1", described, missing, T0)
    assert cost["lines"] == [
        {"job": TUNE, "type": "tuning", "usd": None,
         "note": f"trials not listed: Amazon SageMaker can't find a tuning job with name {TUNE}"}
    ]  # fmt: skip
    assert cost["total_usd"] == 0 and not cost["complete"]


def test_a_warm_pool_bills_the_time_its_instances_waited() -> None:
    run = dataclasses.replace(tuning_run(), history=(entry(1, S.PREPARING, S.TUNING, TUNE),))
    price = hourly("us-east-1", "training", "ml.g5.xlarge")

    def warm(kind: str, name: str) -> dict[str, Any]:
        pool = {"Status": "Reused", "ResourceRetainedBillableTimeInSeconds": 4, "ReusedByJob": f"{TUNE}-002-bb"}
        if name.endswith("002-bb"):
            pool = {"Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": 600}
        return {"ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 2, "KeepAlivePeriodInSeconds": 600},
                "TrainingTimeInSeconds": 60, "BillableTimeInSeconds": 60, "WarmPoolStatus": pool}  # fmt: skip

    cost = run_cost(run, "us-east-1", warm, lambda job: [f"{job}-001-aa", f"{job}-002-bb"], T0)
    first, last = cost["lines"]
    assert first["warm_pool"] == {
        "status": "Reused",
        "retained_seconds": 4,
        "usd": round(4 / 3600 * price * 2, 4),
        "reused_by": f"{TUNE}-002-bb",
    }
    assert last["warm_pool"]["status"] == "Terminated" and last["warm_pool"]["retained_seconds"] == 600
    assert last["usd"] == round(round(60 / 3600 * price * 2, 4) + round(600 / 3600 * price * 2, 4), 4)
    assert cost["total_usd"] == round(first["usd"] + last["usd"], 4)


def test_the_months_spend_counts_this_months_runs_and_the_endpoint_hours_this_month() -> None:
    start = T0.replace(day=1, hour=0, minute=0)  # T0 is 27 Nov 10:00 UTC
    now = start + timedelta(days=2)
    price = hourly("us-east-1", "hosting", "ml.m5.large")
    assert price is not None
    # Deployed since 20 hours before the month began, still serving: only this month's 48 h count.
    old = dataclasses.replace(
        tuning_run(),
        state=S.DEPLOYED,
        created_at=start - timedelta(days=3),
        history=(HistoryEntry("e1", "x", S.DEPLOYING, S.DEPLOYED, "r", start - timedelta(hours=20)),),
    )
    # Superseded before the month began: nothing this month.
    older = dataclasses.replace(
        old,
        run_id="b" * len(RUN_ID),
        state=S.SUPERSEDED,
        created_at=start - timedelta(days=9),
        history=(
            HistoryEntry("e1", "x", S.DEPLOYING, S.DEPLOYED, "r", start - timedelta(days=8)),
            HistoryEntry("e2", "x", S.DEPLOYED, S.SUPERSEDED, "r", start - timedelta(hours=20)),
        ),
    )
    new = dataclasses.replace(old, run_id="c" * len(RUN_ID), state=S.FAILED, created_at=start + timedelta(hours=1),
                              history=())  # fmt: skip
    costed = []

    def cost_of(run: Any) -> dict[str, Any]:
        costed.append(run.run_id)
        return {"total_usd": 1.25, "complete": True}

    spend = month_spend([new, old, older], "us-east-1", cost_of, now)
    assert costed == [new.run_id]  # only runs started this month are costed job by job
    assert spend["month"] == f"{start:%Y-%m}" and spend["runs"] == 1 and spend["complete"]
    assert spend["usd"] == round(1.25 + 48 * price, 4)
    assert not spend["partial"]
    assert month_spend([], "us-east-1", cost_of, now, more=True)["partial"]
