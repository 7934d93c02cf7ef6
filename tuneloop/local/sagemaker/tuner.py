"""The local SageMaker's search: which hyperparameters a tuning job's next trial gets,
and which running trials to stop early.

A tuning job's ``HyperParameterTuningJobConfig`` becomes an Optuna study driven by the
ask-and-tell interface (one thread asks and tells; trials run as training jobs elsewhere):

- ``Bayesian`` → TPE; ``Random`` and ``Hyperband`` → random sampling.
- ``TrainingJobEarlyStoppingType: Auto`` → the median rule: a trial whose objective at
  epoch *n* is worse than the median of earlier trials at epoch *n* is stopped.
  ``Hyperband`` → Optuna's Hyperband pruner between ``MinResource`` and ``MaxResource``.
- ``RandomSeed`` seeds the sampler, so a search can be replayed.
- ``WarmStartConfig`` parents' finished trials are told to the study before it starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from chalicelib.spec import TuneloopError

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The median rule waits for this many finished trials, and never judges a first epoch.
MEDIAN_STARTUP_TRIALS = 2
MEDIAN_WARMUP_STEPS = 1


class SearchSpaceError(TuneloopError, ValueError):
    """ParameterRanges that SageMaker would also refuse (e.g. a log range that reaches 0)."""


@dataclass
class Trial:
    """One asked trial: its Optuna handle, its hyperparameters and what it reported."""

    handle: optuna.trial.Trial
    hyperparameters: dict[str, str]
    reported: int = 0
    values: list[float] = field(default_factory=list)


def _bounds(spec: Mapping[str, Any], integer: bool) -> tuple[float, float]:
    cast = int if integer else float
    try:
        low, high = cast(spec["MinValue"]), cast(spec["MaxValue"])
    except ValueError as exc:
        raise SearchSpaceError(f"range {spec['Name']}: {exc}") from exc
    if low > high:
        raise SearchSpaceError(f"range {spec['Name']}: MinValue {low} is above MaxValue {high}")
    return low, high


def distributions(ranges: Mapping[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """ParameterRanges as Optuna distributions. Reverse-logarithmic ranges are searched as
    a log range of ``1 - value`` (the value itself is recovered by ``hyperparameters``)."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for spec in ranges.get("ContinuousParameterRanges", []):
        low, high = _bounds(spec, integer=False)
        scaling = spec.get("ScalingType", "Auto")
        if scaling == "Logarithmic":
            if low <= 0:
                raise SearchSpaceError(f"range {spec['Name']}: logarithmic scaling needs MinValue > 0")
            out[spec["Name"]] = optuna.distributions.FloatDistribution(low, high, log=True)
        elif scaling == "ReverseLogarithmic":
            if not 0 <= low < high < 1:
                raise SearchSpaceError(f"range {spec['Name']}: reverse-logarithmic scaling needs 0 <= values < 1")
            out[spec["Name"]] = optuna.distributions.FloatDistribution(1 - high, 1 - low, log=True)
        else:
            out[spec["Name"]] = optuna.distributions.FloatDistribution(low, high)
    for spec in ranges.get("IntegerParameterRanges", []):
        low, high = _bounds(spec, integer=True)
        log = spec.get("ScalingType") == "Logarithmic"
        if log and low <= 0:
            raise SearchSpaceError(f"range {spec['Name']}: logarithmic scaling needs MinValue > 0")
        out[spec["Name"]] = optuna.distributions.IntDistribution(int(low), int(high), log=log)
    for spec in ranges.get("CategoricalParameterRanges", []):
        out[spec["Name"]] = optuna.distributions.CategoricalDistribution(list(spec["Values"]))
    if not out:
        raise SearchSpaceError("ParameterRanges names no hyperparameter to tune")
    return out


