"""`chalice package` deployment zip size against the goal (issue 2: <= 25 MB).

The baseline is the same packaging of an empty Chalice app with the same
requirements.txt, built in the same run: what tuneloop's own code adds on top.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def main() -> None:
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


if __name__ == "__main__":
    main()
