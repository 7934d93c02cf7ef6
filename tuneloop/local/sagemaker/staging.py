"""S3 staging: job inputs downloaded into /opt/ml-style folders, outputs uploaded, and
the training code published as jobs read it."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ..files import inside
from .exceptions import ServiceError


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ServiceError("ValidationException", f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def download_prefix(s3: Any, uri: str, target: Path) -> int:
    """Objects under ``uri`` (a prefix, or one object's key) into ``target``, keeping sub-paths."""
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
            s3.download_file(bucket, key, str(path))
            count += 1
    return count


def upload_folder(s3: Any, folder: Path, uri: str) -> int:
    """Upload what ``folder`` holds. Writes still in flight (``.tmp*`` names, as train.py's
    atomic checkpoints use) are not uploaded, and a file that vanishes meanwhile is skipped:
    a stopped job's last process may still be renaming its checkpoint."""
    bucket, prefix = split_s3(uri)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".tmp") for part in relative.parts):
            continue
        try:
            s3.upload_file(str(path), bucket, prefix + relative.as_posix())
        except FileNotFoundError:
            continue
        count += 1
    return count


def code_version(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(source).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def upload_code(s3: Any, source: Path, bucket: str) -> str:
    """The training code as SageMaker jobs read it: a tarball and the files, once per version."""
    version = code_version(source)
    prefix = f"code/{version}"
    try:
        s3.head_object(Bucket=bucket, Key=f"{prefix}/sourcedir.tar.gz")
    except Exception:
        staging = Path(tempfile.mkdtemp(prefix="tuneloop-code-"))
        try:
            archive = staging / "sourcedir.tar.gz"
            files = [p for p in sorted(source.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
            with tarfile.open(archive, "w:gz") as tar:
                for path in files:
                    tar.add(path, arcname=path.relative_to(source).as_posix())
            for path in files:
                s3.upload_file(str(path), bucket, f"{prefix}/source/{path.relative_to(source).as_posix()}")
            s3.upload_file(str(archive), bucket, f"{prefix}/sourcedir.tar.gz")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return f"s3://{bucket}/{prefix}"
