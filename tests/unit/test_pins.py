"""One set of framework versions everywhere: what the tests run is what every job and
endpoint runs (installed at start where SageMaker's image has another version)."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))

import pins  # noqa: E402


def test_every_pin_is_the_version_the_tests_run_with() -> None:
    assert pins.pins()["transformers"] and pins.pins()["torch"] and pins.differing() == []
    for name, version in pins.pins().items():
        assert metadata.version(name).split("+")[0] == version, name
    # The one torch pin is the one the dev environment (and so the tests) installs.
    dev = (REPO / "requirements-dev.txt").read_text()
    assert f"torch=={pins.pins()['torch']}" in dev


def test_a_differing_or_missing_package_is_named_as_pip_installs_it(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nsafetensors==0.0.1  # too old\nno-such-package-here==1.0\n")
    assert pins.differing(requirements) == ["no-such-package-here==1.0", "safetensors==0.0.1"]
    # A local build of the pinned release (torch 2.13.0+cpu here) is that release.
    torch = metadata.version("torch")
    requirements.write_text(f"torch=={torch.split('+')[0]}\n")
    assert pins.differing(requirements) == []


def test_every_processing_script_brings_its_versions_and_every_endpoint_too() -> None:
    for script in ("prepare.py", "evaluate.py", "drift.py"):
        text = (REPO / "training" / script).read_text()
        first_own = min(
            text.index(f"\nimport {m}\n") for m in ("inference", "quality", "spec") if f"\nimport {m}\n" in text
        )
        assert text.index("pins.ensure()") < first_own, script
    import train

    for task in ("text-classification", "causal-lm"):
        needs = {line.split("==")[0] for line in train.serving_requirements(task, "random:llama-tiny", False)}
        assert {"torch", "transformers", "safetensors"} <= needs, task
