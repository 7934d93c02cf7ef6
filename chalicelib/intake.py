"""S3 intake: which uploads are datasets, and when a dataset is ready.

Convention (documented in README, "Dropping a dataset"):

    datasets/<project>/<dataset-id>/<file>.jsonl|.csv   a single-file dataset, ready on arrival
    datasets/<project>/<dataset-id>/manifest.json       a multi-file dataset, ready when the
                                                         manifest (uploaded last) arrives
    datasets/<project>/<dataset-id>/<dir>/...           parts of a multi-file dataset: wait
    feedback/<project>/.../<file>.jsonl|.csv             labels for captured requests

Keys in S3 event notifications are URL-encoded ("red flower.jpg" arrives as
"red+flower.jpg"); they are decoded exactly once, here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from . import spec
from .domain import names
from .events import Fields, MalformedEventError, check_envelope, parse_time

DATA_SUFFIXES = (".jsonl", ".csv")
BUCKET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MANIFEST = "manifest.json"
FEEDBACK_PREFIX = "feedback/"


class IntakeIgnored(spec.TuneloopError, ValueError):
    """The object starts no run; the message says why (logged, never raised to Lambda)."""


@dataclass(frozen=True)
class DatasetDrop:
    event_id: str
    time: datetime
    bucket: str
    key: str
    project: str
    dataset_id: str
    size: int
    # What makes this upload unique: same object delivered twice → same key → one run.
    idempotency_key: str

    @property
    def dataset_uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _created_object(raw: Any) -> tuple[Mapping[str, Any], str, str, Fields, int]:
    """(envelope, bucket, decoded key, the detail's object, size or -1) of an Object Created event."""
    envelope = check_envelope(raw)
    if envelope["source"] != "aws.s3" or envelope["detail-type"] != "Object Created":
        raise MalformedEventError(
            f"not an S3 Object Created event: {envelope['source'][:64]!r} / {envelope['detail-type'][:64]!r}"
        )
    detail = Fields(envelope["detail"], "detail")
    bucket = detail.object("bucket").text("name", required=True, limit=63)
    if not BUCKET_NAME_RE.match(bucket):
        raise MalformedEventError(f"detail.bucket.name {bucket!r} is not an S3 bucket name")
    obj = detail.object("object")
    # S3 keys are at most 1,024 bytes; URL-encoded, up to three times that.
    key = unquote_plus(obj.text("key", required=True, limit=3 * 1024))
    if len(key.encode("utf-8", "replace")) > 1024:
        raise MalformedEventError("detail.object.key is longer than 1024 bytes")
    size = obj.number("size")
    if size is not None and (size < 0 or size != int(size)):
        raise MalformedEventError(f"detail.object.size must be a whole number of bytes, got {size}")
    if size == 0:
        raise IntakeIgnored(f"s3://{bucket}/{key} is empty")
    return envelope, bucket, key, obj, -1 if size is None else int(size)


def parse_object_created(raw: Any, prefix: str = "datasets/") -> DatasetDrop:
    envelope, bucket, key, obj, size = _created_object(raw)
    project, dataset_id = check_dataset_key(key, prefix)
    return DatasetDrop(
        event_id=envelope["id"],
        time=parse_time(envelope["time"]),
        bucket=bucket,
        key=key,
        project=project,
        dataset_id=dataset_id,
        size=size,
        idempotency_key=run_id_for(bucket, key, object_identity(envelope["id"], obj)),
    )


@dataclass(frozen=True)
class FeedbackDrop:
    """A labels file uploaded under ``feedback/<project>/``."""

    event_id: str
    bucket: str
    key: str
    project: str
    size: int
    # Which upload of the key: a redelivered event is the same receipt.
    identity: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_feedback_created(raw: Any, prefix: str = FEEDBACK_PREFIX) -> FeedbackDrop:
    envelope, bucket, key, obj, size = _created_object(raw)
    project = check_feedback_key(key, prefix)
    identity = names.derive_id("feedback", bucket, key, object_identity(envelope["id"], obj))
    return FeedbackDrop(envelope["id"], bucket, key, project, size, identity)


def check_feedback_key(key: str, prefix: str = FEEDBACK_PREFIX) -> str:
    """The project of ``feedback/<project>/…/<file>.jsonl|.csv``; IntakeIgnored otherwise."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise IntakeIgnored(f"key {key!r} contains control characters")
    if not key.startswith(prefix):
        raise IntakeIgnored(f"key {key!r} is outside {prefix}")
    parts = key[len(prefix) :].split("/")
    if len(parts) < 2 or any(part in ("", ".", "..") for part in parts):
        raise IntakeIgnored(f"key {key!r} is not {prefix}<project>/<file>.jsonl|.csv")
    if not names.PROJECT_NAME_RE.match(parts[0]) or len(parts[0]) > names.PROJECT_NAME_MAX:
        raise IntakeIgnored(f"{parts[0]!r} in key {key!r} is not a valid project name")
    if not parts[-1].lower().endswith(DATA_SUFFIXES):
        raise IntakeIgnored(f"{parts[-1]!r} is not a {'/'.join(DATA_SUFFIXES)} file of labels")
    return parts[0]


def object_identity(event_id: str, obj: Fields) -> str:
    """Which upload of the key this is: the version id on a versioned bucket, else the
    ETag with the size (moto writes ``eTag`` where AWS documents ``etag``: either will do).
    An unversioned bucket reports version id ``null`` (moto) or none at all (AWS)."""
    size = obj.number("size")
    identity = upload_identity(obj.text("version-id"), obj.text("etag") or obj.text("eTag"), size)
    # Neither: nothing tells two uploads apart but the event itself.
    return identity or f"event:{obj.text('sequencer') or event_id}"


def upload_identity(version_id: str | None, etag: str | None, size: float | None) -> str | None:
    """One upload's identity from what S3 says of it (its event, or HeadObject)."""
    if version_id and version_id != "null":
        return f"version:{version_id}"
    etag = (etag or "").strip('"')
    if etag:
        return f"etag:{etag}:{'' if size is None else int(size)}"
    return None


def run_id_for(bucket: str, key: str, identity: str) -> str:
    """The id of the run an upload starts: a redelivered event finds the same one."""
    return names.derive_id("s3", bucket, key, identity)


def check_dataset_key(key: str, prefix: str = "datasets/") -> tuple[str, str]:
    """(project, dataset id) for a key that completes a dataset; IntakeIgnored otherwise."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise IntakeIgnored(f"key {key!r} contains control characters")
    if not key.startswith(prefix):
        raise IntakeIgnored(f"key {key!r} is outside {prefix}")
    parts = key[len(prefix) :].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise IntakeIgnored(f"key {key!r} has an empty, '.' or '..' segment")
    if len(parts) < 3:
        raise IntakeIgnored(f"key {key!r} is not {prefix}<project>/<dataset-id>/<file>")
    project, dataset_id, rest = parts[0], parts[1], parts[2:]
    if not names.PROJECT_NAME_RE.match(project) or len(project) > names.PROJECT_NAME_MAX:
        raise IntakeIgnored(f"{project!r} in key {key!r} is not a valid project name")
    if len(rest) == 1 and (rest[0] == MANIFEST or rest[0].lower().endswith(DATA_SUFFIXES)):
        return project, dataset_id
    if len(rest) == 1:
        raise IntakeIgnored(f"{rest[0]!r} is neither {MANIFEST} nor a {'/'.join(DATA_SUFFIXES)} file")
    raise IntakeIgnored(f"key {key!r} is part of a multi-file dataset; waiting for its {MANIFEST}")


def is_object_created(raw: Mapping[str, Any]) -> bool:
    return raw.get("source") == "aws.s3" and raw.get("detail-type") == "Object Created"
