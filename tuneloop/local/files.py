"""Files the local cloud keeps its state in, written so that a crash leaves the old
content or the new, never a torn file."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """A temporary file beside ``path`` (unique to this thread), flushed to disk, renamed
    over it; ``mode`` is set before the rename, so the content is never readable wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        if mode is not None:
            os.chmod(tmp, mode)
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def private_folder(path: Path) -> Path:
    """Create ``path`` (and parents) readable by its owner only: the local cloud's home
    holds the API token, the bucket's objects and every job's files."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def inside(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` when that stays inside ``folder``, else None: an S3 key such
    as ``/etc/x`` or ``a/../../x`` must never become a path outside it."""
    base = folder.resolve()
    path = (base / relative.lstrip("/")).resolve() if relative.strip("/") else None
    if path is None or base not in path.parents or Path(relative).is_absolute():
        return None
    return path
