"""What a project's endpoint is doing, for ``GET /projects/{name}/endpoint`` and the
summary in ``GET /projects/{name}/status``.

Read live from the services that know, so nothing is copied into the run items:

- DescribeEndpoint: status, the config (and so the run) that serves, and during a
  blue/green update the new fleet's share of traffic (``PendingDeploymentSummary``);
- one GetMetricData call over the window: the endpoint's invocations, 4XX and 5XX errors
  and model latency p50/p99 (``AWS/SageMaker``), and, for each model that served in the
  window, every drift and production-quality metric it has an alarm on (namespace
  ``tuneloop``, its own series: the ``run`` dimension), with when each model took over;
- DescribeAlarms and DescribeAlarmHistory for the serving run's alarms: their state now
  and each state change in the window.

A service that cannot answer leaves its part empty with an ``errors`` line; the rest of
the view still comes back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .deployment import (
    DRIFT_NAMESPACE,
    VARIANT,
    drift_dimensions,
    endpoint_config_name,
    monitoring_alarm_requests,
)
from .domain import names
from .domain.run import Run
from .domain.states import RunState

MAX_WINDOW_H = 24 * 14  # two weeks: CloudWatch keeps 1-minute points for 15 days
MAX_POINTS = 240
MAX_MODELS = 8  # the newest models that served in the window (GetMetricData takes 500 queries)
Failure = (ClientError, BotoCoreError)

# Endpoint metrics: (key in the view, metric, statistic, scale to the view's unit).
TRAFFIC = (
    ("invocations", "Invocations", "Sum", 1.0),
    ("errors_4xx", "Invocation4XXErrors", "Sum", 1.0),
    ("errors_5xx", "Invocation5XXErrors", "Sum", 1.0),
    ("latency_p50_ms", "ModelLatency", "p50", 1e-3),  # ModelLatency is in microseconds
    ("latency_p99_ms", "ModelLatency", "p99", 1e-3),
)


def period_for(hours: float) -> int:
    """A CloudWatch period (a multiple of 60 s) that draws ``hours`` in at most MAX_POINTS points."""
    return max(60, math.ceil(hours * 3600 / MAX_POINTS / 60) * 60)


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _series(result: dict[str, Any], scale: float = 1.0) -> list[list[Any]]:
    """[[time, value], …] oldest first, non-finite values left out."""
    points = [
        [_iso(t), float(v) * scale]
        for t, v in zip(result.get("Timestamps", []), result.get("Values", []), strict=False)
        if isinstance(v, (int, float)) and math.isfinite(v)
    ]
    return sorted(points, key=lambda p: p[0])


def _error(errors: list[str], what: str, exc: Exception) -> None:
    errors.append(f"{what}: {exc}")


class EndpointViews:
    def __init__(self, sagemaker: Any, cloudwatch: Any, clock: Callable[[], datetime], stage: str = "") -> None:
        self._sagemaker = sagemaker
        self._cloudwatch = cloudwatch
        self._clock = clock
        self._stage = stage

    def describe(self, project: str, errors: list[str]) -> dict[str, Any] | None:
        try:
            return dict(self._sagemaker.describe_endpoint(EndpointName=names.endpoint_name(project, stage=self._stage)))
        except ClientError as exc:
            if "Could not find" in str(exc) or exc.response.get("Error", {}).get("Code") == "ResourceNotFound":
                return None
            _error(errors, "DescribeEndpoint", exc)
        except BotoCoreError as exc:
            _error(errors, "DescribeEndpoint", exc)
        return None

    def alarms(self, run: Run, errors: list[str]) -> list[dict[str, Any]]:
        """Every alarm of the run (monitoring and rollback), with its state now."""
        found: list[dict[str, Any]] = []
        try:
            paginator = self._cloudwatch.get_paginator("describe_alarms")
            for page in paginator.paginate(
                AlarmNamePrefix=f"{names.prefix(run.stage)}{run.run_id}-", AlarmTypes=["MetricAlarm"]
            ):
                for alarm in page.get("MetricAlarms", []):
                    found.append(
                        {
                            "name": alarm["AlarmName"],
                            "metric": alarm.get("MetricName"),
                            "state": alarm.get("StateValue"),
                            "reason": alarm.get("StateReason", ""),
                            "since": _iso(alarm.get("StateUpdatedTimestamp", "")),
                            "threshold": alarm.get("Threshold"),
                        }
                    )
        except Failure as exc:
            _error(errors, "DescribeAlarms", exc)
        return sorted(found, key=lambda a: a["name"])

    def traffic_split(self, described: dict[str, Any]) -> list[dict[str, Any]]:
        """Who serves what share: the serving fleet, and the new one while an update shifts traffic."""
        fleets = []
        config = str(described.get("EndpointConfigName", ""))
        for variant in described.get("ProductionVariants", []):
            fleets.append((config, "serving", variant, None))
        pending = described.get("PendingDeploymentSummary") or {}
        for variant in pending.get("ProductionVariants", []):
            status = (variant.get("VariantStatus") or [{}])[0]
            fleets.append((str(pending.get("EndpointConfigName", "")), "new", variant, status))
        total = sum(float(v.get("CurrentWeight") or 0) for _, _, v, _ in fleets) or 1.0
        return [
            {
                "run_id": names.run_id_from_name(fleet_config),
                "config": fleet_config,
                "role": role,
                "variant": variant.get("VariantName"),
                "share": float(variant.get("CurrentWeight") or 0) / total,
                "instances": variant.get("CurrentInstanceCount"),
                **({"phase": status.get("Status"), "message": status.get("StatusMessage", "")} if status else {}),
            }
            for fleet_config, role, variant, status in fleets
        ]

    def metrics(
        self, project: str, models: Sequence[Run], start: datetime, end: datetime, period: int, errors: list[str]
    ) -> tuple[dict[str, list[list[Any]]], list[dict[str, Any]]]:
        """The endpoint's traffic series, and each model's monitoring metrics (those of its
        alarms, on its own series)."""
        endpoint = names.endpoint_name(project, stage=self._stage)
        dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]
        queries = [
            {
                "Id": f"t{n}",
                "MetricStat": {
                    "Metric": {"Namespace": "AWS/SageMaker", "MetricName": metric, "Dimensions": dimensions},
                    "Period": period,
                    "Stat": stat,
                },
            }
            for n, (_key, metric, stat, _scale) in enumerate(TRAFFIC)
        ]
        monitored = [(run, alarm) for run in models for alarm in monitoring_alarm_requests(run)]
        for n, (run, alarm) in enumerate(monitored):
            queries.append(
                {
                    "Id": f"m{n}",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": DRIFT_NAMESPACE,
                            "MetricName": alarm["MetricName"],
                            "Dimensions": drift_dimensions(project, run.run_id, stage=run.stage),
                        },
                        "Period": period,
                        "Stat": alarm["Statistic"],
                    },
                }
            )
        results: dict[str, dict[str, Any]] = {}
        try:
            request: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end,
                                       "ScanBy": "TimestampAscending"}  # fmt: skip
            while True:
                answer = self._cloudwatch.get_metric_data(**request)
                for result in answer.get("MetricDataResults", []):
                    merged = results.setdefault(result["Id"], {"Timestamps": [], "Values": []})
                    merged["Timestamps"] += result.get("Timestamps", [])
                    merged["Values"] += result.get("Values", [])
                if not answer.get("NextToken"):
                    break
                request["NextToken"] = answer["NextToken"]
        except Failure as exc:
            _error(errors, "GetMetricData", exc)
        traffic = {
            key: _series(results.get(f"t{n}", {}), scale) for n, (key, _metric, _stat, scale) in enumerate(TRAFFIC)
        }
        monitoring = [
            {
                "run_id": run.run_id,
                "metric": alarm["MetricName"],
                "kind": "quality" if "-quality-" in alarm["AlarmName"] else "drift",
                "alarm": alarm["AlarmName"],
                "threshold": alarm["Threshold"],
                # The alarm fires when a point is beyond the threshold on this side.
                "breaches": "below" if alarm["ComparisonOperator"].startswith("Less") else "above",
                "statistic": alarm["Statistic"],
                "points": _series(results.get(f"m{n}", {})),
            }
            for n, (run, alarm) in enumerate(monitored)
        ]
        return traffic, monitoring

    def alarm_changes(
        self, alarms: Sequence[str], start: datetime, end: datetime, errors: list[str]
    ) -> list[dict[str, Any]]:
        """Each state change of ``alarms`` in the window, oldest first."""
        changes = []
        for name in alarms:
            request: dict[str, Any] = {"AlarmName": name, "HistoryItemType": "StateUpdate", "StartDate": start,
                                       "EndDate": end, "MaxRecords": 100}  # fmt: skip
            try:
                while True:
                    answer = self._cloudwatch.describe_alarm_history(**request)
                    for item in answer.get("AlarmHistoryItems", []):
                        try:
                            data = json.loads(item.get("HistoryData") or "{}")
                        except ValueError:
                            data = {}
                        old, new = data.get("oldState") or {}, data.get("newState") or {}
                        changes.append(
                            {
                                "time": _iso(item.get("Timestamp")),
                                "alarm": name,
                                "from": old.get("stateValue"),
                                "to": new.get("stateValue"),
                                "reason": new.get("stateReason") or item.get("HistorySummary", ""),
                            }
                        )
                    if not answer.get("NextToken") or len(changes) > 1000:
                        break
                    request["NextToken"] = answer["NextToken"]
            except Failure as exc:
                _error(errors, f"DescribeAlarmHistory {name}", exc)
        return sorted(changes, key=lambda c: c["time"])

    def endpoint(
        self, project: str, serving: Run | None, deploying: Run | None, hours: float, recent: Sequence[Run] = ()
    ) -> dict[str, Any]:
        """The endpoint page's data over the last ``hours``; ``recent``: the project's newest
        runs, among which the models that served in the window are found."""
        errors: list[str] = []
        end = self._clock()
        start = end - timedelta(hours=hours)
        period = period_for(hours)
        described = self.describe(project, errors)
        view: dict[str, Any] = {
            "project": project,
            "endpoint": names.endpoint_name(project, stage=self._stage),
            "status": described.get("EndpointStatus") if described else None,
            "failure_reason": described.get("FailureReason", "") if described else "",
            "serving_run_id": serving.run_id if serving else None,
            "deploying_run_id": deploying.run_id if deploying else None,
            "traffic_split": self.traffic_split(described) if described else [],
            "window": {"start": start.isoformat(), "end": end.isoformat(), "hours": hours, "period_s": period},
        }
        models = served(recent, serving, deploying, start)
        view["models"] = [
            {"run_id": run.run_id, "since": _iso(since), "until": _iso(until) if until else None}
            for run, since, until in models
        ]
        # Each model's series starts where it took over: the switches in the window, marked.
        # (A model being deployed has not taken over yet: its canary is marked as such.)
        view["switches"] = [
            {"time": _iso(since), "run_id": run.run_id, "replaced": models[n - 1][0].run_id,
             "deploying": deploying is not None and run.run_id == deploying.run_id}
            for n, (run, since, _) in enumerate(models)
            if n > 0 and since >= start
        ]  # fmt: skip
        view["traffic"], view["monitoring"] = self.metrics(
            project, [run for run, _, _ in models], start, end, period, errors
        )
        alarms = self.alarms(serving, errors) if serving else []
        view["alarms"] = alarms
        view["alarm_changes"] = self.alarm_changes([a["name"] for a in alarms], start, end, errors)
        if described and serving and described.get("EndpointConfigName") != endpoint_config_name(serving):
            errors.append(
                f"the endpoint serves config {described.get('EndpointConfigName')}, not the deployed run's "
                f"({endpoint_config_name(serving)})"
            )
        view["errors"] = errors
        return view

    def status(self, project: str, serving: Run | None) -> dict[str, Any]:
        """The projects page's line: the endpoint's status and the serving run's open alarms."""
        errors: list[str] = []
        described = self.describe(project, errors)
        alarms = self.alarms(serving, errors) if serving else []
        return {
            "endpoint": {
                "name": names.endpoint_name(project, stage=self._stage),
                "status": described.get("EndpointStatus"),
            }
            if described
            else None,
            "open_alarms": [a for a in alarms if a["state"] == "ALARM"],
            "errors": errors,
        }


def served(
    recent: Sequence[Run], serving: Run | None, deploying: Run | None, start: datetime
) -> list[tuple[Run, datetime, datetime | None]]:
    """(run, since, until) of each model that served the endpoint in the window (or serves,
    or is being deployed), oldest first: since it reached ``deployed`` (a model being
    deployed: since now, none of its own data yet), until it left."""
    found: dict[str, tuple[Run, datetime, datetime | None]] = {}
    for run in [*recent, *(r for r in (serving, deploying) if r is not None)]:
        since = next((e.time for e in run.history if e.to_state is RunState.DEPLOYED), None)
        until = next(
            (e.time for e in run.history if e.from_state is RunState.DEPLOYED and e.to_state is not RunState.DEPLOYED),
            None,
        )
        if since is None and run is deploying:
            since = run.history[-1].time if run.history else run.created_at
        if since is not None and (until is None or until >= start):
            found[run.run_id] = (run, since, until)
    return sorted(found.values(), key=lambda m: m[1])[-MAX_MODELS:]
