"""What a run cost: billable seconds per job (spot savings included) at list prices
(``pricing.PriceBook``: the table kept in the repo, then the AWS Price List API where the
stage asks it), plus its endpoint's hours.

Seconds come from SageMaker's own job records: ``BillableTimeInSeconds`` for training
jobs (spot-discounted; the savings are ``1 - billable / training time``) plus the warm
pool's ``ResourceRetainedBillableTimeInSeconds`` (instances kept for the next job), start
to end for processing and transform jobs. A tuning job costs what its trials cost. The endpoint is
priced from the run's history: in service from *deployed* until it was superseded or
stopped (or now), at ``min_instances`` (autoscaling may have run more).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from .domain import names
from .domain.run import Run
from .domain.states import RunState
from .pricing import SHIPPED, PriceBook


def _seconds(start: Any, end: Any) -> float:
    if isinstance(start, datetime) and isinstance(end, datetime):
        return max(0.0, (end - start).total_seconds())
    return 0.0


def job_line(
    job_type: str, name: str, described: dict[str, Any], region: str, book: PriceBook = SHIPPED
) -> dict[str, Any]:
    """One job's cost line from its Describe response."""
    if job_type == "training":
        resources = described.get("ResourceConfig", {})
        seconds = float(described.get("TrainingTimeInSeconds") or 0)
        billable = float(described.get("BillableTimeInSeconds") or seconds)
        spot = bool(described.get("EnableManagedSpotTraining"))
        family = "training"
    elif job_type == "processing":
        resources = described.get("ProcessingResources", {}).get("ClusterConfig", {})
        seconds = billable = _seconds(described.get("ProcessingStartTime"), described.get("ProcessingEndTime"))
        spot, family = False, "processing"
    else:
        resources = described.get("TransformResources", {})
        seconds = billable = _seconds(described.get("TransformStartTime"), described.get("TransformEndTime"))
        spot, family = False, "transform"
    instance_type = str(resources.get("InstanceType", ""))
    count = int(resources.get("InstanceCount", 1))
    priced = book.hourly(region, family, instance_type)
    price = priced.usd
    line: dict[str, Any] = {
        "job": name,
        "type": job_type,
        "instance_type": instance_type,
        "instance_count": count,
        "seconds": round(seconds, 1),
        "billable_seconds": round(billable, 1),
        "spot": spot,
        "usd": round(billable / 3600 * price * count, 4) if price is not None else None,
        "price_source": priced.source if price is not None else None,
    }
    if spot and seconds > 0 and billable < seconds:
        line["spot_savings_pct"] = round(100 * (1 - billable / seconds), 1)
    elif spot:
        # Not "saved 0%": SageMaker billed the whole time (the local cloud has no spot market).
        line["note"] = "spot on; no saving reported (BillableTimeInSeconds equals the training time)"
    pool = described.get("WarmPoolStatus") if job_type == "training" else None
    if isinstance(pool, dict):
        # Instances kept warm after the job are billed for the time they waited.
        retained = float(pool.get("ResourceRetainedBillableTimeInSeconds") or 0)
        warm = {
            "status": str(pool.get("Status", "")),
            "retained_seconds": round(retained, 1),
            "usd": round(retained / 3600 * price * count, 4) if price is not None else None,
        }
        if pool.get("ReusedByJob"):
            warm["reused_by"] = str(pool["ReusedByJob"])
        line["warm_pool"] = warm
        if line["usd"] is not None and warm["usd"] is not None:
            line["usd"] = round(line["usd"] + warm["usd"], 4)
    if price is None:
        line["note"] = f"no {family} price for {instance_type} in {region}: {priced.source}"
    return line


def jobs_of(run: Run) -> list[tuple[str, str]]:
    """(type, name) of every job the run started, in order."""
    kinds = {"prepare": "processing", "evaluate": "processing", "train": "training", "tune": "tuning",
             "transform": "transform"}  # fmt: skip
    out = []
    for entry in run.history:
        parsed = names.parse_job_name(entry.awaits or "")
        if parsed and parsed[1] in kinds and (kinds[parsed[1]], entry.awaits) not in out:
            out.append((kinds[parsed[1]], str(entry.awaits)))
    return out


