"""Every benchmark in bench/ runs in its quick mode, so none can rot unnoticed: each
checks its own correctness figures (0 lost updates, every answer good, every step run,
nothing heavy shipped to Lambda) and exits non-zero when one is off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted(p.name for p in (REPO / "bench").glob("*.py"))

pytestmark = pytest.mark.integration


def test_every_benchmark_has_a_quick_mode() -> None:
    assert len(BENCHMARKS) >= 5
    for name in BENCHMARKS:
        assert "--quick" in (REPO / "bench" / name).read_text(), f"bench/{name} has no --quick mode"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_benchmark_runs_and_its_checks_hold(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TUNELOOP_"))}
    done = subprocess.run(
        [sys.executable, f"bench/{name}", "--quick"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "FAILED" not in done.stdout, done.stdout[-3000:]
