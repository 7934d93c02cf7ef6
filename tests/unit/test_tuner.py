"""The local tuner's search space, sampling and warm start (Optuna underneath)."""

from __future__ import annotations

import math
import os

import pytest

from tuneloop.local.sagemaker.tuner import Search, SearchSpaceError
from tuneloop.local.sagemaker.tuning import cpu_budget

RANGES = {
    "ContinuousParameterRanges": [
        {"Name": "learning-rate", "MinValue": "1e-5", "MaxValue": "1e-2", "ScalingType": "Logarithmic"},
        {"Name": "momentum", "MinValue": "0.9", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"},
    ],
    "IntegerParameterRanges": [{"Name": "lora-r", "MinValue": "4", "MaxValue": "64", "ScalingType": "Linear"}],
    "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["8", "16", "32"]}],
}


def config(**extra: object) -> dict[str, object]:
    return {
        "Strategy": "Random",
        "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "validation_loss"},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": 20, "MaxParallelTrainingJobs": 1},
        "ParameterRanges": RANGES,
        "RandomSeed": 3,
        **extra,
    }


def test_samples_stay_in_range_and_are_strings() -> None:
    search = Search(config())
    for _ in range(20):
        trial = search.ask()
        hp = trial.hyperparameters
        assert set(hp) == {"learning-rate", "momentum", "lora-r", "batch-size"}
        assert all(isinstance(v, str) for v in hp.values())
        assert 1e-5 <= float(hp["learning-rate"]) <= 1e-2
        assert 0.9 <= float(hp["momentum"]) <= 0.999
        assert 4 <= int(hp["lora-r"]) <= 64 and hp["batch-size"] in ("8", "16", "32")
        search.tell(trial, "completed", float(hp["learning-rate"]))


def test_log_scaling_spreads_samples_over_decades() -> None:
    search = Search(config(RandomSeed=11))
    rates = [float(search.ask().hyperparameters["learning-rate"]) for _ in range(60)]
    decades = {math.floor(math.log10(r)) for r in rates}
    assert decades >= {-5, -4, -3}  # linear sampling would put nearly all of them in 1e-3..1e-2


def test_the_same_seed_replays_the_same_search() -> None:
    first, again, other = Search(config()), Search(config()), Search(config(RandomSeed=4))
    asked = [first.ask().hyperparameters for _ in range(3)]
    assert asked == [again.ask().hyperparameters for _ in range(3)]
    assert asked != [other.ask().hyperparameters for _ in range(3)]


@pytest.mark.parametrize(
    "ranges, message",
    [
        ({}, "names no hyperparameter"),
        (
            {
                "ContinuousParameterRanges": [
                    {"Name": "a", "MinValue": "0", "MaxValue": "1", "ScalingType": "Logarithmic"}
                ]
            },
            "MinValue > 0",
        ),
        ({"IntegerParameterRanges": [{"Name": "a", "MinValue": "9", "MaxValue": "1"}]}, "above MaxValue"),
        ({"IntegerParameterRanges": [{"Name": "a", "MinValue": "one", "MaxValue": "3"}]}, "range a"),
    ],
)
def test_bad_ranges_are_refused(ranges: dict[str, object], message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        Search(config(ParameterRanges=ranges))


def test_warm_start_takes_the_parents_trials_that_fit() -> None:
    search = Search(config())
    parents = [
        ({"learning-rate": "0.001", "momentum": "0.95", "lora-r": "8", "batch-size": '"16"'}, 0.4),
        ({"learning-rate": "0.5", "momentum": "0.95", "lora-r": "8", "batch-size": "16"}, 0.1),  # out of range now
        ({"learning-rate": "0.001"}, 0.2),  # a hyperparameter the parent did not tune
    ]
    assert search.warm_start(parents) == 1
    assert search.study.best_value == 0.4
    assert search.study.best_params["momentum"] == pytest.approx(0.05)  # searched as 1 - value


def test_median_rule_stops_a_trial_worse_than_the_median() -> None:
    search = Search(config(TrainingJobEarlyStoppingType="Auto"))
    for _ in range(2):
        trial = search.ask()
        assert not search.report(trial, [0.5, 0.4, 0.3])
        search.tell(trial, "completed", 0.3)
    bad = search.ask()
    assert not search.report(bad, [2.0])  # the first epoch is never judged
    assert search.report(bad, [2.0, 1.9])
    search.tell(bad, "stopped_early", 1.9)
    good = search.ask()
    assert not search.report(good, [0.4, 0.2, 0.1])


@pytest.mark.parametrize(("given", "budget"), [("3", 3), ("", None), ("zero", None), ("0", None), ("-2", None)])
def test_parallel_trials_share_the_threads_the_local_cloud_was_given(
    monkeypatch: pytest.MonkeyPatch, given: str, budget: int | None
) -> None:
    """OMP_NUM_THREADS set where the local cloud started is its share of the machine (the
    test suite gives each worker one); anything but a positive count means every core."""
    monkeypatch.setenv("OMP_NUM_THREADS", given)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert cpu_budget() == (budget or 8)
