"""The local EventBridge: routes events to the app's handlers by the app's own patterns.

moto server does the routing. For every ``@app.on_cw_event`` handler the router puts an
EventBridge rule with the handler's pattern and an SQS queue as its target; the local
bucket has EventBridge notifications on, so any upload (by any S3 client) becomes an
``Object Created`` event on the bus. The router long-polls each queue and invokes the
handler the way Lambda would: at least once, a failed delivery retried, and after
``MAX_ATTEMPTS`` the event is kept in a dead-letter file, never dropped silently.

Where moto's events differ from AWS's, the router completes them first: moto leaves out
``account`` on events put with PutEvents and writes S3 keys unencoded, where S3 sends
them URL-encoded ("red flower.jpg" arrives as "red+flower.jpg").
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

from chalice.app import CloudWatchEventConfig, ScheduledEventConfig
from chalice.local import LambdaContext

from chalicelib.events import event_id

from .audit import invoking
from .services import queue_name

log = logging.getLogger("tuneloop.router")

ACCOUNT = "123456789012"
MAX_ATTEMPTS = 3
# Marks a message that carries a complete AWS envelope already (tuneloop event send).
ORIGIN_ATTRIBUTE = "tuneloop-origin"


@dataclass(frozen=True)
class Route:
    name: str
    pattern: Mapping[str, Any]
    queue_url: str


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """EventBridge's pattern matching, as moto implements it."""
    from moto.events.models import EventPattern

    return bool(EventPattern.load(json.dumps(pattern)).matches_event(dict(event)))  # type: ignore[arg-type]


