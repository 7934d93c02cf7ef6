"""Processes the local cloud started, known by recorded PID and start time, never by name.

A PID alone is not an identity: a process that died leaves a zombie until its parent
reaps it (``kill(pid, 0)`` still succeeds), and a PID can be reused by an unrelated
process. A record holds the PID and the process's start time (``/proc/<pid>/stat`` field
22, clock ticks since boot); a process is "ours and running" only when both match and it
is not a zombie. ``reclaim`` ends such a process and its group (jobs and model servers run
in sessions of their own), so a restart never leaves the previous host's children running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .files import write_atomic


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    # Start time in clock ticks since boot (None where /proc is not there to tell).
    started: int | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        return cls(pid, start_ticks(pid))

    def running(self) -> bool:
        return running(self.pid, self.started)

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), None if data.get("started") is None else int(data["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def running(pid: int, started: int | None = None) -> bool:
    """True when ``pid`` is a live process (not a zombie) that started at ``started``."""
    if pid <= 0:
        return False
    fields = _stat(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return False  # /proc works here and has no such process
        try:  # no /proc (macOS): existence is all one can tell
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def reap(pid: int) -> None:
    """Collect a child that has exited, so it leaves no zombie behind (not a child: no-op)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def reclaim(record: ProcessRecord, grace_s: float = 10) -> bool:
    """End a recorded process and its process group if either still runs; True if it did.

    Done means the whole group is gone, not just the recorded leader: a job's toolkit
    exits at once on SIGTERM while the training script it started still writes (and
    prunes) checkpoints, which a resumed job must not download under it."""
    if not record.running() and not _group_left(record):
        return False
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(record.pid, sig)  # its group: what it started in its session goes too
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(record.pid, sig)  # not a group leader
            except ProcessLookupError:
                return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            reap(record.pid)
            if not record.running() and not _group_left(record):
                return True
            time.sleep(0.05)
    return True


def _group_left(record: ProcessRecord) -> bool:
    """Whether the recorded leader's process group outlives it. Only while no other
    process holds the PID: Linux reuses a PID only once no group or session has its id,
    so a different process there means the recorded group is long gone."""
    ticks = start_ticks(record.pid)
    return (ticks is None or ticks == record.started) and group_alive(record.pid)


def group_alive(pgid: int) -> bool:
    """True while any process of the group is left (zombies of its own children aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM a child's process group and wait, up to ``grace_s``, for every process in it
    to exit (as SageMaker waits for a container to checkpoint), then SIGKILL what is left.
    Waiting for the child alone is not enough: a toolkit that exits on SIGTERM leaves the
    training script it started still writing its checkpoint."""
    pgid = process.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        process.wait()
        return
    wait_group(process, grace_s)


def wait_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait, up to ``timeout_s``, until the child and every process of its group have
    exited; SIGKILL what is left then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not group_alive(process.pid):
            return
        time.sleep(0.05)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def record_child(process: subprocess.Popen[bytes], path: Path) -> ProcessRecord:
    """Record a process this one started, where the next server will look for it."""
    record = ProcessRecord.of(process.pid)
    record.save(path)
    return record
