"""What every part of the local SageMaker shares: account, region, time, ARNs, event
envelopes, durable JSON files and channel names. Imports nothing of the package's own but
its exceptions."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..files import write_atomic
from .exceptions import ServiceError

ACCOUNT = "123456789012"
REGION = "us-east-1"
OPT_ML = "/opt/ml"
PROCESSING_ROOT = f"{OPT_ML}/processing"
PROCESSING_CODE = f"{PROCESSING_ROOT}/input/code"
Emit = Callable[[dict[str, Any]], object]


# A channel's name becomes a folder: a name SageMaker's pattern allows but that would not stay
# inside the job's channels (".", "..") is refused.
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]{0,63}$")


def check_channel(name: object, field: str) -> None:
    """A channel name that is a folder of its own; ValidationException otherwise."""
    if not isinstance(name, str) or not _CHANNEL_RE.match(name):
        raise ServiceError(
            "ValidationException",
            f"{field} {str(name)[:64]!r}: the local SageMaker takes channel names of letters, digits, '.', '-' and "
            "'_', starting with a letter or digit",
        )


def now() -> datetime:
    return datetime.now(UTC)


def arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{name.lower()}"


def envelope(detail_type: str, resource_arn: str, detail: dict[str, Any]) -> dict[str, Any]:
    """An EventBridge event as SageMaker sends it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.sagemaker",
        "account": ACCOUNT,
        "time": now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [resource_arn],
        "detail": detail,
    }


def json_default(value: Any) -> Any:
    """Timestamps go on the wire as epoch seconds, as SageMaker's JSON protocol sends them."""
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` so that a crash at any moment leaves the old file or the new one."""
    write_atomic(path, json.dumps(data, default=json_default))


def read_json(path: Path) -> Any:
    """A JSON file's content; None when it is missing or unreadable (a torn write of an
    older version, a disk that filled up): the caller decides what that means."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
