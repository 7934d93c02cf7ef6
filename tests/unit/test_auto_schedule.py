"""Epochs and learning rate "auto": train.py chooses them from the training split's size
(spec.auto_schedule), the config stores "auto" and its schema says how."""

from __future__ import annotations

import math

import pytest

from chalicelib import spec
from chalicelib.domain import project
from chalicelib.domain.project import ConfigError, normalise_config, project_schema
from tests.conftest import DEMO_CONFIG


@pytest.mark.parametrize(
    "rows,epochs,rate",
    [
        (40, 10, 2e-4),  # 3 steps an epoch: the most epochs, the rate doubled (at most)
        (240, 10, 2e-4),  # 15 steps an epoch, 150 steps: x2 (sqrt(4))
        (800, 10, 1.1e-4),  # 50 steps an epoch, 500 steps: x sqrt(1.2)
        (1600, 6, 1e-4),  # 100 steps an epoch: six of them make the target
        (3400, 3, 1e-4),  # 213 steps an epoch
        (50_000, 2, 1e-4),  # a large split: two passes
    ],
)
def test_a_classifier_gets_epochs_for_about_600_steps_and_a_rate_for_its_schedule(
    rows: int, epochs: float, rate: float
) -> None:
    chosen_epochs, chosen_rate, why = spec.auto_schedule("text-classification", "full", math.ceil(rows / 16))
    assert (chosen_epochs, chosen_rate) == (epochs, rate)
    assert why.startswith("auto: epochs") and "learning_rate" in why


def test_what_a_user_sets_is_kept_and_only_the_rest_is_chosen() -> None:
    assert spec.auto_schedule("text-classification", "full", 100, 3, 5e-5) == (3.0, 5e-5, "")
    epochs, rate, why = spec.auto_schedule("causal-lm", "lora", 100, 1, spec.AUTO)
    assert epochs == 1 and rate == 2e-4 * 2 and "epochs" not in why  # 100 steps: x sqrt(6), at most x2
    # max_steps is the schedule's length: 600 steps need no boost whatever the epochs.
    assert spec.auto_schedule("causal-lm", "full", 10, spec.AUTO, spec.AUTO, max_steps=600)[1] == 5e-5


def test_every_task_and_method_has_a_rate() -> None:
    for task in ("text-classification", "causal-lm"):
        for method in ("full", "lora", "qlora"):
            assert spec.AUTO_LEARNING_RATES[(task, method)] > 0


def test_the_config_stores_auto_and_takes_a_number_or_auto_only() -> None:
    stored = normalise_config(DEMO_CONFIG)["training"]["hyperparameters"]
    assert {k: v for k, v in stored.items() if k in ("epochs", "learning_rate")} == {
        "epochs": 3,
        "learning_rate": 5e-5,
    }  # the demo sets both
    config = {**DEMO_CONFIG, "training": {**DEMO_CONFIG["training"], "hyperparameters": {}}}
    stored = normalise_config(config)["training"]["hyperparameters"]
    assert stored["epochs"] == stored["learning_rate"] == "auto"
    config["training"]["hyperparameters"] = {"epochs": "AUTO", "learning_rate": "1e-4"}
    assert normalise_config(config)["training"]["hyperparameters"]["epochs"] == "auto"
    config["training"]["hyperparameters"] = {"batch_size": "auto"}
    with pytest.raises(ConfigError) as refused:
        normalise_config(config)
    assert refused.value.field == "training.hyperparameters.batch_size"
    config["training"]["hyperparameters"] = {"epochs": "soon"}
    with pytest.raises(ConfigError) as refused:
        normalise_config(config)
    assert 'a number or "auto"' in refused.value.message


def test_the_schema_takes_auto_and_says_how_it_is_chosen() -> None:
    properties = project_schema()["properties"]["training"]["properties"]["hyperparameters"]["properties"]
    for name in ("epochs", "learning_rate"):
        assert properties[name]["default"] == "auto"
        assert any(s.get("pattern") == project._AUTO_STRING for s in properties[name]["anyOf"])
        assert "auto: " in properties[name]["description"]
    assert len(properties["batch_size"]["anyOf"]) == 2
