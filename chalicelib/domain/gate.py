"""The quality gate: whether an evaluated model may be registered, and why, in one line.

Thresholds first (each in its metric's direction); then, by default, the champion
comparison (a paired bootstrap on the project's primary metric: worse beyond noise, or the
same model, is rejected); a first model, and a causal LM on every evaluation, against a
trivial baseline (the majority class; a causal LM's untuned base) beyond the same noise. A
metric that is NaN or missing passes nothing. Pure: the run state machine calls it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .. import spec
from .events import EvaluationLoaded


def _threshold(name: str, value: float | None, threshold: float) -> tuple[bool, str]:
    """(met, why): ``value`` against ``threshold`` in the metric's direction."""
    metric = spec.METRICS.get(name)
    higher = not (metric and metric.better == spec.LOWER)
    if value is None:
        return False, f"metric {name} missing from the evaluation"
    if value >= threshold if higher else value <= threshold:
        return True, f"{name} {value:.4g} {'>=' if higher else '<='} {threshold:.4g}"
    side, better = ("below", spec.HIGHER) if higher else ("above", spec.LOWER)
    return False, f"{name} {value:.4g} is {side} the threshold {threshold:.4g} ({better} is better)"


def gate_verdict(config: Mapping[str, Any], event: EvaluationLoaded) -> tuple[bool, str]:
    """The quality gate: thresholds (each in its metric's direction), then, by default, the
    champion: a challenger worse on the primary metric beyond the paired comparison's
    noise, short of ``min_improvement``, or answering every test row as the champion does
    (with the same metric), is rejected; with no champion, a model not better than a trivial baseline beyond noise
    is. Nothing passes on a NaN."""
    gates = config["gates"]
    reasons = []
    for name, value in sorted(event.metrics.items()):
        if not math.isfinite(value):
            return False, f"{name} is {value}; no model is promoted on a number that is not finite"
    for name, threshold in sorted(gates["metrics"].items()):
        met, why = _threshold(name, event.metrics.get(name), threshold)
        if not met:
            return False, why
        reasons.append(why)
    if gates.get("compare_champion", True) and event.champion_metrics:
        passed, reason = _versus_champion(config, event)
        if passed and config["task"] == "causal-lm" and gates.get("compare_baseline", True):
            # A language model must also beat its own untuned base: a run that only lowered
            # training loss, or a champion no better than the base, is not promoted.
            beats, versus_base = _versus_baseline(config, event, first=False)
            passed, reason = beats, (f"{reason}; {versus_base}" if beats else versus_base)
    elif event.baseline is not None or event.baseline_error:
        # With the champion comparison off, a champion may be deployed: not "a first model".
        passed, reason = _versus_baseline(config, event, first=gates.get("compare_champion", True))
    elif not gates.get("compare_baseline", True):
        passed, reason = True, "no champion compared; baseline comparison off"
    elif not gates.get("compare_champion", True):
        # A champion may be deployed: the job measured neither it nor a baseline.
        passed, reason = True, "champion comparison off"
    else:  # no champion, and the evaluation holds no baseline to compare with
        passed, reason = _versus_baseline(config, event)
    if not passed:
        return False, reason
    reasons.append(reason)
    return True, "; ".join(reasons)


