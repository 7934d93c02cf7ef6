"""A stage's notable moments, told where people already are.

A run waiting for approval, a run that failed or was rolled back, and a retraining run an
alarm started each make one notice: which run, what happened, the next command. Each is
kept in the data bucket (``notices/<time>-<id>.json``, listed by ``GET /notices`` and
``tuneloop events``) and, where the stage has a topic (``TUNELOOP_NOTICES_TOPIC_ARN``, the
stack's SNS topic: subscribe an email address or a chat hook to it), published there.
A notice is made once, by the decision that moves the run (a redelivered event decides
nothing new); SNS delivers at least once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .domain import names
from .domain.commands import StartChildRun
from .domain.events import AlarmChanged, DomainEvent, LabelsArrived
from .domain.machine import Decision
from .domain.states import RunState
from .observability import logger

PREFIX = "notices/"
STAGE = "<stage>"  # where the next command takes its --stage


def notice_for(decision: Decision, event: DomainEvent, stage: str = "") -> dict[str, str] | None:
    """The notice a committed decision makes, or None for an ordinary step. Its next
    command names the stage (none for the local cloud's)."""
    if not decision.changed:
        return None
    notice = _notice(decision, event)
    if notice:
        notice["next"] = notice["next"].replace(STAGE, f" --stage {stage}" if stage and stage != "local" else "")
    return notice


def _notice(decision: Decision, event: DomainEvent) -> dict[str, str] | None:
    run = decision.run
    where = f"run {run.run_id} of project {run.project}"
    if run.state is RunState.PENDING_APPROVAL:
        return {"kind": "waiting_for_approval", "subject": f"tuneloop: {where} waits for approval",
                "message": f"{where} passed its gate and waits for a person: {decision.note}",
                "next": f"tuneloop run approve {run.run_id}{STAGE} (or reject {run.run_id})"}  # fmt: skip
    if run.state is RunState.FAILED:
        return {"kind": "failed", "subject": f"tuneloop: {where} failed",
                "message": f"{where} failed: {decision.note}",
                "next": f"tuneloop run show {run.run_id}{STAGE}"}  # fmt: skip
    if run.state is RunState.ROLLED_BACK:
        return {"kind": "rolled_back", "subject": f"tuneloop: {where} was rolled back",
                "message": f"{where} was rolled back; the endpoint serves its previous model: {decision.note}",
                "next": f"tuneloop run show {run.run_id}{STAGE}"}  # fmt: skip
    children = [c for c in decision.commands if isinstance(c, StartChildRun)]
    if children and isinstance(event, (AlarmChanged, LabelsArrived)):
        child = children[0].child_run_id
        why = "labels arrived for the alarms that waited for them"
        if isinstance(event, AlarmChanged):
            why = f"{names.monitored(event.alarm_name)} ({event.alarm_name}) is in ALARM"
        return {"kind": "retraining_started", "subject": f"tuneloop: an alarm started retraining {run.project}",
                "message": f"{why}: {where} started retraining run {child} ({decision.note})",
                "next": f"tuneloop watch {child}{STAGE}"}  # fmt: skip
    return None


class Notices:
    def __init__(
        self, s3: Any, bucket: str, sns: Any, topic_arn: str, clock: Callable[[], datetime], stage: str = ""
    ) -> None:
        self._s3, self._bucket = s3, bucket
        self._stage = stage
        self._sns, self._topic = sns, topic_arn
        self._clock = clock

    def tell(self, decision: Decision, event: DomainEvent) -> None:
        """Keep and publish the decision's notice, if it makes one. Never raises: a notice
        that could not be sent is logged; the run has moved on regardless."""
        notice = notice_for(decision, event, self._stage)
        if notice is None:
            return
        run = decision.run
        now = self._clock()
        record = {**notice, "run_id": run.run_id, "project": run.project, "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "event_id": event.event_id}  # fmt: skip
        key = f"{PREFIX}{now:%Y%m%dT%H%M%S}-{names.derive_id('notice', run.run_id, event.event_id)}.json"
        try:
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=json.dumps(record).encode(),
                                ContentType="application/json")  # fmt: skip
            if self._topic:
                body = f"{record['message']}\n\nNext: {record['next']}\n"
                kind = {"kind": {"DataType": "String", "StringValue": record["kind"]}}
                self._sns.publish(TopicArn=self._topic, Subject=record["subject"][:99], Message=body,
                                  MessageAttributes=kind)  # fmt: skip
        except Exception:  # botocore's errors: the run has moved on; the notice is in the log
            logger.exception("notice not sent", extra={"run_id": run.run_id, "notice": record})

    def tell_budget(self, spent: dict[str, Any]) -> None:
        """Spend crossed the stage's budget: one notice a month."""
        marker = f"-budget-{spent['month']}.json"
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=PREFIX):
                if any(o["Key"].endswith(marker) for o in page.get("Contents", [])):
                    return
            now = self._clock()
            stage = f" --stage {self._stage}" if self._stage and self._stage != "local" else ""
            record: dict[str, Any] = {
                "kind": "budget_spent", "run_id": None, "project": None, "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "subject": f"tuneloop: stage {self._stage} spent its budget for {spent['month']}",
                "message": f"stage {self._stage} has spent ${spent['usd']:.2f} of its ${spent['budget_usd']} budget "
                           f"for {spent['month']} (list prices); new runs are refused until next month",
                "next": f"tuneloop status{stage}",
            }  # fmt: skip
            self._s3.put_object(Bucket=self._bucket, Key=f"{PREFIX}{now:%Y%m%dT%H%M%S}{marker}",
                                Body=json.dumps(record).encode(), ContentType="application/json")  # fmt: skip
            if self._topic:
                self._sns.publish(TopicArn=self._topic, Subject=record["subject"][:99],
                                  Message=f"{record['message']}\n\nNext: {record['next']}\n")  # fmt: skip
        except Exception:  # botocore's errors: the refusal stands; the notice is in the log
            logger.exception("budget notice not sent", extra={"spent": spent})

    def newest(self, limit: int = 20) -> list[dict[str, Any]]:
        found: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=PREFIX):
            found += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json")]
        found.sort(reverse=True)  # keys start with the time
        return [json.loads(self._s3.get_object(Bucket=self._bucket, Key=k)["Body"].read()) for k in found[:limit]]
