"""Feedback: labels that arrive later for captured requests, by the project's two doors.

A classifier's rows are ``{inference_id, label}``; a language model's give, for a captured
request, the answer it should have given (``completion``), a ``rating`` from 1 to 5, or
that its answer is preferred over another request's (``preferred_over``).
An S3 drop under ``feedback/<project>/…`` (JSONL or CSV of those rows) and
``POST /projects/{name}/feedback`` both land here. Each delivery is validated row by row
(``spec.parse_feedback``: the line and the reason for every row refused) and stored, once,
where the monitoring job reads it:

    labels/<project>/<delivery>.jsonl          the valid rows, each with received_at and source
    labels/<project>/<delivery>.receipt.json   what arrived: rows accepted, rows refused and why

``<delivery>`` is derived from the upload (key and ETag/version) or from the request
(its Idempotency-Key, else its rows), so a redelivered event or a retried POST finds its
receipt and writes nothing again. Which ids match captured requests, and which labels the
model knows, only the monitoring job can tell: it counts and reports the rest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from . import spec
from .domain import names
from .domain.events import NewData
from .intake import FeedbackDrop

LABELS_PREFIX = "labels/"
MAX_OBJECT_BYTES = 32 * 1024 * 1024
MAX_API_ROWS = 1000
MAX_ERRORS_KEPT = 50


class FeedbackRefused(spec.TuneloopError, ValueError):
    """The whole delivery is refused (too large, not UTF-8); the message says why."""


def labels_prefix(project: str) -> str:
    return f"{LABELS_PREFIX}{project}/"


def api_delivery(project: str, rows: Sequence[dict[str, Any]], idempotency_key: str | None) -> str:
    """A POST's delivery id: its Idempotency-Key, else its rows (the same rows twice are one)."""
    if idempotency_key:
        return names.derive_id("feedback-api", project, idempotency_key)
    digest = hashlib.sha256(json.dumps(list(rows), sort_keys=True).encode()).hexdigest()
    return names.derive_id("feedback-api", project, digest)


def check_api_rows(value: Any, task: str = "text-classification") -> list[dict[str, Any]]:
    """The ``labels`` of a POST body; ValueError names the first bad row (``labels[3].label``).
    A language model's rows are corrections, ratings or preferences (spec.check_feedback_row)."""
    fields = spec.FEEDBACK_FIELDS.get(task, spec.FEEDBACK_FIELDS["text-classification"])
    if not isinstance(value, list) or not value:
        raise ValueError(f"labels: must be a non-empty list of {{inference_id, {' | '.join(fields)}}}")
    if len(value) > MAX_API_ROWS:
        raise ValueError(f"labels: at most {MAX_API_ROWS} per request, got {len(value)}; send more requests")
    rows = []
    named = ("inference_id", *fields)
    for index, item in enumerate(value):
        row, why = spec.check_feedback_row(item, task)
        if row is None:
            raise ValueError(f"labels[{index}].{why}" if str(why).startswith(named) else f"labels[{index}]: {why}")
        rows.append(row)
    return rows


