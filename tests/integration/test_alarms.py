"""The local alarm evaluator on moto: thresholds, periods, missing data, and the events it emits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from chalicelib.domain import names
from chalicelib.domain.events import AlarmChanged, NewData
from chalicelib.events import parse_event
from tests.conftest import STAGE
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
    drift.publish(result, "published", f"tl-{STAGE}-published", "pppppppppppp", "us-east-1")
    cloudwatch = boto3.client("cloudwatch")
    mine = drift_dimensions("published", "pppppppppppp", stage=STAGE)
    listed = cloudwatch.list_metrics(Namespace=DRIFT_NAMESPACE, Dimensions=mine)["Metrics"]
    assert {m["MetricName"] for m in listed} == {"input_js", "embedding_auc"}
    now = datetime.now(UTC)
    stats = cloudwatch.get_metric_statistics(
        Namespace=DRIFT_NAMESPACE, MetricName="input_js", Dimensions=mine,
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


def test_a_retrained_model_starts_with_alarms_of_its_own(service: Any, local_services: Any) -> None:
    """With cooldown_s 0: the first model's drift fires and retrains; the retrained model is
    deployed, and its alarms (on its own series) start with no data, so nothing retrains
    again, whatever its predecessor's numbers were. Only a check of the new model's own
    traffic that breaches starts the next retraining run."""
    from chalicelib.deployment import monitoring_alarm_requests
    from chalicelib.domain.states import RunState
    from tests.conftest import BUCKET, DEMO_CONFIG
    from tests.integration.test_drift_schedule import deployed, to_deployed
    from training import drift

    cloudwatch = boto3.client("cloudwatch")
    project = f"fresh{uuid.uuid4().hex[:6]}"
    service.create_project(project, {**DEMO_CONFIG, "retrain": {"cooldown_s": 0, "max_per_day": 10}})
    # Something new to learn from whenever an alarm asks (what is counted, and how, is
    # test_feedback's): this test is about which numbers each model's alarms see.
    service.new_data = lambda *_: NewData(labels=0, datasets=1)
    first = deployed(service, project, f"s3://{BUCKET}/datasets/{project}/ds-1/reviews.jsonl")
    evaluator = AlarmEvaluator(cloudwatch, lambda _: None)

    def deploy_alarms(run_id: str) -> None:  # what CreateDriftAlarms sends (the outbox waits on SageMaker here)
        for alarm in monitoring_alarm_requests(service.runs.get(run_id).run):
            cloudwatch.put_metric_alarm(**alarm)

    def check(run_id: str, psi: float) -> None:  # a drift check's metrics, as drift.py publishes them
        drift.publish({"metrics": {"prediction_psi": {"published": psi}, "input_js": {"published": 0.48}}},
                      project, names.endpoint_name(project, stage=STAGE), run_id, "us-east-1")  # fmt: skip

    def evaluate(*run_ids: str) -> list[str]:
        """One evaluation of every alarm; each event about these runs goes to the service."""
        fired = []
        for event in evaluator.evaluate():
            parsed = parse_event(event)
            if isinstance(parsed, AlarmChanged) and parsed.run_id in run_ids:
                service.handle(parsed)
                fired.append(f"{parsed.alarm_name}:{parsed.state}")
        return fired

    def children(run_id: str) -> list[str]:
        return [s.run.run_id for s in service.runs.page(project=project, limit=50).items
                if s.run.parent_run_id == run_id]  # fmt: skip

    deploy_alarms(first)
    evaluate(first)  # no data yet: every alarm OK
    check(first, 2.98)
    assert f"{names.drift_alarm_name(first, 'prediction_psi', stage=STAGE)}:ALARM" in evaluate(first)
    [second] = children(first)
    to_deployed(service, second, project)
    assert service.runs.get(first).run.state is RunState.SUPERSEDED
    deploy_alarms(second)

    # The predecessor's 2.98 is not the new model's: its alarms see no data, not breaching.
    assert all(change.endswith(":OK") for change in evaluate(first, second))
    listed = cloudwatch.describe_alarms(AlarmNamePrefix=f"tl-{STAGE}-{second}-")["MetricAlarms"]
    states = {a["AlarmName"]: a["StateValue"] for a in listed}
    assert states and set(states.values()) == {"OK"}, states
    assert children(second) == [] and len(service.runs.page(project=project, limit=50).items) == 2

    # The new model's own traffic drifts: its own check breaches, and that starts the next run.
    check(second, 0.9)
    assert f"{names.drift_alarm_name(second, 'prediction_psi', stage=STAGE)}:ALARM" in evaluate(second)
    assert len(children(second)) == 1, service.runs.get(second).run.history[-1].reason
