"""Project config validation: defaults filled in, errors name the field."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.domain.project import ConfigError, check_project_name, normalise_config
from tests.conftest import DEMO_CONFIG

MINIMAL = {"base_model": "org/model", "task": "text-classification"}


def test_defaults_are_filled_in() -> None:
    config = normalise_config(MINIMAL)
    assert config["training"]["spot"] is True
    assert config["training"]["max_wait_s"] > config["training"]["max_runtime_s"]
    assert config["tuning"] is None
    assert config["deployment"]["mode"] == "realtime"
    assert config["approval"] == "manual"


def test_demo_config_is_valid() -> None:
    assert normalise_config(DEMO_CONFIG)["approval"] == "auto"


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"task": "summarise"}, "task"),
        ({"base_model": ""}, "base_model"),
        ({"base_model": "s3://"}, "base_model"),
        ({"training": {"instance_count": 0}}, "training.instance_count"),
        ({"training": {"instance_count": "2"}}, "training.instance_count"),
        ({"training": {"spot": "yes"}}, "training.spot"),
        ({"training": {"max_runtime_s": 3600, "max_wait_s": 3600}}, "training.max_wait_s"),
        ({"training": {"instance_type": "g5.xlarge"}}, "training.instance_type"),
        ({"training": {"hyperparameters": {"epochs": [1]}}}, "training.hyperparameters.epochs"),
        ({"tuning": {"objective": {"metric": "f1"}, "ranges": {}}}, "tuning.ranges"),
        (
            {"tuning": {"objective": {"metric": "f1"}, "ranges": {"lr": {"type": "continuous", "min": 1}}}},
            "tuning.ranges.lr.max",
        ),
        (
            {"tuning": {"objective": {"metric": "f1"}, "ranges": {"bs": {"type": "categorical"}}}},
            "tuning.ranges.bs.values",
        ),
        (
            {
                "tuning": {
                    "objective": {"metric": "f1"},
                    "ranges": {"lr": {"type": "continuous", "min": 0, "max": 1, "scaling": "Logarithmic"}},
                }
            },
            "tuning.ranges.lr.min",
        ),
        ({"deployment": {"min_instances": 3, "max_instances": 2}}, "deployment.max_instances"),
        ({"gates": {"metrics": {"macro_f1": "high"}}}, "gates.metrics.macro_f1"),
        ({"colour": "blue"}, "colour"),
        ({"retrain": {"cooldown": 5}}, "retrain.cooldown"),
    ],
)
def test_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalise_config({**MINIMAL, **patch})
    assert info.value.field == field


def test_missing_required_field() -> None:
    with pytest.raises(ConfigError) as info:
        normalise_config({"task": "causal-lm"})
    assert info.value.field == "base_model" and "required" in info.value.message


@pytest.mark.parametrize("name", ["demo", "a", "reviews-2026", "x" * 24])
def test_good_project_names(name: str) -> None:
    assert check_project_name(name) == name


@pytest.mark.parametrize("name", ["", "Demo", "-demo", "demo-", "de--mo", "de_mo", "x" * 25, 7])
def test_bad_project_names(name: object) -> None:
    with pytest.raises(ConfigError):
        check_project_name(name)