class FeedbackInbox:
    """Stores validated deliveries and their receipts in the data bucket."""

    def __init__(self, s3: Any, bucket: str, clock: Callable[[], datetime]) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._clock = clock

    def _receipt(self, project: str, delivery: str) -> dict[str, Any] | None:
        try:
            body = self._s3.get_object(Bucket=self._bucket, Key=f"{labels_prefix(project)}{delivery}.receipt.json")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        receipt: dict[str, Any] = json.loads(body["Body"].read())
        return receipt

    def store(
        self,
        project: str,
        delivery: str,
        source: str,
        rows: Sequence[dict[str, Any]],
        errors: Sequence[tuple[int, str]] = (),
    ) -> dict[str, Any]:
        """Write the rows, then the receipt (last: a receipt means the rows are stored).
        A delivery that has a receipt already is a repeat: its receipt, ``repeat`` set."""
        existing = self._receipt(project, delivery)
        if existing is not None:
            return {**existing, "repeat": True}
        received = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        prefix = labels_prefix(project)
        if rows:
            lines = "".join(
                json.dumps({**row, "received_at": received, "source": source}, ensure_ascii=False) + "\n"
                for row in rows
            )
            self._s3.put_object(Bucket=self._bucket, Key=f"{prefix}{delivery}.jsonl", Body=lines.encode("utf-8"),
                                ContentType="application/x-ndjson")  # fmt: skip
        receipt = {
            "delivery": delivery,
            "project": project,
            "source": source,
            "received_at": received,
            "accepted": len(rows),
            "refused": len(errors),
            "errors": [{"line": line, "reason": reason} for line, reason in errors[:MAX_ERRORS_KEPT]],
            "labels_uri": f"s3://{self._bucket}/{prefix}{delivery}.jsonl" if rows else None,
        }
        self._s3.put_object(Bucket=self._bucket, Key=f"{prefix}{delivery}.receipt.json",
                            Body=json.dumps(receipt, indent=1).encode(), ContentType="application/json")  # fmt: skip
        return {**receipt, "repeat": False}

    def intake(self, drop: FeedbackDrop, task: str = "text-classification") -> dict[str, Any]:
        """Read, validate and store a dropped feedback file (rows as the project's task
        takes them); a file refused whole still gets a receipt that says why."""
        errors: list[tuple[int, str]]
        try:
            rows, errors = self._read(drop, task)
        except FeedbackRefused as exc:
            rows, errors = [], [(0, str(exc))]
        return self.store(drop.project, drop.identity, drop.uri, rows, errors)

    def _read(self, drop: FeedbackDrop, task: str) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
        if drop.size > MAX_OBJECT_BYTES:
            raise FeedbackRefused(f"{drop.uri} is {drop.size} bytes; split it into files of at most "
                                  f"{MAX_OBJECT_BYTES // (1024 * 1024)} MiB")  # fmt: skip
        try:
            obj = self._s3.get_object(Bucket=drop.bucket, Key=drop.key)
        except ClientError as exc:
            raise FeedbackRefused(f"{drop.uri} could not be read: {exc.response.get('Error', {}).get('Code')}") from exc
        if int(obj.get("ContentLength") or 0) > MAX_OBJECT_BYTES:
            raise FeedbackRefused(f"{drop.uri} is over {MAX_OBJECT_BYTES // (1024 * 1024)} MiB; split it")
        try:
            text = obj["Body"].read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FeedbackRefused(f"{drop.uri} is not UTF-8 (byte {exc.start}: {exc.reason})") from exc
        return spec.parse_feedback(text, "csv" if drop.key.lower().endswith(".csv") else "jsonl", task)

    def receipts(self, project: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest receipts of the project's deliveries, newest first."""
        prefix = labels_prefix(project)
        found: list[tuple[Any, str]] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
            found += [(o["LastModified"], o["Key"]) for o in page.get("Contents", [])
                      if o["Key"].endswith(".receipt.json")]  # fmt: skip
        found.sort(reverse=True)
        return [
            json.loads(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()) for _, key in found[:limit]
        ]


class NewDataCounter:
    """What a project holds that a run created at ``since`` did not learn from: the requests
    labelled by the deliveries received since (each inference id once, however often it was
    sent), and the datasets (``datasets/<project>/<dataset>/``) with a file written since,
    other than the run's own.
    S3 and receipts keep whole seconds: only what arrived in a later second than the run's
    creation is new (what came in that second, such as the delivery that started it, its
    prepare job read: it starts later)."""

    def __init__(self, s3: Any, bucket: str, dataset_prefix: str = "datasets/") -> None:
        self._s3 = s3
        self._bucket = bucket
        self._dataset_prefix = dataset_prefix

    def _newer(self, prefix: str, since: datetime) -> list[str]:
        """Keys written in a later second than ``since``."""
        keys = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if o["LastModified"].replace(microsecond=0) > since]
        return keys

    def __call__(self, project: str, since: datetime, own: str = "") -> NewData:
        """``own``: the dataset URI the run was started on; files under it are its own."""
        stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        since = since.replace(microsecond=0)
        labelled: set[str] = set()
        for key in self._newer(labels_prefix(project), since):
            if not key.endswith(".receipt.json"):
                continue
            receipt = json.loads(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read())
            if not isinstance(receipt, dict) or str(receipt.get("received_at", "")) <= stamp:
                continue
            if receipt.get("labels_uri"):  # the delivery's rows: each request labelled counts once
                rows = self._s3.get_object(Bucket=self._bucket, Key=key.removesuffix(".receipt.json") + ".jsonl")
                for line in rows["Body"].read().decode("utf-8").splitlines():
                    row = json.loads(line) if line.strip() else {}
                    # A label or a correction is something to learn from; a rating or a preference is not.
                    trains = isinstance(row, dict) and ("label" in row or "completion" in row)
                    if trains and isinstance(row.get("inference_id"), str):
                        labelled.add(row["inference_id"])
        labels = len(labelled)
        prefix = f"{self._dataset_prefix}{project}/"
        # A drop's own files (the object, or a manifest's folder) are the run's; a retraining
        # run's is the whole prefix, where only the time tells.
        mine = own.removeprefix(f"s3://{self._bucket}/")
        mine = mine.rsplit("/", 1)[0] + "/" if mine.endswith("/manifest.json") else mine
        mine = "" if mine == prefix else mine
        keys = [key for key in self._newer(prefix, since) if not (mine and key.startswith(mine))]
        return NewData(labels=labels, datasets=len({key[len(prefix) :].split("/", 1)[0] for key in keys}))
