"""Dead letters: the events a handler failed on, listed and delivered again.

On AWS every event handler has an SQS dead-letter queue (infra/resources.json). EventBridge
sends an event there when it could not invoke the function within its retry policy;
Lambda sends it there when the function threw on all three attempts of an async invoke.
Either way the message body is the event itself. The stack's outputs name each handler's
queue and function; ``redrive`` invokes the function asynchronously with the event, as
EventBridge would have, and deletes the message only once Lambda has accepted it.

On the local cloud the router keeps what failed three times in
``$TUNELOOP_HOME/dead-letters.jsonl``; ``redrive`` sends each event through the router
again and keeps in the file only what could not be sent.

Handlers take a redelivered event as what it is: a run it already moved records a
duplicate, and one it never saw moves now.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import spec

from .local.files import write_atomic

# Stack output keys: <Handler>DeadLetterQueue and <Handler>Function (infra/resources.json).
_OUTPUT = re.compile(r"^(?P<handler>On\w+?)(?P<kind>DeadLetterQueue|Function)$")


class DeadLetterError(spec.TuneloopError, RuntimeError):
    pass


@dataclass(frozen=True)
class DeadLetter:
    handler: str
    event: Any
    reason: str
    # An SQS receipt handle (AWS) or the line in the dead-letter file (local).
    handle: Any = None

    @property
    def event_id(self) -> str:
        return str(self.event.get("id")) if isinstance(self.event, dict) else "(not an event)"

    @property
    def summary(self) -> str:
        kind = self.event.get("detail-type", "?") if isinstance(self.event, dict) else "?"
        return f"{self.handler:<22} {self.event_id:<38} {kind:<48} {self.reason}"


def handler_name(logical_id: str) -> str:
    """OnSagemakerEvent → on_sagemaker_event, the name the app registers it under."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", logical_id).lower()


def _body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class StackDeadLetters:
    """A deployed stage's dead-letter queues, found through its CloudFormation stack."""

    def __init__(self, cloudformation: Any, sqs: Any, lambda_client: Any, stack: str) -> None:
        self._cloudformation = cloudformation
        self._sqs = sqs
        self._lambda = lambda_client
        self._stack = stack

    def targets(self) -> dict[str, tuple[str, str]]:
        """handler → (its dead-letter queue's URL, its function's ARN)."""
        try:
            stacks = self._cloudformation.describe_stacks(StackName=self._stack)["Stacks"]
        except ClientError as exc:
            raise DeadLetterError(f"cannot read stack {self._stack}: {exc}") from exc
        found: dict[str, dict[str, str]] = {}
        for output in stacks[0].get("Outputs", []) if stacks else []:
            match = _OUTPUT.match(output.get("OutputKey", ""))
            if match:
                found.setdefault(handler_name(match["handler"]), {})[match["kind"]] = output["OutputValue"]
        targets = {h: (o["DeadLetterQueue"], o["Function"]) for h, o in found.items() if len(o) == 2}
        if not targets:
            raise DeadLetterError(
                f"stack {self._stack} has no dead-letter queue outputs (was it packaged with infra/?)"
            )
        return targets

    def _receive(self, queue: str, hide_s: int, limit: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while len(messages) < limit:
            batch = self._sqs.receive_message(
                QueueUrl=queue,
                MaxNumberOfMessages=min(10, limit - len(messages)),
                VisibilityTimeout=hide_s,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                break
            messages += batch
        return messages

    @staticmethod
    def _reason(message: dict[str, Any]) -> str:
        attributes = message.get("MessageAttributes") or {}
        for key in ("ErrorMessage", "ERROR_MESSAGE", "ErrorCode", "ERROR_CODE"):
            if key in attributes:
                return str(attributes[key].get("StringValue", ""))[:200]
        return "no reason given"

    def letters(self, handler: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """What the queues hold, left in them (hidden for a moment while read, then shown again)."""
        letters = []
        for name, (queue, _) in sorted(self.targets().items()):
            if handler and name != handler:
                continue
            messages = self._receive(queue, hide_s=30, limit=limit)
            for message in messages:
                letters.append(DeadLetter(name, _body(message["Body"]), self._reason(message)))
            for start in range(0, len(messages), 10):
                entries = [
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for n, m in enumerate(messages[start : start + 10])
                ]
                self._sqs.change_message_visibility_batch(QueueUrl=queue, Entries=entries)
        return letters

    def redrive(self, handler: str | None = None, limit: int = 1000) -> tuple[int, list[str]]:
        """Deliver each dead letter again; (delivered, what failed and stays in its queue)."""
        delivered, failed = 0, []
        for name, (queue, function) in sorted(self.targets().items()):
            if handler and name != handler:
                continue
            for message in self._receive(queue, hide_s=120, limit=limit):
                try:
                    answer = self._lambda.invoke(
                        FunctionName=function, InvocationType="Event", Payload=message["Body"].encode()
                    )
                except ClientError as exc:
                    failed.append(f"{name}: {exc}")
                    continue
                if answer.get("StatusCode") != 202:
                    failed.append(f"{name}: Lambda answered {answer.get('StatusCode')}")
                    continue
                self._sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                delivered += 1
        return delivered, failed


class LocalDeadLetters:
    """The local router's dead-letter file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def letters(self, handler: str | None = None) -> list[DeadLetter]:
        letters = []
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        for line in lines:
            item = _body(line)
            if not isinstance(item, dict):
                letters.append(DeadLetter("?", line, "unreadable line in the dead-letter file", line))
                continue
            name = str(item.get("handler"))
            if handler and name != handler:
                continue
            reason = f"failed {item.get('attempts', '?')} times"
            letters.append(DeadLetter(name, item.get("event"), reason, line))
        return letters

    def redrive(self, send: Callable[[Any], list[str]], handler: str | None = None) -> tuple[int, list[str]]:
        """Send each dead letter through the router again; only what could not be sent stays."""
        delivered, failed, kept = 0, [], []
        for letter in self.letters():
            if handler and letter.handler != handler:
                kept.append(letter.handle)
                continue
            if not isinstance(letter.event, dict):
                failed.append(f"{letter.handler}: {letter.reason}; not an event, kept")
                kept.append(letter.handle)
                continue
            if send(letter.event):
                delivered += 1
            else:
                failed.append(f"{letter.handler}: event {letter.event_id} matches no handler's pattern; kept")
                kept.append(letter.handle)
        write_atomic(self.path, "".join(f"{line}\n" for line in kept))
        return delivered, failed
