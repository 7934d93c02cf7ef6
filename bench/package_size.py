"""`chalice package` deployment zip size against the goal (issue 2: <= 25 MB).

The baseline is the same packaging of an empty Chalice app with the same
requirements.txt, built in the same run: what tuneloop's own code adds on top.
``--quick`` (the test suite runs it) packages tuneloop alone and checks the zip: within
the goal, and none of what must never ship to Lambda (torch, transformers, the
sagemaker SDK, moto, peft); exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 25 * 1024 * 1024
EMPTY_APP = """from chalice import Chalice

app = Chalice(app_name="empty")


@app.route("/")
def index():
    return {}
"""


def package(project: Path, out: Path) -> int:
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    chalice = Path(sys.executable).with_name("chalice")
    subprocess.run(
        [str(chalice), "package", "--stage", "dev", str(out)], cwd=project, env=env, check=True, capture_output=True
    )
    return (out / "deployment.zip").stat().st_size


FORBIDDEN = ("torch/", "transformers/", "sagemaker/", "moto/", "peft/")


def shipped_forbidden(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return sorted({name.split("/", 1)[0] for name in archive.namelist() if name.startswith(FORBIDDEN)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tuneloop's package alone, checked")
    args = parser.parse_args()
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            size = package(REPO, Path(tmp) / "out")
            forbidden = shipped_forbidden(Path(tmp) / "out" / "deployment.zip")
        print(f"tuneloop: {size / 1024 / 1024:.2f} MB (goal <= 25 MB); forbidden packages shipped: {forbidden}")
        return 0 if size <= GOAL and not forbidden else 1
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "empty"
        (base / ".chalice").mkdir(parents=True)
        (base / "app.py").write_text(EMPTY_APP)
        shutil.copy(REPO / "requirements.txt", base / "requirements.txt")
        (base / ".chalice" / "config.json").write_text(
            json.dumps({"version": "2.0", "app_name": "empty", "stages": {"dev": {}}})
        )
        empty = package(base, Path(tmp) / "empty-out")
        ours = package(REPO, Path(tmp) / "tuneloop-out")
    mb = 1024 * 1024
    print(f"empty app, same requirements: {empty / mb:.2f} MB")
    print(f"tuneloop:                     {ours / mb:.2f} MB (own code adds {(ours - empty) / 1024:.0f} KB)")
    verdict = "met" if ours <= GOAL else "NOT met"
    print(f"ratio tuneloop/empty: {ours / empty:.3f}x; size/goal: {ours / GOAL:.2f} (goal <= 25 MB: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
