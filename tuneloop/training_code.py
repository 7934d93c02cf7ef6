"""The training code as SageMaker jobs read it: its version (a digest of ``training/``) and
its upload (a tarball and the files, once per version) to a bucket's ``code/<version>/``.
Used by `tuneloop deploy` and by the local SageMaker alike; needs nothing but boto3.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["code_digest", "code_version", "upload_code"]


def code_digest(source: Path, staged_only: bool = True) -> str:
    """The SHA-256 of a code folder: every file's path and bytes, each length-prefixed (no
    two folders share a digest by splitting paths and contents differently).
    ``staged_only``: without ``__pycache__``, as the code is staged; a folder a job
    downloaded is hashed whole, so a byte-compiled file planted beside the code (which
    Python would load in place of its source) fails the check."""
    digest = hashlib.sha256()
    files = (p for p in source.rglob("*") if p.is_file() and not (staged_only and "__pycache__" in p.parts))
    for path in sorted(files):
        name, data = path.relative_to(source).as_posix().encode(), path.read_bytes()
        digest.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def code_version(source: Path) -> str:
    return code_digest(source)[:16]


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
