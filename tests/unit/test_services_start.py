"""A local service whose start is interrupted (Ctrl-C during `tuneloop up`) is stopped, not
left running where no state file knows of it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuneloop.local import services


def test_an_interrupted_start_stops_the_started_service(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    service = services.Service("moto", services.free_port(), proc, None)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(services, "wait_until", interrupted)
    with pytest.raises(KeyboardInterrupt):
        services._await(service, 60, "moto")
    assert proc.poll() is not None
