"""Cold import of the Lambda handler module vs. importing its dependencies alone.

Each sample is a fresh interpreter (a Lambda cold start imports from nothing), the two
kinds interleaved so machine noise hits both alike. Goal (issue 2): ratio <= 1.25x.
``--quick`` (the test suite runs it): two rounds, and the check that the handler module
imports nothing the Lambda package must not carry (torch, transformers, the sagemaker
SDK, moto); exit 1 if it does.
"""

from __future__ import annotations

import argparse
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


HEAVY = ("torch", "transformers", "sagemaker", "moto", "peft", "numpy")
LEAN = "import app, sys; print(sorted(m for m in {heavy} if m in sys.modules))"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two rounds and the lean-import check")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    env = {**os.environ, "TUNELOOP_BUCKET": "bench"}
    loaded = subprocess.run([sys.executable, "-c", LEAN.format(heavy=HEAVY)], cwd=REPO, env=env, capture_output=True,
                            text=True, check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    print(f"heavy modules `import app` loads: {loaded}")
    if loaded != "[]":
        print("FAILED: the Lambda handler imports what requirements.txt must not ship")
        return 1
    sample("import app")  # warm the bytecode caches once, as a deployed package has them
    deps_only, app = [], []
    for _ in range(rounds):
        deps_only.append(sample(DEPENDENCIES))
        app.append(sample("import app"))
    d, a = statistics.median(deps_only), statistics.median(app)
    print(f"dependencies alone: median {d * 1000:.0f} ms over {rounds} cold interpreters")
    print(f"import app:         median {a * 1000:.0f} ms")
    print(f"ratio app/dependencies: {a / d:.2f}x (goal <= 1.25x: {'met' if a / d <= 1.25 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
