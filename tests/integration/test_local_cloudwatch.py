"""The local cloud's CloudWatch: percentiles and alarm history, which moto lacks, through
the gateway as every client reaches it."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import numpy as np
import pytest

from tuneloop.local.cloudwatch import percentile

pytestmark = pytest.mark.integration


def test_percentile_is_nearest_rank() -> None:
    values = [random.Random(4).uniform(0, 100) for _ in range(101)]
    for p in (1, 50, 90, 99, 99.9, 100):
        assert percentile(values, p) == np.percentile(values, p, method="inverted_cdf")
    assert percentile([7.0], 50) == 7.0


def test_get_metric_data_answers_percentiles(local_services: Any) -> None:
    cloudwatch = boto3.client("cloudwatch")
    dimensions = [{"Name": "EndpointName", "Value": f"tl-{uuid.uuid4().hex[:8]}"}]
    latencies = [float(v) for v in range(1, 201)]  # 1..200
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    cloudwatch.put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[{"MetricName": "ModelLatency", "Dimensions": dimensions, "Values": latencies[:150],
                     "Unit": "Microseconds", "Timestamp": now},
                    {"MetricName": "ModelLatency", "Dimensions": dimensions, "Values": latencies[150:],
                     "Unit": "Microseconds", "Timestamp": now}],
    )  # fmt: skip
    metric = {"Namespace": "AWS/SageMaker", "MetricName": "ModelLatency", "Dimensions": dimensions}
    answer = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {"Id": f"q{n}", "MetricStat": {"Metric": metric, "Period": 60, "Stat": stat}}
            for n, stat in enumerate(("p50", "p99", "p99.9", "Average", "Maximum"))
        ],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
    )
    values = {r["Id"]: r["Values"] for r in answer["MetricDataResults"]}
    assert values == {"q0": [100.0], "q1": [198.0], "q2": [200.0], "q3": [100.5], "q4": [200.0]}


def test_describe_alarm_history_lists_state_changes(local_services: Any) -> None:
    cloudwatch = boto3.client("cloudwatch")
    name = f"tl-{uuid.uuid4().hex[:12]}-drift-prediction-psi"
    other = f"{name}-other"
    for alarm in (name, other):
        cloudwatch.put_metric_alarm(
            AlarmName=alarm, Namespace="tuneloop", MetricName="prediction_psi", Statistic="Maximum", Period=300,
            EvaluationPeriods=1, Threshold=0.2, ComparisonOperator="GreaterThanThreshold",
        )  # fmt: skip
    before = datetime.now(UTC) - timedelta(seconds=1)
    for state, reason in (("ALARM", "0.41 > 0.2"), ("OK", "0.05 <= 0.2"), ("ALARM", "0.33 > 0.2")):
        cloudwatch.set_alarm_state(AlarmName=name, StateValue=state, StateReason=reason)
    cloudwatch.set_alarm_state(AlarmName=other, StateValue="ALARM", StateReason="other")

    items = cloudwatch.describe_alarm_history(AlarmName=name)["AlarmHistoryItems"]
    assert [i["HistorySummary"] for i in items] == [
        "Alarm updated from OK to ALARM",  # newest first, as CloudWatch answers
        "Alarm updated from ALARM to OK",
        "Alarm updated from OK to ALARM",
    ]
    assert all(i["AlarmName"] == name and i["HistoryItemType"] == "StateUpdate" for i in items)
    assert all(i["Timestamp"] >= before for i in items)
    newest = json.loads(items[0]["HistoryData"])
    assert newest["oldState"]["stateValue"] == "OK"
    assert newest["newState"] == {"stateValue": "ALARM", "stateReason": "0.33 > 0.2"}

    ascending = cloudwatch.describe_alarm_history(AlarmName=name, ScanBy="TimestampAscending", MaxRecords=2)
    assert [i["HistorySummary"] for i in ascending["AlarmHistoryItems"]] == [
        "Alarm updated from OK to ALARM",
        "Alarm updated from ALARM to OK",
    ]
    rest = cloudwatch.describe_alarm_history(
        AlarmName=name, ScanBy="TimestampAscending", MaxRecords=2, NextToken=ascending["NextToken"]
    )
    assert len(rest["AlarmHistoryItems"]) == 1 and "NextToken" not in rest
    assert cloudwatch.describe_alarm_history(AlarmName=name, HistoryItemType="Action")["AlarmHistoryItems"] == []
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert cloudwatch.describe_alarm_history(AlarmName=name, StartDate=later)["AlarmHistoryItems"] == []
    assert cloudwatch.describe_alarm_history(AlarmName="tl-no-such-alarm")["AlarmHistoryItems"] == []
