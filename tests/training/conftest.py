"""Shared by the training tests: the prepared sample dataset and one fine-tuned classifier,
made once per session (a real CPU fine-tune through the SageMaker training toolkit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training import prepare
from tuneloop.local.container import toolkit

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "training"


def run_job(
    base: Path, hyperparameters: dict[str, Any], channels: dict[str, Path], timeout: float = 300
) -> tuple[int, str, toolkit.TrainingLayout]:
    layout = toolkit.lay_out(base, toolkit.wire_hyperparameters("train.py", SOURCE, hyperparameters), channels)
    process = toolkit.start(layout, base / "job.log")
    code = process.wait(timeout)
    return code, (base / "job.log").read_text(), layout


@pytest.fixture(scope="session")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reviews")
    assert (
        prepare.main(
            [
                "--input-dir",
                str(REPO / "examples" / "data"),
                "--output-dir",
                str(out),
                "--task",
                "text-classification",
                "--failure-dir",
                str(out / "fail"),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def classifier(reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[toolkit.TrainingLayout, str]:
    base = tmp_path_factory.mktemp("minilm-job")
    code, log, layout = run_job(
        base,
        {"epochs": 3, "batch-size": 16, "learning-rate": 1e-4, "log-every": 4},
        {"train": reviews / "train", "validation": reviews / "validation"},
    )
    assert code == 0, log[-3000:]
    return layout, log
