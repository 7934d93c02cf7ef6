"""The versions this code is tested with, in whatever image runs it.

SageMaker's images carry their own framework versions (the PyTorch processing image has no
transformers at all; the Hugging Face images an older one). A training job's toolkit
installs ``requirements.txt`` before the entry point runs; a processing job runs its script
as is, so each processing script calls ``ensure()`` first: any pinned package missing or at
another version is installed, and the script starts again in a fresh interpreter, where the
new versions are the ones imported. Where everything matches (the local cloud, whose
environment is the tested one), nothing happens.
"""

from __future__ import annotations

import os
import subprocess  # nosec B404  # pip, with a fixed argument list
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
# Set for the second start: a package pip could not bring to its version is an error then.
MARK = "TUNELOOP_PINS_INSTALLED"


def pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """``name==version`` lines (comments and blanks skipped), by distribution name."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            found[name.strip().lower()] = version.strip()
    return found


def differing(path: Path = REQUIREMENTS) -> list[str]:
    """The pins this interpreter does not have, as pip requirement strings."""
    wrong = []
    for name, version in sorted(pins(path).items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        # A local build label (2.13.0+cpu) is the same release: pip's == matches it too.
        if installed is None or installed.split("+", 1)[0] != version:
            wrong.append(f"{name}=={version}")
    return wrong


def ensure(path: Path = REQUIREMENTS) -> None:
    wrong = differing(path)
    if not wrong:
        return
    if os.environ.get(MARK):
        raise RuntimeError(f"these pinned versions are still not installed after pip install: {', '.join(wrong)}")
    print(f"installing the tested versions: {' '.join(wrong)}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "-q", *wrong], check=True)  # nosec B603
    os.environ[MARK] = "1"
    os.execv(sys.executable, [sys.executable, *sys.argv])  # nosec B606  # this same script, in a fresh interpreter