def complete_envelope(event: dict[str, Any]) -> dict[str, Any]:
    """Fill in what AWS always sends and moto leaves out; encode S3 keys as S3 does."""
    event = dict(event)
    event.setdefault("version", "0")
    event.setdefault("account", ACCOUNT)
    event.setdefault("resources", [])
    event.setdefault("region", "us-east-1")
    if event.get("source") == "aws.s3" and isinstance(event.get("detail"), dict):
        detail = dict(event["detail"])
        obj = dict(detail.get("object") or {})
        # moto gives every S3 event the same id; AWS's are unique. Derive one from the
        # object version the event reports, so a redelivery would still share it.
        event["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps([detail.get("bucket"), obj], sort_keys=True)))
        if isinstance(obj.get("key"), str):
            obj["key"] = quote_plus(obj["key"], safe="/")
        detail["object"] = obj
        event["detail"] = detail
    return event


class EventRouter:
    def __init__(
        self,
        app_module: ModuleType,
        sqs: Any,
        events: Any,
        dead_letter_path: Path | None = None,
        visibility_timeout_s: int = 5,
        drop_pattern: Mapping[str, Any] | None = None,
        dropped_path: Path | None = None,
        patterns: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._app_module = app_module
        # Each handler's rule pattern as the template gives it (``template.rule_patterns``);
        # a handler it lacks keeps its decorator's.
        self._patterns = dict(patterns or {})
        self._sqs = sqs
        self._events = events
        self._dead_letters = dead_letter_path
        self._visibility = visibility_timeout_s
        # Events matching this pattern are not delivered, as if EventBridge had lost them
        # (TUNELOOP_DROP_EVENTS: for trying what the reconciler's sweeper does); they are
        # kept in ``dropped_path`` for a late delivery by hand.
        self._drop = drop_pattern
        self._dropped = dropped_path
        self._routes: list[Route] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.delivered = 0

    @property
    def app(self) -> Any:
        return self._app_module.app

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    def install(self) -> list[Route]:
        """Create (idempotently) one rule + queue per event handler of the app."""
        self._routes = []
        for source in self.app.event_sources:
            if not isinstance(source, CloudWatchEventConfig):
                continue
            queue = queue_name(source.name)
            url = self._sqs.create_queue(QueueName=queue, Attributes={"VisibilityTimeout": str(self._visibility)})[
                "QueueUrl"
            ]
            arn = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            rule = f"tuneloop-{source.name}"
            pattern = self._patterns.get(source.name, source.event_pattern)
            self._events.put_rule(Name=rule, EventPattern=json.dumps(pattern), State="ENABLED")
            self._events.put_targets(Rule=rule, Targets=[{"Id": "router", "Arn": arn}])
            self._routes.append(Route(source.name, pattern, url))
        return self.routes

    def handler(self, name: str) -> Any:
        """The app's handler, run as its Lambda function (audit.invoking: its calls are its role's)."""
        function = getattr(self._app_module, name)

        def run(event: Any, context: Any) -> Any:
            with invoking(name):
                return function(event, context)

        return run

    # --- delivery ------------------------------------------------------------------------

    def matching_routes(self, event: Mapping[str, Any]) -> list[Route]:
        return [r for r in self._routes if matches(r.pattern, event)]

    def requeue(self, path: Path) -> int:
        """Put back the events ``tuneloop down`` took out of the queues (moto keeps queues in
        memory only); the file goes once all are queued again. A repeat delivers twice at
        worst, which handlers take as the duplicate it is."""
        if not path.is_file():
            return 0
        queues = {queue_name(r.name): r.queue_url for r in self._routes}
        count = 0
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
                url = queues[item["queue"]]
            except (ValueError, KeyError, TypeError):
                log.error("queued event %r has no queue here; kept in the dead letters", line[:200])
                if self._dead_letters is not None:
                    with self._dead_letters.open("a", encoding="utf-8") as out:
                        out.write(json.dumps({"handler": None, "attempts": 0, "event": line}) + "\n")
                continue
            self._sqs.send_message(
                QueueUrl=url, MessageBody=item["body"], MessageAttributes=item.get("attributes") or {}
            )
            count += 1
        path.unlink()
        return count

    def send(self, event: Mapping[str, Any], by_hand: bool = False) -> list[str]:
        """Deliver a complete AWS envelope as EventBridge would (keeps its id: replays dedupe).
        ``by_hand``: someone delivers it (`tuneloop event send`, a redrive), so
        TUNELOOP_DROP_EVENTS, which stands for EventBridge losing events, lets it through."""
        routes = self.matching_routes(event)
        origin = "hand" if by_hand else "send"
        for route in routes:
            self._sqs.send_message(
                QueueUrl=route.queue_url,
                MessageBody=json.dumps(event),
                MessageAttributes={ORIGIN_ATTRIBUTE: {"DataType": "String", "StringValue": origin}},
            )
        return [r.name for r in routes]

    def poll(self, route: Route, wait_s: int = 1) -> int:
        response = self._sqs.receive_message(
            QueueUrl=route.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_s,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        handled = 0
        for message in response.get("Messages", []):
            handled += self._deliver(route, message)
        return handled

    def _deliver(self, route: Route, message: Mapping[str, Any]) -> int:
        try:
            raw: Any = json.loads(message["Body"])
        except ValueError:
            raw = message["Body"]  # not an event: the handler says so and ignores it
        origin = (message.get("MessageAttributes") or {}).get(ORIGIN_ATTRIBUTE, {}).get("StringValue")
        event = complete_envelope(raw) if origin not in ("send", "hand") and isinstance(raw, dict) else raw
        if self._drop is not None and origin != "hand" and isinstance(event, dict) and matches(self._drop, event):
            log.warning("event %s dropped before %s, as TUNELOOP_DROP_EVENTS asks", event_id(event), route.name)
            if self._dropped is not None:
                with self._dropped.open("a", encoding="utf-8") as out:
                    out.write(json.dumps({"handler": route.name, "event": event}) + "\n")
            self._sqs.delete_message(QueueUrl=route.queue_url, ReceiptHandle=message["ReceiptHandle"])
            return 1
        attempts = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", "1"))
        context = LambdaContext(route.name, memory_size=512, max_runtime_ms=900_000)
        try:
            result = self.handler(route.name)(event, context)
        except Exception:
            log.exception("handler %s failed on event %s (attempt %d)", route.name, event_id(event), attempts)
            if attempts < MAX_ATTEMPTS:
                return 0  # visible again after the visibility timeout: retried
            self._dead_letter(route, event, attempts)
        else:
            log.info("handler %s took event %s: %s", route.name, event_id(event), result)
        self._sqs.delete_message(QueueUrl=route.queue_url, ReceiptHandle=message["ReceiptHandle"])
        with self._lock:
            self.delivered += 1
        return 1

    def _dead_letter(self, route: Route, event: Any, attempts: int) -> None:
        log.error("event %s dead-lettered after %d attempts", event_id(event), attempts)
        if self._dead_letters is not None:
            with self._dead_letters.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"handler": route.name, "attempts": attempts, "event": event}) + "\n")

    def drain(self, idle_polls: int = 2) -> int:
        """Deliver until every queue is empty (tests and one-shot scripts)."""
        total = 0
        idle = 0
        while idle < idle_polls:
            handled = sum(self.poll(route, wait_s=0) for route in self._routes)
            total += handled
            idle = idle + 1 if handled == 0 else 0
        return total

    # --- background operation ---------------------------------------------------------------

    def start(self, schedule_interval_s: float = 30.0) -> None:
        self._stop.clear()
        for route in self._routes:
            thread = threading.Thread(target=self._loop, args=(route,), name=f"router-{route.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        thread = threading.Thread(
            target=self._schedules, args=(schedule_interval_s,), name="router-schedules", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def _loop(self, route: Route) -> None:
        while not self._stop.is_set():
            try:
                self.poll(route, wait_s=1)
            except Exception:
                log.exception("polling %s failed; retrying", route.name)
                self._stop.wait(1)

    def _schedules(self, interval_s: float) -> None:
        """Scheduled handlers (the reconciler) on a local interval instead of their rate."""
        while not self._stop.wait(interval_s):
            for source in self.app.event_sources:
                if isinstance(source, ScheduledEventConfig):
                    self.run_schedule(source.name)

    def run_schedule(self, name: str) -> Any:
        event = {
            "version": "0",
            "id": f"schedule-{name}-{time.time_ns()}",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": "us-east-1",
            "resources": [],
            "detail": {},
        }
        try:
            return self.handler(name)(event, LambdaContext(name, memory_size=512, max_runtime_ms=900_000))
        except Exception:
            log.exception("scheduled handler %s failed", name)
            return None