def _versus_baseline(config: Mapping[str, Any], event: EvaluationLoaded, first: bool = True) -> tuple[bool, str]:
    """A model must beat a trivial baseline on the same test rows beyond the paired
    bootstrap's noise: a first model (no champion to beat) one no better than always
    answering the majority class, and every causal LM (``first`` False: a champion is
    deployed, or the champion comparison is off) its untuned base, is not worth serving."""
    primary = config["gates"].get("primary_metric") or spec.PRIMARY_METRICS[config["task"]][0]
    c = event.baseline
    opening = "no champion deployed yet; " if first else ""
    if c is None:
        why = event.baseline_error or "the evaluation holds no comparison with a trivial baseline"
        if not first:
            must = "its untuned base" if config["task"] == "causal-lm" else "a trivial baseline"
            return False, f"{why}; a model must beat {must} (gates.compare_baseline)"
        return False, f"no champion deployed yet, and {why}; a first model must beat one (gates.compare_baseline)"
    if c.metric != primary or not all(math.isfinite(v) for v in (c.challenger, c.champion, c.low, c.high)):
        return False, f"the comparison with {c.against or 'the baseline'} is not finite or not on {primary}"
    metric = spec.METRICS[primary]
    low = c.low if metric.better == spec.HIGHER else -c.high
    facts = (
        f"{opening}{primary} {c.challenger:.4f} vs {c.against or 'a trivial baseline'} "
        f"{c.champion:.4f} on the same {c.rows} test rows: {c.challenger - c.champion:+.4f}, "
        f"{c.confidence:.0%} interval {c.low:+.4f} to {c.high:+.4f} (paired bootstrap; {metric.better} is better)"
    )
    if low > 0:
        return True, f"{facts}: better beyond noise"
    return False, f"{facts}: not better than the baseline beyond noise"


def _versus_champion(config: Mapping[str, Any], event: EvaluationLoaded) -> tuple[bool, str]:
    gates = config["gates"]
    primary = gates.get("primary_metric") or spec.PRIMARY_METRICS[config["task"]][0]
    metric = spec.METRICS[primary]
    champion_run = f"champion run {event.champion_run_id}"
    c = event.comparison
    if event.comparison_error:
        return False, f"no fair comparison with {champion_run}: {event.comparison_error}"
    if c is not None and c.differing_rows == 0 and c.challenger == c.champion:
        return False, (
            f"its answers equal {champion_run}'s on every one of the {c.rows} test rows compared: "
            "the same model, nothing to deploy"
        )
    if c is None or c.metric != primary:
        # An evaluation without the paired comparison: the point values, in the metric's direction.
        ours, theirs = event.metrics.get(primary), (event.champion_metrics or {}).get(primary)
        if ours is None or theirs is None:
            return False, f"{primary} missing for this model or {champion_run}: cannot compare"
        gain = metric.improvement(ours, theirs)
        if not math.isfinite(theirs) or gain < gates["min_improvement"]:
            return False, f"{primary} {ours:.4f} vs {champion_run} {theirs:.4f}: no paired comparison, and not better"
        return True, f"{primary} {ours:.4f} vs {champion_run} {theirs:.4f} (point values; no paired comparison)"
    if not all(math.isfinite(v) for v in (c.challenger, c.champion, c.low, c.high)):
        return False, f"the comparison with {champion_run} is not finite; no model is promoted on it"
    # The interval of the improvement: the difference, turned round when lower is better.
    low, high = (c.low, c.high) if metric.better == spec.HIGHER else (-c.high, -c.low)
    gain = metric.improvement(c.challenger, c.champion)
    leaked = {None: "", 0: " (the champion trained on none of them)"}.get(
        c.champion_trained_on_test, f" ({c.champion_trained_on_test} more the champion trained on were left out)"
    )
    facts = (
        f"{primary} {c.challenger:.4f} vs {champion_run} {c.champion:.4f} on the same {c.rows} test rows{leaked}: "
        f"{c.challenger - c.champion:+.4f}, {c.confidence:.0%} interval {c.low:+.4f} to {c.high:+.4f} "
        f"(paired bootstrap; {metric.better} is better)"
    )
    if high < 0:
        return False, f"{facts}: worse beyond noise"
    if gates["min_improvement"] > 0 and gain < gates["min_improvement"]:
        return False, f"{facts}: the gain {gain:+.4f} is short of min_improvement {gates['min_improvement']:.4f}"
    verdict = "better beyond noise" if low > 0 else "not worse beyond noise"
    return True, f"{facts}: {verdict}"
