"""What the local cloud's CloudWatch adds to moto: percentile statistics and alarm history.

moto computes Sum, Average, Minimum, Maximum and SampleCount, but a percentile statistic
(``p50``, ``p99``, ``p99.9``) comes back as null, and it has no DescribeAlarmHistory although
it keeps every alarm's past states. :func:`extend_moto` adds both to the moto that the
gateway serves, before it serves anything:

- a percentile over raw values is the nearest-rank percentile (the smallest value with at
  least p% of the values at or below it); over values sent as pre-aggregated statistic sets
  it is their Maximum, which is never below it;
- DescribeAlarmHistory lists ``StateUpdate`` items (``HistorySummary`` "Alarm updated from
  OK to ALARM", ``HistoryData`` with old and new state and reason) from moto's record,
  filtered by alarm name, dates and type, newest first unless ``ScanBy`` says otherwise,
  paged by ``MaxRecords``/``NextToken``. Configuration updates and actions are not recorded.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import UTC, datetime
from typing import Any

PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")
_installed = False


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile of ``values`` (not empty), 0 < p <= 100."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def history_items(alarms: list[Any], start: Any = None, end: Any = None) -> list[dict[str, Any]]:
    """Every recorded state change of ``alarms`` (moto alarm objects), oldest first."""
    items = []
    low, high = _utc(start), _utc(end)
    for alarm in alarms:
        # moto keeps (type, reason, data, value, since) of each state before the current one.
        states = [(value, reason, since) for _kind, reason, _data, value, since in alarm.history]
        states.append((alarm.state_value, alarm.state_reason, alarm.state_updated_timestamp))
        for (old, old_reason, _), (new, new_reason, when) in itertools.pairwise(states):
            stamp = _utc(when)
            if stamp is None or (low and stamp < low) or (high and stamp > high):
                continue
            items.append(
                {
                    "AlarmName": alarm.name,
                    "AlarmType": "CompositeAlarm" if alarm.rule is not None else "MetricAlarm",
                    "Timestamp": stamp,
                    "HistoryItemType": "StateUpdate",
                    "HistorySummary": f"Alarm updated from {old} to {new}",
                    "HistoryData": json.dumps(
                        {
                            "version": "1.0",
                            "oldState": {"stateValue": old, "stateReason": old_reason},
                            "newState": {"stateValue": new, "stateReason": new_reason},
                        }
                    ),
                }
            )
    items.sort(key=lambda item: item["Timestamp"])
    return items


def extend_moto() -> None:
    """Add percentiles and DescribeAlarmHistory to this process's moto (once)."""
    global _installed
    if _installed:
        return
    from moto.cloudwatch import models
    from moto.cloudwatch.responses import CloudWatchResponse
    from moto.core.responses import ActionResult

    plain = models.Statistics.get_statistics_for_type

    def get_statistics_for_type(self: Any, stat: str) -> Any:
        match = PERCENTILE.match(stat)
        if not match:
            return plain(self, stat)
        values = self.metric_single_values_list
        if values:
            return percentile(values, float(match.group(1)))
        return self.maximum if self.metric_data else None

    def describe_alarm_history(self: Any) -> Any:
        backend = self.cloudwatch_backend
        name = self._get_param("AlarmName")
        kind = self._get_param("HistoryItemType")
        types = self._get_param("AlarmTypes") or ["MetricAlarm", "CompositeAlarm"]
        limit = max(1, min(100, int(self._get_param("MaxRecords") or 100)))
        offset = int(self._get_param("NextToken") or 0)
        alarms = [backend.alarms[name]] if name in backend.alarms else ([] if name else list(backend.alarms.values()))
        items = (
            []
            if kind not in (None, "StateUpdate")
            else history_items(alarms, self._get_param("StartDate"), self._get_param("EndDate"))
        )
        items = [item for item in items if item["AlarmType"] in types]
        if (self._get_param("ScanBy") or "TimestampDescending") == "TimestampDescending":
            items.reverse()
        result: dict[str, Any] = {"AlarmHistoryItems": items[offset : offset + limit]}
        if offset + limit < len(items):
            result["NextToken"] = str(offset + limit)
        return ActionResult(result)

    models.Statistics.get_statistics_for_type = get_statistics_for_type  # type: ignore[method-assign]
    CloudWatchResponse.describe_alarm_history = describe_alarm_history  # type: ignore[attr-defined]
    _installed = True
