"""Cold import of the Lambda handler module vs. importing its dependencies alone.

Each sample is a fresh interpreter (a Lambda cold start imports from nothing), the two
kinds interleaved so machine noise hits both alike. Goal (issue 2): ratio <= 1.25x.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPENDENCIES = (
    "import chalice, boto3, pynamodb.models, pynamodb.attributes, pynamodb.indexes, "
    "aws_lambda_powertools, aws_xray_sdk.core"
)
TIMER = "import time; t = time.perf_counter(); {body}; print(time.perf_counter() - t)"


def sample(body: str) -> float:
    env = {**os.environ, "TUNELOOP_BUCKET": "bench", "PYTHONDONTWRITEBYTECODE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", TIMER.format(body=body)], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(rounds: int = 15) -> None:
    sample("import app")  # warm the bytecode caches once, as a deployed package has them
    deps_only, app = [], []
    for _ in range(rounds):
        deps_only.append(sample(DEPENDENCIES))
        app.append(sample("import app"))
    d, a = statistics.median(deps_only), statistics.median(app)
    print(f"dependencies alone: median {d * 1000:.0f} ms over {rounds} cold interpreters")
    print(f"import app:         median {a * 1000:.0f} ms")
    print(f"ratio app/dependencies: {a / d:.2f}x (goal <= 1.25x: {'met' if a / d <= 1.25 else 'NOT met'})")


if __name__ == "__main__":
    main()