def endpoint_line(
    run: Run, region: str, now: datetime, since: datetime | None = None, book: PriceBook = SHIPPED
) -> dict[str, Any] | None:
    """The endpoint's hours while this run served (only those after ``since``, if given)."""
    deployed = next((e.time for e in run.history if e.to_state is RunState.DEPLOYED), None)
    if deployed is None:
        return None
    ended = next(
        (e.time for e in run.history if e.from_state is RunState.DEPLOYED and e.to_state is not RunState.DEPLOYED),
        now,
    )
    if since is not None:
        if ended <= since:
            return None
        deployed = max(deployed, since)
    deployment = run.config["deployment"]
    hours = _seconds(deployed, ended) / 3600
    priced = book.hourly(region, "hosting", deployment["instance_type"])
    price, count = priced.usd, int(deployment["min_instances"])
    line = {
        "endpoint": names.endpoint_name(run.project, stage=run.stage),
        "type": "endpoint",
        "instance_type": deployment["instance_type"],
        "instance_count": count,
        "hours": round(hours, 3),
        "usd": round(hours * price * count, 4)
        if price is not None and not deployment["serverless_memory_mb"]
        else None,
        "price_source": priced.source if price is not None else None,
    }
    if deployment["serverless_memory_mb"]:
        line["note"] = "serverless endpoints are billed per request and duration: not priced"
    elif price is None:
        line["note"] = f"no hosting price for {deployment['instance_type']} in {region}: {priced.source}"
    return line


def run_cost(
    run: Run,
    region: str,
    describe: Callable[[str, str], dict[str, Any]],
    trials: Callable[[str], Iterable[str]],
    now: datetime,
    book: PriceBook = SHIPPED,
) -> dict[str, Any]:
    lines: list[dict[str, Any]] = []
    for job_type, name in jobs_of(run):
        targets: list[tuple[str, str]] = [(job_type, name)]
        if job_type == "tuning":
            try:
                targets = [("training", t) for t in trials(name)]
            except Exception as exc:  # not created yet, or gone: shown, not fatal
                lines.append({"job": name, "type": job_type, "usd": None, "note": f"trials not listed: {exc}"})
                continue
        for kind, job in targets:
            try:
                lines.append(job_line(kind, job, describe(kind, job), region, book))
            except Exception as exc:  # a job SageMaker no longer describes: shown, not fatal
                lines.append({"job": job, "type": kind, "usd": None, "note": f"not described: {exc}"})
    endpoint = endpoint_line(run, region, now, book=book)
    if endpoint:
        lines.append(endpoint)
    known = [line["usd"] for line in lines if line.get("usd") is not None]
    return {
        "lines": lines,
        "total_usd": round(sum(known), 4),
        "complete": len(known) == len(lines),
        "prices_as_of": book.as_of([str(line.get("price_source") or "") for line in lines]),
    }


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_spend(
    runs: Iterable[Run],
    region: str,
    cost_of: Callable[[Run], dict[str, Any]],
    now: datetime,
    more: bool = False,
    book: PriceBook = SHIPPED,
) -> dict[str, Any]:
    """What a project spent this calendar month (UTC): every job of the runs started this
    month, and the endpoint's hours this month whichever run served them. ``runs`` newest
    first; ``more`` says runs older than those given exist (their endpoint hours this month,
    if any, are then not counted: ``partial``)."""
    start = month_start(now)
    usd = 0.0
    complete = True
    counted = 0
    sources: list[str] = []
    for run in runs:
        if run.created_at >= start:
            cost = cost_of(run)
            usd += cost["total_usd"]
            complete = complete and cost["complete"]
            sources.append(str(cost.get("prices_as_of", "")))
            counted += 1
            continue
        line = endpoint_line(run, region, now, since=start, book=book)
        if line is not None:
            sources.append(str(line.get("price_source") or ""))
            complete = complete and line["usd"] is not None
            usd += line["usd"] or 0.0
    return {
        "month": f"{start:%Y-%m}",
        "usd": round(usd, 4),
        "runs": counted,
        "complete": complete,
        # Runs not read may have started, or served, this month.
        "partial": more,
        "prices_as_of": book.as_of(sources),
    }
