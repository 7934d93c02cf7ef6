"""The local alarm evaluator on moto: thresholds, periods, missing data, and the events it emits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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


def test_drift_metrics_are_published_where_the_alarms_look(local_services: Any) -> None:
    from chalicelib.deployment import DRIFT_NAMESPACE, drift_dimensions
    from training import drift

    result = {
        "metrics": {
            "input_js": {"published": 0.31},
            "embedding_auc": {"published": 0.52},
            "prediction_psi": {"published": float("nan")},  # not computed: not published
        }
    }
    drift.publish(result, "published", "tl-published", "us-east-1")
    cloudwatch = boto3.client("cloudwatch")
    listed = cloudwatch.list_metrics(Namespace=DRIFT_NAMESPACE, Dimensions=drift_dimensions("published"))["Metrics"]
    assert {m["MetricName"] for m in listed} == {"input_js", "embedding_auc"}
    now = datetime.now(UTC)
    stats = cloudwatch.get_metric_statistics(
        Namespace=DRIFT_NAMESPACE, MetricName="input_js", Dimensions=drift_dimensions("published"),
        StartTime=now - timedelta(minutes=5), EndTime=now + timedelta(minutes=1), Period=300, Statistics=["Maximum"],
    )  # fmt: skip
    assert [p["Maximum"] for p in stats["Datapoints"]] == [0.31]


def test_a_percentile_alarm_follows_the_percentile_not_the_maximum(local_services: Any) -> None:
    cloudwatch = boto3.client("cloudwatch")
    name = "tl-bbbbbbbbbbbb-rollback-modellatency"
    dimensions = [{"Name": "EndpointName", "Value": "tl-p99"}, {"Name": "VariantName", "Value": "AllTraffic"}]
    cloudwatch.put_metric_alarm(
        AlarmName=name, Namespace="AWS/SageMaker", MetricName="ModelLatency", Dimensions=dimensions,
        ExtendedStatistic="p99", Period=60, EvaluationPeriods=1, Threshold=2_000_000.0,
        ComparisonOperator="GreaterThanThreshold", TreatMissingData="notBreaching",
    )  # fmt: skip
    cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="start")
    evaluator = AlarmEvaluator(cloudwatch, [].append, prefix=name)
    # One slow answer in 200: the maximum is over the threshold, the 99th percentile is not.
    latencies = [1000.0] * 199 + [5_000_000.0]
    cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[
        {"MetricName": "ModelLatency", "Dimensions": dimensions, "Values": latencies[:150], "Unit": "Microseconds"},
        {"MetricName": "ModelLatency", "Dimensions": dimensions, "Values": latencies[150:], "Unit": "Microseconds"},
    ])  # fmt: skip
    assert evaluator.evaluate() == []
    assert cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"] == "OK"
    # Three slow answers in 203: now the 99th percentile is slow too.
    cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[
        {"MetricName": "ModelLatency", "Dimensions": dimensions, "Values": [5_000_000.0] * 3, "Unit": "Microseconds"},
    ])  # fmt: skip
    [fired] = evaluator.evaluate()
    assert fired["detail"]["state"]["value"] == "ALARM" and "5e+06" in fired["detail"]["state"]["reason"]
