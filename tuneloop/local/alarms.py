"""The local cloud's alarm evaluator: what CloudWatch does with metric alarms, over moto.

moto stores alarms and metric data but never evaluates an alarm. This evaluator does, on
an interval: for each metric alarm it reads the last ``EvaluationPeriods`` periods with
GetMetricStatistics, applies ``ComparisonOperator``, ``DatapointsToAlarm`` and
``TreatMissingData``, and when the state changes it sets it (SetAlarmState) and emits
the ``CloudWatch Alarm State Change`` event EventBridge would carry.

An ``ExtendedStatistic`` (``p99``) is read with GetMetricData, whose percentiles the local
cloud's CloudWatch computes (``tuneloop/local/cloudwatch.py``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger("tuneloop.alarms")
ACCOUNT, REGION = "123456789012", "us-east-1"
Emit = Callable[[dict[str, Any]], object]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": lambda v, t: v > t,
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


_RELATION = {
    "GreaterThanThreshold": "greater than",
    "GreaterThanOrEqualToThreshold": "greater than or equal to",
    "LessThanThreshold": "less than",
    "LessThanOrEqualToThreshold": "less than or equal to",
}


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class AlarmEvaluator:
    def __init__(self, cloudwatch: Any, emit: Emit, interval_s: float = 10.0, prefix: str = "") -> None:
        self.cloudwatch = cloudwatch
        self.emit = emit
        self.interval_s = interval_s
        self.prefix = prefix
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alarm-evaluator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.evaluate()
            except Exception:  # the next round tries again
                log.exception("alarm evaluation failed")

    def evaluate(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Evaluate every metric alarm once; returns the events emitted."""
        now = now or datetime.now(UTC)
        emitted = []
        paginator = self.cloudwatch.get_paginator("describe_alarms")
        filters: dict[str, Any] = {"AlarmTypes": ["MetricAlarm"]}
        if self.prefix:
            filters["AlarmNamePrefix"] = self.prefix
        for page in paginator.paginate(**filters):
            for alarm in page.get("MetricAlarms", []):
                if "MetricName" not in alarm:
                    continue  # metric-math alarms are not evaluated locally
                state, reason = self.state_of(alarm, now)
                if state is None or state == alarm["StateValue"]:
                    continue
                self.cloudwatch.set_alarm_state(AlarmName=alarm["AlarmName"], StateValue=state, StateReason=reason)
                event = self.event(alarm, state, reason, now)
                self.emit(event)
                emitted.append(event)
                log.info("alarm %s: %s → %s (%s)", alarm["AlarmName"], alarm["StateValue"], state, reason)
        return emitted

    def state_of(self, alarm: dict[str, Any], now: datetime) -> tuple[str | None, str]:
        period = int(alarm["Period"])
        periods = int(alarm["EvaluationPeriods"])
        needed = int(alarm.get("DatapointsToAlarm") or periods)
        start, end = now - timedelta(seconds=period * periods), now + timedelta(seconds=1)
        if alarm.get("ExtendedStatistic"):
            metric = {"Namespace": alarm["Namespace"], "MetricName": alarm["MetricName"],
                      "Dimensions": alarm.get("Dimensions", [])}  # fmt: skip
            result = self.cloudwatch.get_metric_data(
                MetricDataQueries=[
                    {"Id": "a", "MetricStat": {"Metric": metric, "Period": period, "Stat": alarm["ExtendedStatistic"]}}
                ],
                StartTime=start,
                EndTime=end,
            )["MetricDataResults"][0]
            pairs = sorted(zip(result.get("Timestamps", []), result.get("Values", []), strict=False))
            values = [float(v) for _, v in pairs][-periods:]
        else:
            statistic = alarm.get("Statistic") or "Maximum"
            answer = self.cloudwatch.get_metric_statistics(
                Namespace=alarm["Namespace"],
                MetricName=alarm["MetricName"],
                Dimensions=alarm.get("Dimensions", []),
                StartTime=start,
                EndTime=end,
                Period=period,
                Statistics=[statistic],
            )
            points = sorted(answer.get("Datapoints", []), key=lambda p: p["Timestamp"])[-periods:]
            values = [float(p[statistic]) for p in points]
        if not values:
            missing = alarm.get("TreatMissingData", "missing")
            if missing == "notBreaching":
                return "OK", "no datapoints; missing data is treated as not breaching"
            if missing == "breaching":
                return "ALARM", "no datapoints; missing data is treated as breaching"
            if missing == "ignore":
                return None, ""
            return "INSUFFICIENT_DATA", "no datapoints"
        compare = _COMPARE[alarm["ComparisonOperator"]]
        threshold = float(alarm["Threshold"])
        breaching = [v for v in values if compare(v, threshold)]
        shown = ", ".join(f"{v:g}" for v in values)
        relation = _RELATION[alarm["ComparisonOperator"]]
        seen = f"{len(values)} datapoint{'s' if len(values) > 1 else ''} [{shown}]"
        verb = "were" if len(values) > 1 else "was"
        if len(breaching) >= min(needed, periods):
            return "ALARM", f"Threshold Crossed: {seen} {verb} {relation} the threshold ({threshold:g})."
        return "OK", f"Threshold Crossed: {seen} {verb} not {relation} the threshold ({threshold:g})."

    def event(self, alarm: dict[str, Any], state: str, reason: str, now: datetime) -> dict[str, Any]:
        updated = alarm.get("StateUpdatedTimestamp")
        previous_time = updated if isinstance(updated, datetime) else now
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "CloudWatch Alarm State Change",
            "source": "aws.cloudwatch",
            "account": ACCOUNT,
            "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [alarm.get("AlarmArn", f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{alarm['AlarmName']}")],
            "detail": {
                "alarmName": alarm["AlarmName"],
                "state": {"value": state, "reason": reason, "timestamp": _stamp(now)},
                "previousState": {
                    "value": alarm["StateValue"],
                    "reason": alarm.get("StateReason", ""),
                    "timestamp": _stamp(previous_time),
                },
                "configuration": {
                    "description": alarm.get("AlarmDescription", ""),
                    "metrics": [
                        {
                            "id": "m1",
                            "metricStat": {
                                "metric": {
                                    "namespace": alarm["Namespace"],
                                    "name": alarm["MetricName"],
                                    "dimensions": {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])},
                                },
                                "period": alarm["Period"],
                                "stat": alarm.get("Statistic") or alarm.get("ExtendedStatistic", ""),
                            },
                            "returnData": True,
                        }
                    ],
                },
            },
        }
