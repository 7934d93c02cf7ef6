"""Every example project is one a user can create as it is: valid, loadable offline on the
local cloud, within each deployed stage's limits; the CSV one's dataset prepares with the
arguments its project gives the prepare job; the production one keeps what makes it safe to
copy. (The demo and the LLM example run end to end in tests/e2e.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.domain.names import PROJECT_NAME_RE
from chalicelib.domain.project import normalise_config
from chalicelib.domain.run import Run
from chalicelib.domain.states import RunState
from chalicelib.sagemaker import PROCESSING_ROOT, prepare_request
from tests.conftest import T0
from tests.unit.test_limits import STAGES, stage_limits
from tests.unit.test_sagemaker_requests import PREPARE, SETTINGS
from training import prepare

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_can_be_created_on_the_local_cloud_and_on_every_stage(path: Path) -> None:
    example = load(path)
    assert PROJECT_NAME_RE.match(example["name"])
    config = normalise_config(example["config"], offline=True)
    for stage in STAGES:
        stage_limits(stage).check(config)


def test_the_csv_example_prepares_with_its_column_mapping(tmp_path: Path) -> None:
    config = normalise_config(load(REPO / "examples" / "csv-project.json")["config"])
    run = Run("aaaaaaaaaaaa", "reviews-csv", RunState.PREPARING, config, "s3://b/datasets/reviews-csv/r.csv", T0)
    arguments = prepare_request(PREPARE, run, SETTINGS)["AppSpecification"]["ContainerArguments"]
    arguments = [a for a in arguments if not a.startswith(PROCESSING_ROOT)]
    code = prepare.main([*arguments, "--input-dir", str(REPO / "examples" / "csv"), "--output-dir", str(tmp_path),
                         "--failure-dir", str(tmp_path / "fail"), "--holdout-dir", str(tmp_path / "none")])  # fmt: skip
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert code == 0 and report["errors"] == 0 and report["rows_kept"] == 240, report
    # Without the mapping the same file is refused, saying which setting names the column.
    unmapped = ["--task", "text-classification", "--input-dir", str(REPO / "examples" / "csv")]
    code = prepare.main(
        [*unmapped, "--output-dir", str(tmp_path / "unmapped"), "--failure-dir", str(tmp_path / "fail")]
    )
    assert code == 1 and "set data.text_field" in (tmp_path / "fail" / "failure").read_text()


def test_the_production_example_is_safe_to_copy() -> None:
    config = normalise_config(load(REPO / "examples" / "production-project.json")["config"])
    assert config["approval"] == "manual"
    assert config["training"]["spot"] and config["training"]["max_wait_s"] > config["training"]["max_runtime_s"]
    deployment = config["deployment"]
    assert deployment["strategy"] == "canary" and deployment["canary_percent"] <= 10
    assert deployment["wait_s"] >= 300 and deployment["baking_s"] >= 600
    assert config["drift"]["schedule_minutes"] >= 60 and config["drift"]["evaluation_periods"] >= 2
    assert config["retrain"]["cooldown_s"] >= 86400 and config["retrain"]["min_new_labels"] >= 100
    assert config["gates"]["compare_champion"] and config["gates"]["compare_baseline"]
