"""S3 staging: job inputs downloaded into /opt/ml-style folders, outputs uploaded, and
the training code published as jobs read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from ..files import inside
from .exceptions import ServiceError

# One request per object up to 1 GiB: the local S3 keeps objects in memory, and the default
# 8 MiB parts make a model upload two to three times slower (parts are joined at the end).
TRANSFER = TransferConfig(multipart_threshold=2**30, multipart_chunksize=2**28)


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ServiceError("ValidationException", f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


# A file as it was downloaded (size, modification time): unchanged, it need not go back up.
Synced = dict[Path, tuple[int, int]]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def download_prefix(s3: Any, uri: str, target: Path, synced: Synced | None = None) -> int:
    """Objects under ``uri`` (a prefix, or one object's key) into ``target``, keeping
    sub-paths; ``synced`` records each file as downloaded."""
    bucket, prefix = split_s3(uri)
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            relative = key[len(prefix) :].lstrip("/") if key != prefix else Path(key).name
            path = inside(target, relative) if not relative.endswith("/") else None
            if path is None:  # a folder marker, or a key that would land outside the target
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(path), Config=TRANSFER)
            if synced is not None:
                synced[path] = _stamp(path)
            count += 1
    return count


def upload_folder(s3: Any, folder: Path, uri: str, synced: Synced | None = None) -> int:
    """Upload what ``folder`` holds. Writes still in flight (``.tmp*`` names, as train.py's
    atomic checkpoints use) are not uploaded, and a file that vanishes meanwhile is skipped:
    a stopped job's last process may still be renaming its checkpoint. A file in ``synced``
    that is as it was downloaded is already there (SageMaker's checkpoint sync uploads what
    changed)."""
    bucket, prefix = split_s3(uri)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".tmp") for part in relative.parts):
            continue
        try:
            if synced is not None and synced.get(path) == _stamp(path):
                continue
            s3.upload_file(str(path), bucket, prefix + relative.as_posix(), Config=TRANSFER)
        except FileNotFoundError:
            continue
        count += 1
    return count