class Search:
    """The study behind one tuning job."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.ranges = config.get("ParameterRanges", {})
        self.reverse = {
            spec["Name"]
            for spec in self.ranges.get("ContinuousParameterRanges", [])
            if spec.get("ScalingType") == "ReverseLogarithmic"
        }
        self.space = distributions(self.ranges)
        objective = config["HyperParameterTuningJobObjective"]
        self.metric: str = objective["MetricName"]
        self.maximize = objective["Type"] == "Maximize"
        strategy = config.get("Strategy", "Bayesian")
        seed = config.get("RandomSeed")
        sampler: optuna.samplers.BaseSampler
        if strategy == "Bayesian":
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, _max_jobs(config)))
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner: optuna.pruners.BasePruner
        if strategy == "Hyperband":
            hyperband = config.get("StrategyConfig", {}).get("HyperbandStrategyConfig", {})
            pruner = optuna.pruners.HyperbandPruner(
                min_resource=int(hyperband.get("MinResource", 1)),
                max_resource=int(hyperband["MaxResource"]) if "MaxResource" in hyperband else "auto",
            )
        elif config.get("TrainingJobEarlyStoppingType", "Off") == "Auto":
            pruner = optuna.pruners.MedianPruner(
                n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_STEPS
            )
        else:
            pruner = optuna.pruners.NopPruner()
        self.study = optuna.create_study(
            direction="maximize" if self.maximize else "minimize", sampler=sampler, pruner=pruner
        )

    def warm_start(self, finished: Iterable[tuple[Mapping[str, str], float]]) -> int:
        """Tell the study what parent tuning jobs found; returns how many trials it took.
        Trials outside today's ranges (TransferLearning may change them) are skipped."""
        taken = 0
        for tuned, value in finished:
            try:
                params = {name: self._internal(name, tuned[name]) for name in self.space}
                self.study.add_trial(
                    optuna.trial.create_trial(params=params, distributions=self.space, value=float(value))
                )
            except (KeyError, ValueError):
                continue
            taken += 1
        return taken

    def adopt(self, tuned: Mapping[str, str]) -> Trial:
        """A trial for hyperparameters already running (a tuning job resumed after a
        restart takes its running trials back): the study asks for exactly these."""
        params = {name: self._internal(name, tuned[name]) for name in self.space}
        self.study.enqueue_trial(params, skip_if_exists=False)
        return self.ask()

    def ask(self) -> Trial:
        handle = self.study.ask(self.space)
        return Trial(handle, self.hyperparameters(handle.params))

    def report(self, trial: Trial, values: list[float]) -> bool:
        """Report the objective values a trial has printed since last time; True when the
        early-stopping rule says stop it."""
        prune = False
        for value in values[trial.reported :]:
            if math.isfinite(value):
                trial.handle.report(value, trial.reported)
                prune = prune or trial.handle.should_prune()
            trial.reported += 1
        trial.values = list(values)
        return prune

    def tell(self, trial: Trial, outcome: str, value: float | None) -> None:
        """``outcome``: completed (with its final objective), stopped_early or failed."""
        if outcome == "completed" and value is not None and math.isfinite(value):
            self.study.tell(trial.handle, value)
        elif outcome == "stopped_early":
            self.study.tell(trial.handle, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial.handle, state=optuna.trial.TrialState.FAIL)

    def better(self, value: float, than: float | None) -> bool:
        return than is None or (value > than if self.maximize else value < than)

    def hyperparameters(self, params: Mapping[str, Any]) -> dict[str, str]:
        """What the trial's training job gets: strings, as SageMaker passes them."""
        out = {}
        for name, value in params.items():
            if name in self.reverse:
                value = 1 - value
            out[name] = _string(value)
        return out

    def _internal(self, name: str, text: str) -> Any:
        text = str(text).strip('"')
        distribution = self.space[name]
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            value: Any = text
        elif isinstance(distribution, optuna.distributions.IntDistribution):
            value = int(float(text))
        else:
            value = 1 - float(text) if name in self.reverse else float(text)
        if not distribution._contains(distribution.to_internal_repr(value)):
            raise ValueError(f"{name}={text} is outside the range")
        return value


def _max_jobs(config: Mapping[str, Any]) -> int:
    return int(config.get("ResourceLimits", {}).get("MaxNumberOfTrainingJobs", 10))


def _string(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)
