"""Uploads that started nothing, kept where the uploader can see them.

A dataset dropped for a project that does not exist (or whose config no longer passes)
starts no run, and a labels file for an unknown project is stored nowhere. Whoever
uploaded it with ``aws s3 cp`` gets no answer from S3 about that, so each such upload is
recorded in the data bucket, ``refused/<id>.json`` (its key, why, when), and listed by
``GET /drops`` (``tuneloop drops``). A redelivered event writes the same record again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .domain import names

PREFIX = "refused/"
MAX_REASON = 300


class RefusedUploads:
    def __init__(self, s3: Any, bucket: str, clock: Callable[[], datetime]) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._clock = clock

    def record(self, key: str, identity: str, reason: str) -> dict[str, Any]:
        record = {
            "uri": f"s3://{self._bucket}/{key}",
            "key": key,
            "reason": reason[:MAX_REASON],
            "refused_at": self._clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        record_id = names.derive_id("refused", self._bucket, key, identity)
        self._s3.put_object(Bucket=self._bucket, Key=f"{PREFIX}{record_id}.json",
                            Body=json.dumps(record).encode(), ContentType="application/json")  # fmt: skip
        return record

    def newest(self, limit: int = 20) -> list[dict[str, Any]]:
        found: list[tuple[Any, str]] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=PREFIX):
            found += [(o["LastModified"], o["Key"]) for o in page.get("Contents", []) if o["Key"].endswith(".json")]
        found.sort(reverse=True)
        return [
            json.loads(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()) for _, key in found[:limit]
        ]
