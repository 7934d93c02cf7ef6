"""A local service whose start is interrupted (Ctrl-C during `tuneloop up`) is stopped, not
left running where no state file knows of it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuneloop.local import services, sigv4


def test_an_interrupted_start_stops_the_started_service(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(services, "_spawn", lambda *args, **kwargs: proc)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(services, "wait_until", interrupted)
    with pytest.raises(KeyboardInterrupt):
        services.start_moto(sigv4.generate())
    assert proc.poll() is not None
