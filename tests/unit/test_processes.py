"""Processes known by recorded PID and start time: zombies and reused PIDs are not ours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tuneloop.local.processes import ProcessRecord, reclaim, running, start_ticks, stop_group

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def sleeper(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args], start_new_session=True)


def test_a_zombie_is_not_running() -> None:
    child = sleeper()
    record = ProcessRecord.of(child.pid)
    assert record.running()
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, 0)  # the PID still answers: a plain liveness check would say "up"
    assert not record.running() and not running(child.pid)
    child.wait()


def test_a_reused_pid_is_not_the_recorded_process() -> None:
    child = sleeper()
    started = start_ticks(child.pid)
    assert started is not None
    assert not ProcessRecord(child.pid, started + 1).running()  # same PID, another start: not ours
    assert reclaim(ProcessRecord(child.pid, started + 1)) is False and child.poll() is None
    assert reclaim(ProcessRecord(child.pid, started)) is True
    assert child.wait(5) is not None


def test_a_record_survives_on_disk(tmp_path: Path) -> None:
    child = sleeper()
    ProcessRecord.of(child.pid).save(tmp_path / "process.json")
    loaded = ProcessRecord.load(tmp_path / "process.json")
    assert loaded is not None and loaded.running()
    (tmp_path / "torn.json").write_text("{")
    assert ProcessRecord.load(tmp_path / "torn.json") is None
    reclaim(loaded)
    child.wait(5)


def group_saving_on_sigterm(marker: Path) -> subprocess.Popen[bytes]:
    """A parent that dies at once on SIGTERM, and its child that takes a second to write
    ``saved`` to ``marker`` (a toolkit and the training script checkpointing under it).
    Returns once the child's handler is in place (it writes ``ready``)."""
    script = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time, pathlib, sys\\n"
        'def done(*_):\\n    time.sleep(1); pathlib.Path(sys.argv[1]).write_text("saved"); sys.exit(0)\\n'
        'signal.signal(signal.SIGTERM, done)\\npathlib.Path(sys.argv[1]).write_text("ready")\\ntime.sleep(60)\', '
        "sys.argv[1]])\n"
        "time.sleep(60)\n"
    )
    marker.unlink(missing_ok=True)
    parent = subprocess.Popen([sys.executable, "-c", script, str(marker)], start_new_session=True)
    wait_for(lambda: marker.is_file() and marker.read_text() == "ready", 30, what="the child's SIGTERM handler")
    return parent


def test_stopping_a_group_waits_for_the_grandchild() -> None:
    """A parent that dies at once on SIGTERM must not leave its child writing unwatched."""
    marker = Path(f"/tmp/tuneloop-group-{os.getpid()}")
    parent = group_saving_on_sigterm(marker)
    stop_group(parent, grace_s=10)
    assert marker.read_text() == "saved"  # the grandchild finished its checkpoint first
    marker.unlink()


def test_reclaiming_a_left_process_waits_for_its_whole_group() -> None:
    """A restarted server reclaims the job a dead one left: the training script must have
    finished its checkpoint before the resumed job reads the checkpoint folder."""
    marker = Path(f"/tmp/tuneloop-reclaim-{os.getpid()}")
    parent = group_saving_on_sigterm(marker)
    assert reclaim(ProcessRecord.of(parent.pid), grace_s=10)
    assert marker.read_text() == "saved"  # reclaim returned only once the grandchild was done
    marker.unlink()
    parent.wait(5)
