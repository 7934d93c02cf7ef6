"""The local alarm evaluator on moto: thresholds, periods, missing data, and the events it emits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from chalicelib.domain.events import AlarmChanged
from chalicelib.events import parse_event
from tuneloop.local.alarms import AlarmEvaluator

pytestmark = pytest.mark.integration


def test_alarms_follow_their_metric_and_emit_aws_shaped_events(local_services: Any) -> None:
    cloudwatch = boto3.client("cloudwatch")
    events: list[dict[str, Any]] = []
    name = "tl-aaaaaaaaaaaa-drift-prediction-psi"
    dimensions = [{"Name": "project", "Value": "alarmed"}, {"Name": "endpoint", "Value": "tl-alarmed"}]
    cloudwatch.put_metric_alarm(
        AlarmName=name, Namespace="tuneloop", MetricName="prediction_psi", Dimensions=dimensions,
        Statistic="Maximum", Period=300, EvaluationPeriods=1, Threshold=0.2,
        ComparisonOperator="GreaterThanThreshold", TreatMissingData="notBreaching",
    )  # fmt: skip
    cloudwatch.put_metric_alarm(
        AlarmName="tl-other-missing", Namespace="tuneloop", MetricName="nothing_here", Statistic="Sum", Period=60,
        EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold",
    )  # fmt: skip
    cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="start")
    evaluator = AlarmEvaluator(cloudwatch, events.append)  # as the host runs it: every alarm
    evaluator.evaluate()
    assert cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"] == "OK"
    missing = cloudwatch.describe_alarms(AlarmNames=["tl-other-missing"])["MetricAlarms"][0]
    assert missing["StateValue"] == "INSUFFICIENT_DATA"

    cloudwatch.put_metric_data(
        Namespace="tuneloop", MetricData=[{"MetricName": "prediction_psi", "Dimensions": dimensions, "Value": 0.05}]
    )
    assert all(e["detail"]["alarmName"] != name for e in evaluator.evaluate())  # 0.05 is below 0.2
    cloudwatch.put_metric_data(
        Namespace="tuneloop", MetricData=[{"MetricName": "prediction_psi", "Dimensions": dimensions, "Value": 0.41}]
    )
    [fired] = [e for e in evaluator.evaluate(datetime.now(UTC)) if e["detail"]["alarmName"] == name]
    assert cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"] == "ALARM"
    parsed = parse_event(fired)
    assert isinstance(parsed, AlarmChanged) and parsed.kind == "alarm.alarm" and parsed.previous_state == "OK"
    assert parsed.run_id == "aaaaaaaaaaaa" and "0.41" in parsed.reason
    assert fired["detail"]["configuration"]["metrics"][0]["metricStat"]["metric"]["dimensions"] == {
        "project": "alarmed",
        "endpoint": "tl-alarmed",
    }
    # Evaluated again with nothing new: no state change, no second event.
    assert [e for e in evaluator.evaluate() if e["detail"]["alarmName"] == name] == []
