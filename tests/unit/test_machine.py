"""The transition table: every row, every forbidden pair, and random event sequences."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import spec
from chalicelib.domain import names
from chalicelib.domain.commands import Command, DeleteEndpoint, StartChildRun
from chalicelib.domain.events import (
    ALL_EVENT_KINDS,
    AlarmChanged,
    ApprovalDecided,
    CommandFailed,
    Comparison,
    DomainEvent,
    EndpointChanged,
    EndpointDeploymentChanged,
    EvaluationLoaded,
    LabelsArrived,
    ModelPackageChanged,
    NewData,
    ProcessingJobChanged,
    RetrainRequested,
    RunRequested,
    RunSuperseded,
    RunTimedOut,
    StopRequested,
    TrainingJobChanged,
    TransformJobChanged,
    TuningJobChanged,
)
from chalicelib.domain.machine import NO_OPS, ROWS, Row, decide, rows_for
from chalicelib.domain.project import normalise_config
from chalicelib.domain.run import HistoryEntry, Run
from chalicelib.domain.states import TERMINAL_STATES, RunState
from tests.conftest import BEATS_BASELINE, DEMO_CONFIG, T0

RUN_ID = "aaaaaaaaaaaa"
S = RunState


def base_config(**overrides: Any) -> dict[str, Any]:
    config = normalise_config(DEMO_CONFIG)
    for key, value in overrides.items():
        config[key] = value
    return config


TUNING = {
    "objective": {"metric": "validation_macro_f1"},
    "ranges": {"learning_rate": {"type": "continuous", "min": 1e-5, "max": 1e-3, "scaling": "Logarithmic"}},
}

# The resource a run in each state waits on (what decide's resource check compares).
AWAITING = {
    S.PREPARING: names.job_name(RUN_ID, "prepare"),
    S.TRAINING: names.job_name(RUN_ID, "train", 1),
    S.TUNING: names.job_name(RUN_ID, "tune"),
    S.EVALUATING: names.job_name(RUN_ID, "evaluate"),
    S.TRANSFORMING: names.job_name(RUN_ID, "transform"),
    S.DEPLOYING: names.endpoint_name("demo"),
    S.REGISTERING: f"model-package:{RUN_ID}",
}


def make_run(state: RunState, config: dict[str, Any] | None = None, **changes: Any) -> Run:
    run = Run(
        run_id=RUN_ID,
        project="demo",
        state=state,
        config=config or base_config(),
        dataset_uri="s3://tuneloop-test/datasets/demo/ds-1/reviews.jsonl",
        created_at=T0,
        awaiting=AWAITING.get(state),
        model_source=names.job_name(RUN_ID, "train", 1) if state.rank >= S.EVALUATING.rank else None,
    )
    return dataclasses.replace(run, **changes)


def event_of(kind: str, run: Run, event_id: str = "evt-1", **fields: Any) -> DomainEvent:
    """An event of ``kind`` that concerns ``run`` (for job events: the awaited job)."""
    common: dict[str, Any] = {"event_id": event_id, "time": T0 + timedelta(hours=1), "run_id": run.run_id}
    family, _, outcome = kind.partition(".")
    statuses = {"in_progress": "InProgress", "completed": "Completed", "failed": "Failed", "stopped": "Stopped"}
    if family == "training_job":
        secondary = {
            "interrupted": "Interrupted",
            "capacity_timeout": "MaxWaitTimeExceeded",
            "timed_out": "MaxRuntimeExceeded",
        }
        status = statuses.get(outcome, "Stopped")
        return TrainingJobChanged(
            **common,
            job_name=fields.pop("job_name", run.awaiting or "tl-other-train-1"),
            status=status,
            secondary_status=secondary.get(outcome, status),
            **fields,
        )
    job_classes = {
        "processing_job": ProcessingJobChanged,
        "tuning_job": TuningJobChanged,
        "transform_job": TransformJobChanged,
    }
    if family in job_classes:
        extra = {"best_training_job": f"{AWAITING[S.TUNING]}-001-abcdef12"} if family == "tuning_job" else {}
        extra.update(fields)
        return job_classes[family](
            **common, job_name=extra.pop("job_name", run.awaiting or "tl-x-job-1"), status=statuses[outcome], **extra
        )
    approval = {"pending": "PendingManualApproval", "approved": "Approved", "rejected": "Rejected"}
    builders = {
        "run.requested": lambda: RunRequested(**common, project=run.project, dataset_uri=run.dataset_uri),
        "stop.requested": lambda: StopRequested(**common, stop_serving=fields.get("stop_serving", True)),
        "approval.decided": lambda: ApprovalDecided(**common, approved=True),
        "retrain.requested": lambda: RetrainRequested(**common),
        "run.superseded": lambda: RunSuperseded(**common, by_run_id="bbbbbbbbbbbb"),
        "evaluation.loaded": lambda: EvaluationLoaded(
            **common, metrics=fields.get("metrics", {"macro_f1": 0.9}), baseline=fields.get("baseline", BEATS_BASELINE)
        ),
        "command.failed": lambda: CommandFailed(**common, command="StartTrainingJob", error="ValidationException"),
        "run.timed_out": lambda: RunTimedOut(
            **common, state=run.state.value, waited_s=7300, limit_s=7200, awaiting=run.awaiting
        ),
        "model_package.pending": lambda: ModelPackageChanged(
            **common, package_arn="arn:pkg/1", approval_status=approval[outcome]
        ),
        "endpoint.in_service": lambda: EndpointChanged(**common, endpoint_name="tl-demo", status="IN_SERVICE"),
        "endpoint.failed": lambda: EndpointChanged(
            **common, endpoint_name="tl-demo", status="FAILED", failure_reason="ping failed"
        ),
        "endpoint.changing": lambda: EndpointChanged(**common, endpoint_name="tl-demo", status="UPDATING"),
        "endpoint_deployment.rolled_back": lambda: EndpointDeploymentChanged(
            **common, endpoint_name="tl-demo", state="ROLLBACK_COMPLETED"
        ),
        "labels.arrived": lambda: LabelsArrived(
            **common, new_data=fields.get("new_data", NewData(labels=40, datasets=0))
        ),
        "endpoint_deployment.progress": lambda: EndpointDeploymentChanged(
            **common, endpoint_name="tl-demo", state="BAKING"
        ),
    }
    builders["model_package.approved"] = builders["model_package.rejected"] = builders["model_package.pending"]
    if family == "alarm":
        return AlarmChanged(
            **common,
            alarm_name=fields.get("alarm_name", names.drift_alarm_name(run.run_id, "prediction_psi")),
            state=outcome.upper(),
            previous_state=fields.get("previous_state", "OK"),
        )
    event = builders[kind]()
    assert event.kind == kind
    return event


def scenario(row: Row) -> tuple[Run, DomainEvent]:
    """A run and an event for which ``row`` (and no earlier row) applies."""
    guard = row.guard.description if row.guard else ""
    config = base_config()
    fields: dict[str, Any] = {}
    run_changes: dict[str, Any] = {}
    if guard == "tuning ranges configured":
        config = base_config(tuning=normalise_config({**DEMO_CONFIG, "tuning": TUNING})["tuning"])
    if guard == "spot retries used up":
        config["training"] = {**config["training"], "max_spot_retries": 1}
        run_changes["awaiting"] = names.job_name(RUN_ID, "train", 2)
    if guard == "the event names no best job":
        fields["best_training_job"] = None
    if guard == "no successful training job":
        fields.update(best_training_job=None, described=True)
    if guard == "quality gate fails":
        fields["metrics"] = {"macro_f1": 0.1}
    if guard.startswith("a retraining run waits for data"):
        run_changes["waiting_for_data"] = (names.drift_alarm_name(RUN_ID, "prediction_psi"),)
    if guard == "a retraining run waits for data":
        fields["new_data"] = NewData(labels=3, datasets=0)
    if guard.startswith("deployment mode is"):
        config["deployment"] = {**config["deployment"], "mode": guard.rsplit(" ", 1)[1]}
    run = make_run(row.state, config, **run_changes)
    return run, event_of(row.kind, run, **fields)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.state.value}-{r.kind}-{r.target.value}")
def test_every_row_applies(row: Row) -> None:
    run, event = scenario(row)
    decision = decide(run, event)
    assert decision.noop is None, decision.note
    assert decision.run.state is row.target
    assert decision.run.history[-1].event_id == event.event_id
    assert decision.run.history[-1].from_state is row.state
    if row.effect and row.kind != "stop.requested":  # stopping a run with no job running stops nothing
        assert decision.commands, "a row with an effect issues commands"
    assert [type(c).__name__ for c in decision.commands] == list(decision.run.history[-1].commands)


def test_every_state_and_kind_is_covered() -> None:
    """Every (state, kind) pair is a row, an explicit no-op, or a reasoned out-of-order no-op."""
    for state in RunState:
        for kind in ALL_EVENT_KINDS:
            run = make_run(state)
            event = event_of(kind, run)
            decision = decide(run, event)
            if state in TERMINAL_STATES:
                assert decision.noop == "terminal" and decision.run is run, (state, kind)
                continue
            if rows_for(state, kind):
                assert decision.noop in (None, "guarded"), (state, kind, decision.note)
            elif (state, kind) in NO_OPS:
                # The resource check comes first: events about a job the run is not
                # waiting on are out of order however harmless their kind.
                awaited = (
                    event.resource is None or event.resource == run.awaiting or kind.startswith(("alarm", "model"))
                )
                expected = NO_OPS[(state, kind)][0] if awaited else "out_of_order"
                assert decision.noop == expected, (state, kind, decision.note)
            else:
                assert decision.noop in ("out_of_order", "stale", "progress"), (state, kind, decision.noop)
            if decision.noop:
                assert decision.note, (state, kind)
                assert decision.run is run and not decision.commands


FORBIDDEN = [
    (state, kind)
    for state in RunState
    for kind in ALL_EVENT_KINDS
    if not rows_for(state, kind) and (state, kind) not in NO_OPS and not state.terminal
]


@pytest.mark.parametrize("state,kind", FORBIDDEN, ids=lambda v: getattr(v, "value", v))
def test_forbidden_pairs_change_nothing(state: RunState, kind: str) -> None:
    run = make_run(state)
    decision = decide(run, event_of(kind, run))
    assert not decision.changed
    assert decision.run == run
    assert decision.note


def test_duplicate_event_id_is_a_noop() -> None:
    run = make_run(S.TRAINING)
    event = event_of("training_job.completed", run)
    first = decide(run, event)
    assert first.run.state is S.EVALUATING
    again = decide(first.run, event)
    assert again.noop == "duplicate"


def test_event_for_a_previous_attempt_is_stale() -> None:
    run = decide(make_run(S.PREPARING), event_of("processing_job.completed", make_run(S.PREPARING), "evt-0")).run
    assert run.awaiting == names.job_name(RUN_ID, "train", 1)
    interrupted = decide(run, event_of("training_job.interrupted", run))
    assert interrupted.run.awaiting == names.job_name(RUN_ID, "train", 2)
    late = decide(
        interrupted.run, event_of("training_job.completed", run, "evt-2", job_name=names.job_name(RUN_ID, "train", 1))
    )
    assert late.noop == "stale"


def test_trial_events_of_a_tuning_job_are_progress() -> None:
    run = make_run(S.TUNING)
    trial = event_of("training_job.completed", run, job_name=f"{run.awaiting}-002-0f1e2d3c")
    assert decide(run, trial).noop == "progress"


def test_failure_reason_is_kept_verbatim() -> None:
    run = make_run(S.TRAINING)
    reason = "AlgorithmError: CUDA out of memory. Tried to allocate 2.00 GiB"
    event = TrainingJobChanged(
        event_id="e", time=T0, job_name=run.awaiting or "", status="Failed", failure_reason=reason
    )
    decision = decide(run, event)
    assert decision.run.state is S.FAILED
    assert reason in decision.run.history[-1].reason


def test_spot_retries_are_bounded() -> None:
    run = make_run(S.TRAINING)
    for attempt in range(1, 10):
        decision = decide(run, event_of("training_job.interrupted", run, f"int-{attempt}"))
        run = decision.run
        if run.state is S.FAILED:
            break
    assert run.state is S.FAILED
    assert attempt == base_config()["training"]["max_spot_retries"] + 1


def test_gate_against_champion() -> None:
    config = base_config()
    config["gates"] = {**config["gates"], "metrics": {"macro_f1": 0.7}, "min_improvement": 0.02}
    run = make_run(S.GATING, config)

    def loaded(metrics: dict[str, float], champion: dict[str, float] | None) -> RunState:
        event = EvaluationLoaded(
            event_id="ev",
            time=T0,
            run_id=RUN_ID,
            metrics=metrics,
            champion_run_id="cccccccccccc",
            champion_metrics=champion,
            baseline=None if champion else BEATS_BASELINE,
        )
        return decide(run, event).run.state

    assert loaded({"macro_f1": 0.85}, None) is S.REGISTERING  # no champion yet
    assert loaded({"macro_f1": 0.65}, None) is S.REJECTED  # below threshold
    # An evaluation without a paired comparison falls back to the point values.
    assert loaded({"macro_f1": 0.85}, {"macro_f1": 0.80}) is S.REGISTERING  # better by 0.05
    assert loaded({"macro_f1": 0.81}, {"macro_f1": 0.80}) is S.REJECTED  # better by less than 0.02
    assert loaded({"accuracy": 0.9}, None) is S.REJECTED  # gated metric missing


def gated(
    config: dict[str, Any],
    metrics: dict[str, float],
    comparison: Comparison | None = None,
    baseline: Comparison | None = BEATS_BASELINE,
) -> Any:
    event = EvaluationLoaded(
        event_id="ev",
        time=T0,
        run_id=RUN_ID,
        metrics=metrics,
        champion_run_id="cccccccccccc" if comparison else None,
        champion_metrics={comparison.metric: comparison.champion} if comparison else None,
        comparison=comparison,
        # The default baseline is beaten on whatever the project's primary metric is; a
        # causal LM's evaluation holds its untuned base's comparison with a champion too.
        baseline=_on_primary(config, baseline) if not comparison or config["task"] == "causal-lm" else None,
    )
    return decide(make_run(S.GATING, config), event).run


def _on_primary(config: dict[str, Any], baseline: Comparison | None) -> Comparison | None:
    if baseline is not BEATS_BASELINE:
        return baseline
    primary = config["gates"]["primary_metric"] or spec.PRIMARY_METRICS[config["task"]][0]
    higher = spec.METRICS[primary].better == spec.HIGHER
    return dataclasses.replace(baseline, metric=primary, low=0.4 if higher else -0.7, high=0.7 if higher else -0.4)


def test_a_challenger_answering_every_row_as_the_champion_does_is_not_deployed() -> None:
    """A retrain that learned nothing new: the same macro-F1, the same answers on all 26
    rows, an interval of +0.0000 to +0.0000. "Not worse" is not a reason to deploy it."""
    config = normalise_config({"base_model": "sentence-transformers/all-MiniLM-L6-v2", "task": "text-classification"})
    same = Comparison("macro_f1", 0.1843, 0.1843, low=0.0, high=0.0, confidence=0.95, rows=26, differing_rows=0)
    run = gated(config, {"macro_f1": 0.1843}, same)
    assert run.state is S.REJECTED
    assert "equal champion run cccccccccccc's on every one of the 26 test rows" in run.history[-1].reason
    # A causal LM that generates alike but improved its loss is not the same model.
    llm = normalise_config({"base_model": "random:llama-small", "task": "causal-lm",
                            "gates": {"primary_metric": "perplexity"}})  # fmt: skip
    alike = Comparison("perplexity", 3.1, 3.4, low=-0.5, high=-0.1, confidence=0.95, rows=40, differing_rows=0)
    assert gated(llm, {"perplexity": 3.1}, alike).state is S.REGISTERING
    # One row answered differently, within noise: not worse, deployed as before.
    other = dataclasses.replace(same, differing_rows=1, low=-0.04, high=0.04)
    assert gated(config, {"macro_f1": 0.1843}, other).state is S.REGISTERING


def test_a_language_model_must_beat_its_untuned_base_even_past_a_champion() -> None:
    """Every causal-LM evaluation measures the untuned base on the same prompts: a
    challenger better than the champion but not than its base beyond noise (the champion
    was no better than the base either) is rejected, the figures named; one that beats both
    is registered, both reasons given."""
    llm = normalise_config({"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "task": "causal-lm",
                            "gates": {"primary_metric": "token_f1"}})  # fmt: skip
    versus_champion = Comparison("token_f1", 0.62, 0.50, low=0.05, high=0.2, confidence=0.95, rows=40,
                                 differing_rows=12)  # fmt: skip
    base = "the untuned base model HuggingFaceTB/SmolLM2-135M-Instruct"
    level = Comparison("token_f1", 0.62, 0.60, low=-0.03, high=0.07, confidence=0.95, rows=40, differing_rows=30,
                       against=base)  # fmt: skip
    run = gated(llm, {"token_f1": 0.62}, versus_champion, level)
    assert run.state is S.REJECTED
    reason = run.history[-1].reason
    assert f"token_f1 0.6200 vs {base} 0.6000 on the same 40 test rows" in reason, reason
    assert "not better than the baseline beyond noise" in reason and "no champion deployed yet" not in reason
    beaten = dataclasses.replace(level, champion=0.3, low=0.2, high=0.4)
    run = gated(llm, {"token_f1": 0.62}, versus_champion, beaten)
    assert run.state is S.REGISTERING
    assert "champion run cccccccccccc" in run.history[-1].reason and base in run.history[-1].reason
    # An evaluation that could not measure the base gives no reason to promote.
    run = gated(llm, {"token_f1": 0.62}, versus_champion, None)
    assert run.state is S.REJECTED and "must beat its untuned base" in run.history[-1].reason
    # The champion comparison off: measured against its base alone, and not called a first model.
    alone = normalise_config({**llm, "gates": {**llm["gates"], "compare_champion": False}})
    run = gated(alone, {"token_f1": 0.62}, None, level)
    assert run.state is S.REJECTED and "no champion deployed yet" not in run.history[-1].reason
    assert f"vs {base} 0.6000" in run.history[-1].reason
    # The project may turn it off, as for a first model.
    off = normalise_config({**llm, "gates": {**llm["gates"], "compare_baseline": False}})
    assert gated(off, {"token_f1": 0.62}, versus_champion, level).state is S.REGISTERING


def test_a_first_model_must_beat_a_trivial_baseline_beyond_noise() -> None:
    """No champion: the gate compares with the baseline the evaluation measured, in the
    primary metric's direction; no baseline (or one not measured) promotes nothing, unless
    the project turns the comparison off."""
    config = normalise_config({"base_model": "sentence-transformers/all-MiniLM-L6-v2", "task": "text-classification"})
    tie = dataclasses.replace(BEATS_BASELINE, challenger=0.184, champion=0.110, low=-0.02, high=0.19)
    run = gated(config, {"macro_f1": 0.184}, baseline=tie)
    assert run.state is S.REJECTED and "not better than the baseline beyond noise" in run.history[-1].reason
    assert "macro_f1 0.1840 vs the majority-class predictor" in run.history[-1].reason
    assert run.metrics["baseline"]["against"] == BEATS_BASELINE.against  # recorded on the run,
    assert run.metrics["baseline"]["baseline"] == 0.110 and "champion" not in run.metrics["baseline"]  # as itself
    assert gated(config, {"macro_f1": 0.9}).state is S.REGISTERING
    missing = gated(config, {"macro_f1": 0.9}, baseline=None)
    assert missing.state is S.REJECTED and "no comparison with a trivial baseline" in missing.history[-1].reason
    nan = dataclasses.replace(BEATS_BASELINE, low=float("nan"))
    assert gated(config, {"macro_f1": 0.9}, baseline=nan).state is S.REJECTED
    # Perplexity: lower is better, so the whole interval must be below zero.
    llm = normalise_config({"base_model": "random:llama-small", "task": "causal-lm",
                            "gates": {"primary_metric": "perplexity"}})  # fmt: skip
    lower = Comparison("perplexity", 3.1, 40.0, low=-45.0, high=-30.0, confidence=0.95, rows=40,
                       against="the untuned base model random:llama-small")  # fmt: skip
    assert gated(llm, {"perplexity": 3.1}, baseline=lower).state is S.REGISTERING
    higher = dataclasses.replace(lower, challenger=41.0, low=-2.0, high=4.0)
    assert gated(llm, {"perplexity": 41.0}, baseline=higher).state is S.REJECTED
    off = {**config, "gates": {**config["gates"], "compare_baseline": False}}
    assert gated(off, {"macro_f1": 0.184}, baseline=None).state is S.REGISTERING
    # Champion comparison off while a champion serves: the job measured neither it nor a
    # baseline (that is for a first model); the gate says so and passes.
    no_champion = {**config, "gates": {**config["gates"], "compare_champion": False}}
    passed = gated(no_champion, {"macro_f1": 0.5}, baseline=None)
    assert passed.state is S.REGISTERING and passed.history[-1].reason.endswith("champion comparison off")


def test_by_default_a_worse_challenger_is_rejected_with_both_numbers_and_the_interval() -> None:
    """No gates configured (the default): the champion comparison still runs, on macro-F1."""
    config = normalise_config({"base_model": "sentence-transformers/all-MiniLM-L6-v2", "task": "text-classification"})
    assert config["gates"]["metrics"] == {} and config["gates"]["primary_metric"] == "macro_f1"
    worse = Comparison("macro_f1", 0.812, 0.911, low=-0.141, high=-0.058, confidence=0.95, rows=265)
    run = gated(config, {"macro_f1": 0.812}, worse)
    assert run.state is S.REJECTED
    reason = run.history[-1].reason
    assert "macro_f1 0.8120 vs champion run cccccccccccc 0.9110 on the same 265 test rows" in reason
    assert "95% interval -0.1410 to -0.0580" in reason and "worse beyond noise" in reason
    assert run.metrics["comparison"]["champion"] == 0.911  # recorded on the run too
    # Slightly lower, but within the paired noise: not a regression, registered.
    noise = Comparison("macro_f1", 0.905, 0.911, low=-0.03, high=0.018, confidence=0.95, rows=265)
    run = gated(config, {"macro_f1": 0.905}, noise)
    assert run.state is S.REGISTERING and "not worse beyond noise" in run.history[-1].reason
    # A NaN promotes nothing, whatever else holds.
    assert gated(config, {"macro_f1": float("nan")}).state is S.REJECTED
    nan = Comparison("macro_f1", 0.9, float("nan"), low=-0.03, high=0.018, confidence=0.95, rows=265)
    assert gated(config, {"macro_f1": 0.9}, nan).state is S.REJECTED


def test_lower_is_better_metrics_gate_and_compare_the_right_way_round() -> None:
    config = normalise_config(
        {
            "base_model": "org/tiny-llama",
            "task": "causal-lm",
            "gates": {"metrics": {"perplexity": 100}, "primary_metric": "perplexity"},
        }
    )
    run = gated(config, {"perplexity": 29607.0, "loss": 10.3})
    assert run.state is S.REJECTED
    assert run.history[-1].reason.endswith("perplexity 2.961e+04 is above the threshold 100 (lower is better)")
    untuned = Comparison("perplexity", 29.6, 29607.0, low=-31000.0, high=-28000.0, confidence=0.95, rows=50,
                         against="the untuned base model org/tiny-llama")  # fmt: skip
    assert gated(config, {"perplexity": 29.6, "loss": 3.39}, baseline=untuned).state is S.REGISTERING
    # A challenger whose perplexity is clearly higher is worse, not better.
    higher = Comparison("perplexity", 40.0, 30.0, low=6.0, high=14.0, confidence=0.95, rows=50)
    assert gated(config, {"perplexity": 40.0, "loss": 3.7}, higher).state is S.REJECTED
    lower = Comparison("perplexity", 25.0, 30.0, low=-8.0, high=-2.0, confidence=0.95, rows=50)
    run = gated(config, {"perplexity": 25.0, "loss": 3.2}, lower)
    assert run.state is S.REGISTERING and "better beyond noise" in run.history[-1].reason


def test_retrain_guards() -> None:
    run = make_run(S.DEPLOYED)
    first = decide(run, event_of("alarm.alarm", run, "a1"))
    assert [type(c).__name__ for c in first.commands] == ["StartChildRun"]

    def blocked(decision: Any, why: str) -> None:
        # Recorded, not silent: the history says why no retraining run started.
        assert decision.changed and decision.commands == () and decision.run.state is S.DEPLOYED
        assert why in decision.run.history[-1].reason, decision.run.history[-1].reason

    blocked(decide(first.run, event_of("alarm.alarm", run, "a2", previous_state="ALARM")), "already in ALARM")
    blocked(decide(first.run, event_of("alarm.alarm", run, "a3")), "cooldown")
    blocked(decide(run, event_of("alarm.alarm", run, "a4", alarm_name="tl-bbbbbbbbbbbb-drift-x")), "neither a drift")
    ok = decide(run, event_of("alarm.ok", run, "a5"))
    assert ok.changed and ok.commands == () and ok.run.history[-1].reason == "alarm back to OK; nothing to do"

    # A production-quality alarm of the run starts a retraining run through the same guards.
    f1_alarm = names.quality_alarm_name(RUN_ID, "production_macro_f1")
    quality = decide(run, event_of("alarm.alarm", run, "a6", alarm_name=f1_alarm))
    [child] = quality.commands
    assert isinstance(child, StartChildRun) and child.reason.startswith("quality alarm tl-")
    accuracy_alarm = names.quality_alarm_name(RUN_ID, "production_accuracy")
    blocked(decide(quality.run, event_of("alarm.alarm", run, "a7", alarm_name=accuracy_alarm)), "cooldown")


def test_a_retrain_waits_until_there_is_something_new_to_learn_from() -> None:
    """A drift alarm with no labels back and no new dataset starts nothing: the history
    says what it waits for, and the run remembers the alarm. Labels that fall short are
    recorded; enough of them start exactly one retraining run. A new dataset needs no
    labels; an alarm back to OK stops the wait; a request by hand is not asked."""
    config = base_config()
    config["retrain"] = {**config["retrain"], "cooldown_s": 0, "max_per_day": 5}
    run = make_run(S.DEPLOYED, config)
    psi = names.drift_alarm_name(RUN_ID, "prediction_psi")
    nothing = dataclasses.replace(event_of("alarm.alarm", run, "w1"), new_data=NewData(labels=0, datasets=0))
    held = decide(run, nothing)
    assert held.changed and held.commands == () and held.run.waiting_for_data == (psi,)
    assert held.run.history[-1].reason == (
        f"alarm in ALARM; no retraining: {psi}: drift in prediction_psi; nothing new to learn from yet: "
        "0 labelled production row(s), 0 new dataset(s); "
        "a retraining run starts when 30 labels (or a new dataset) have arrived"
    )

    def arrived(current: Run, event_id: str, labels: int, datasets: int = 0) -> Any:
        return decide(current, LabelsArrived(event_id=event_id, time=T0 + timedelta(minutes=5), run_id=RUN_ID,
                                             new_data=NewData(labels=labels, datasets=datasets)))  # fmt: skip

    short = arrived(held.run, "l1", 12)
    assert short.commands == () and short.run.waiting_for_data == (psi,)
    assert (
        "still waits" in short.run.history[-1].reason
        and "12 labelled production row(s)" in short.run.history[-1].reason
    )
    enough = arrived(short.run, "l2", 31)
    [child] = enough.commands
    assert isinstance(child, StartChildRun) and enough.run.waiting_for_data == ()
    assert (
        child.reason
        == f"drift in prediction_psi ({psi}) waited for data: 31 labelled production row(s), 0 new dataset(s)"
    )
    again = arrived(enough.run, "l3", 60)  # nothing waits any more: a second delivery starts nothing
    assert again.noop == "guarded" and again.commands == ()

    # Two alarms wait: one back to OK leaves the other waiting; the scheduled look again,
    # short of labels, records nothing (a delivery that falls short is recorded).
    js = names.drift_alarm_name(RUN_ID, "input_js")
    both = decide(held.run, dataclasses.replace(nothing, event_id="w5", alarm_name=js)).run
    assert both.waiting_for_data == (psi, js)
    one = decide(both, dataclasses.replace(event_of("alarm.ok", run, "w6"), alarm_name=js)).run
    assert one.waiting_for_data == (psi,)
    looked = decide(one, LabelsArrived(event_id="s1", time=T0, run_id=RUN_ID, scheduled=True,
                                       new_data=NewData(labels=3, datasets=0)))  # fmt: skip
    assert looked.noop == "guarded" and "30 labels" in looked.note
    assert [type(c).__name__ for c in arrived(one, "l5", 30).commands] == ["StartChildRun"]
    # Labels are only evidence: when they could not be counted (S3 failed), nothing starts.
    uncounted = decide(one, LabelsArrived(event_id="l6", time=T0, run_id=RUN_ID))
    assert uncounted.commands == () and "could not be counted" in uncounted.run.history[-1].reason
    # A new dataset is something new: the alarm retrains at once, no wait.
    dataset = dataclasses.replace(nothing, event_id="w2", new_data=NewData(labels=0, datasets=1))
    assert [type(c).__name__ for c in decide(run, dataset).commands] == ["StartChildRun"]
    # The alarm back to OK: the drift went away, and so does the wait.
    calm = decide(held.run, dataclasses.replace(event_of("alarm.ok", run, "w3"), alarm_name=psi))
    assert calm.run.waiting_for_data == () and arrived(calm.run, "l4", 100).commands == ()
    # An operator's request is theirs to make: it starts a run with nothing new, and ends the wait.
    by_hand = decide(held.run, RetrainRequested(event_id="r1", time=T0, run_id=RUN_ID))
    assert [type(c).__name__ for c in by_hand.commands] == ["StartChildRun"] and by_hand.run.waiting_for_data == ()
    # Not counted (no bucket to look in): the alarm retrains as it always did.
    assert [type(c).__name__ for c in decide(run, event_of("alarm.alarm", run, "w4")).commands] == ["StartChildRun"]


def test_one_retraining_run_at_a_time_and_a_daily_cap() -> None:
    run = make_run(S.DEPLOYED)
    busy = dataclasses.replace(event_of("alarm.alarm", run, "b1"), active_retraining_run="cccccccccccc")
    decision = decide(run, busy)
    assert decision.commands == () and "run cccccccccccc of this project is still active" in (
        decision.run.history[-1].reason
    )
    by_hand = decide(run, RetrainRequested(event_id="r1", time=T0, run_id=RUN_ID, active_retraining_run="cccccccccccc"))
    assert by_hand.noop == "guarded" and "still active" in by_hand.note  # the API answers 409 with this
    # Flapping: OK→ALARM→OK→ALARM. Outside the cooldown each OK→ALARM may retrain, up to the cap.
    config = base_config()
    config["retrain"] = {**config["retrain"], "cooldown_s": 60, "max_per_day": 2}
    current = make_run(S.DEPLOYED, config)
    started = 0
    for n in range(4):
        at = T0 + timedelta(minutes=10 * n)
        alarm = dataclasses.replace(event_of("alarm.alarm", current, f"f{n}"), time=at)
        current = decide(current, alarm).run
        started += current.history[-1].commands == ("StartChildRun",)
        current = decide(current, dataclasses.replace(event_of("alarm.ok", current, f"o{n}"), time=at)).run
    assert started == 2 and "daily cap of 2" in current.history[-2].reason


# --- property-based: random sequences, duplicates and reordering --------------------------


def candidate_events(config_tuning: bool) -> list[DomainEvent]:
    """Every event a run could plausibly see, for the jobs it would start."""
    run = make_run(S.RECEIVED)
    jobs = [names.job_name(RUN_ID, "prepare"), names.job_name(RUN_ID, "tune"), names.job_name(RUN_ID, "evaluate")]
    jobs += [names.job_name(RUN_ID, "train", n) for n in (1, 2, 3)]
    events: list[DomainEvent] = [event_of("run.requested", run, "req")]
    outcomes = ("in_progress", "completed", "failed", "stopped")
    n = 0
    for job in jobs:
        for outcome in (*outcomes, "interrupted", "capacity_timeout", "timed_out"):
            n += 1
            family = "training_job" if "-train-" in job else "tuning_job" if "-tune-" in job else "processing_job"
            if family != "training_job" and outcome not in outcomes:
                continue
            events.append(event_of(f"{family}.{outcome}", run, f"e{n}", job_name=job))
    for kind in ALL_EVENT_KINDS:
        if not kind.split(".")[0].endswith("_job") and kind != "run.requested":
            n += 1
            events.append(event_of(kind, run, f"e{n}"))
    return events


@st.composite
def event_sequences(draw: st.DrawFn) -> tuple[bool, list[DomainEvent]]:
    tuning = draw(st.booleans())
    pool = candidate_events(tuning)
    picks = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=60))
    # Duplicates: re-deliver some events later in the sequence.
    dupes = draw(st.lists(st.sampled_from(picks), max_size=10))
    sequence = picks + dupes
    order = draw(st.permutations(range(len(sequence))))
    return tuning, [sequence[i] for i in order]


def check_sequence(tuning: bool, events: list[DomainEvent]) -> None:
    """The properties every event sequence must keep, however disturbed."""
    config = base_config(tuning=normalise_config({**DEMO_CONFIG, "tuning": TUNING})["tuning"]) if tuning else None
    run = make_run(S.RECEIVED, config, awaiting=None, model_source=None)
    started: list[str] = []
    for event in events:
        before = run
        decision = decide(run, event)
        run = decision.run
        assert run.state.rank >= before.state.rank, (before.state, event.kind, run.state)
        if before.state.terminal:
            assert run is before
        started += [c.awaits for c in decision.commands if isinstance(c, Command) and c.starts_job and c.awaits]
    assert len(started) == len(set(started)), f"a job was started twice: {started}"


@settings(max_examples=300, deadline=None)
@given(event_sequences())
def test_random_sequences_never_go_backwards(case: tuple[bool, list[DomainEvent]]) -> None:
    check_sequence(*case)


def lifecycle(tuning: bool, interruptions: int) -> list[DomainEvent]:
    """The events of one whole run, in the order AWS would send them."""
    run = make_run(S.RECEIVED)
    events: list[DomainEvent] = [event_of("run.requested", run, "req")]
    prepare = names.job_name(RUN_ID, "prepare")
    events += [
        event_of(f"processing_job.{o}", run, f"prep-{o}", job_name=prepare) for o in ("in_progress", "completed")
    ]
    if tuning:
        tune = names.job_name(RUN_ID, "tune")
        events.append(event_of("training_job.completed", run, "trial-1", job_name=f"{tune}-001-aaaaaaaa"))
        events.append(event_of("tuning_job.completed", run, "tune-done", job_name=tune))
    else:
        for attempt in range(1, interruptions + 1):
            job = names.job_name(RUN_ID, "train", attempt)
            events.append(event_of("training_job.interrupted", run, f"int-{attempt}", job_name=job))
        job = names.job_name(RUN_ID, "train", interruptions + 1)
        events.append(event_of("training_job.completed", run, "train-done", job_name=job))
    evaluate = names.job_name(RUN_ID, "evaluate")
    events.append(event_of("processing_job.completed", run, "eval-done", job_name=evaluate))
    for kind in ("evaluation.loaded", "model_package.approved", "endpoint.in_service", "alarm.alarm", "run.superseded"):
        events.append(event_of(kind, run, f"{kind}-1"))
    return events


@st.composite
def disturbed_lifecycles(draw: st.DrawFn) -> tuple[bool, list[DomainEvent]]:
    """A whole lifecycle, then redelivered, swapped and stray events mixed in."""
    tuning = draw(st.booleans())
    events = lifecycle(tuning, draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(0, 12))):
        i = draw(st.integers(0, len(events) - 1))
        action = draw(st.sampled_from(["duplicate", "swap", "stray"]))
        if action == "duplicate":
            events.insert(draw(st.integers(i, len(events))), events[i])
        elif action == "swap" and i + 1 < len(events):
            events[i], events[i + 1] = events[i + 1], events[i]
        elif action == "stray":
            events.insert(i, draw(st.sampled_from(candidate_events(tuning))))
    return tuning, events


@settings(max_examples=300, deadline=None)
@given(disturbed_lifecycles())
def test_disturbed_lifecycles_never_go_backwards(case: tuple[bool, list[DomainEvent]]) -> None:
    check_sequence(*case)


def test_undisturbed_lifecycles_end_superseded() -> None:
    for tuning in (False, True):
        config = base_config(tuning=normalise_config({**DEMO_CONFIG, "tuning": TUNING})["tuning"]) if tuning else None
        run = make_run(S.RECEIVED, config, awaiting=None, model_source=None)
        for event in lifecycle(tuning, 2):
            run = decide(run, event).run
        assert run.state is S.SUPERSEDED, tuning
        assert len(run.times_of("StartChildRun")) == 1


def _states_reached(events: list[DomainEvent]) -> RunState:
    run = make_run(S.RECEIVED, awaiting=None, model_source=None)
    for event in events:
        run = decide(run, event).run
    return run.state


def test_happy_path_reaches_deployed_and_then_superseded() -> None:
    run = make_run(S.RECEIVED, awaiting=None, model_source=None)
    steps = [
        ("run.requested", {}),
        ("processing_job.completed", {}),
        ("training_job.completed", {}),
        ("processing_job.completed", {}),
        ("evaluation.loaded", {}),
        ("model_package.approved", {}),
        ("endpoint.in_service", {}),
        ("run.superseded", {}),
    ]
    for n, (kind, fields) in enumerate(steps):
        decision = decide(run, event_of(kind, run, f"s{n}", **fields))
        assert decision.changed, (kind, decision.note)
        run = decision.run
    assert run.state is S.SUPERSEDED
    assert [h.to_state for h in run.history] == [
        S.PREPARING,
        S.TRAINING,
        S.EVALUATING,
        S.GATING,
        S.REGISTERING,
        S.DEPLOYING,
        S.DEPLOYED,
        S.SUPERSEDED,
    ]


def test_pending_commands_carry_over_unless_obsolete() -> None:
    from chalicelib.domain.commands import CreateDriftAlarms, StartTrainingJob
    from chalicelib.store import OutboxItem, RunRepository, StoredRun

    run = make_run(S.DEPLOYED)
    alarms = OutboxItem(CreateDriftAlarms(RUN_ID, "demo", "tl-demo"))
    old_start = OutboxItem(StartTrainingJob(RUN_ID, "demo", names.job_name(RUN_ID, "train", 1), attempt=1))
    stored = StoredRun(run=run, version=3, outbox=(alarms, old_start), outbox_event_id="e0")
    superseded = decide(run, event_of("run.superseded", run)).run
    assert RunRepository.carried_over(stored, superseded) == (alarms,)


def test_training_metrics_are_kept_on_the_run() -> None:
    run = make_run(S.TRAINING)
    event = TrainingJobChanged(
        event_id="t",
        time=T0,
        job_name=run.awaiting or "",
        status="Completed",
        final_metrics={"validation_macro_f1": 0.9},
    )
    assert decide(run, event).run.metrics == {"training": {"validation_macro_f1": 0.9}}


def test_in_service_on_another_runs_model_does_not_deploy_this_run() -> None:
    """After a rollback the endpoint is in service on the old run's config; that event
    reaches the run that was deploying (it waits on the endpoint) and must not deploy it."""
    run = make_run(S.DEPLOYING, awaiting="tl-demo")
    old = EndpointChanged(
        event_id="back", time=T0, endpoint_name="tl-demo", status="IN_SERVICE",
        endpoint_config_name="tl-bbbbbbbbbbbb-config-1",
    )  # fmt: skip
    decision = decide(run, old)
    assert decision.noop == "guarded" and "serves this run's model" in decision.note
    mine = dataclasses.replace(old, event_id="mine", endpoint_config_name=f"tl-{RUN_ID}-config-1")
    assert decide(run, mine).run.state is S.DEPLOYED


def test_superseded_runs_retire_their_deployment_unless_the_project_keeps_them() -> None:
    event = RunSuperseded(event_id="sup", time=T0, run_id=RUN_ID, by_run_id="bbbbbbbbbbbb")
    retired = decide(make_run(S.DEPLOYED), event)
    assert retired.run.state is S.SUPERSEDED and [type(c).__name__ for c in retired.commands] == ["RetireDeployment"]
    config = base_config()
    config["deployment"] = {**config["deployment"], "delete_superseded": False}
    kept = decide(make_run(S.DEPLOYED, config), event)
    assert kept.run.state is S.SUPERSEDED and kept.commands == ()


def test_a_long_lived_runs_alarm_records_stay_bounded() -> None:
    from chalicelib.domain.machine import MAX_RECORDED_NOOPS

    run = make_run(S.DEPLOYED)
    for n in range(MAX_RECORDED_NOOPS + 30):
        state = "ok" if n % 2 else "insufficient_data"
        run = decide(run, dataclasses.replace(event_of(f"alarm.{state}", run, f"flip-{n}"))).run
    quiet = [e for e in run.history if e.from_state is e.to_state and not e.commands]
    assert len(quiet) == MAX_RECORDED_NOOPS and quiet[-1].event_id == f"flip-{MAX_RECORDED_NOOPS + 29}"


def test_the_same_status_under_another_event_id_is_a_duplicate() -> None:
    """The sweeper applies what Describe* said under a derived id; the real event, late and
    with its own EventBridge id, reports a status the run has applied already."""
    run = make_run(S.TRAINING)
    swept = event_of("training_job.completed", run, "sweep-tl-aaaaaaaaaaaa-train-1:completed")
    moved = decide(run, swept)
    assert moved.run.state is S.EVALUATING
    late = decide(moved.run, event_of("training_job.completed", run, "2f1b3c4d-eventbridge-id"))
    assert late.noop == "duplicate" and "already applied" in late.note
    # Other statuses of the same job, and progress, are not what was applied.
    assert decide(moved.run, event_of("training_job.in_progress", run, "evt-9")).noop != "duplicate"


def test_timeouts_fail_the_run_and_stop_its_job() -> None:
    from chalicelib.domain.commands import StopJob

    run = make_run(S.TRAINING)
    decision = decide(run, event_of("run.timed_out", run))
    assert decision.run.state is S.FAILED
    assert "waited 2h01m training on tl-aaaaaaaaaaaa-train-1; the limit is 2h00m" in decision.note
    assert decision.commands == (StopJob(RUN_ID, job_type="training", job_name=run.awaiting),)


def test_every_state_with_a_time_limit_can_time_out() -> None:
    from chalicelib.domain.waits import SWEPT_STATES, time_limit_s

    timed = {state for state in RunState if not state.terminal and time_limit_s(make_run(state)) is not None}
    assert timed == {row.state for row in ROWS if row.kind == "run.timed_out"}
    assert timed <= set(SWEPT_STATES)
    assert time_limit_s(make_run(S.PENDING_APPROVAL)) is None  # a person decides, however long


def test_time_limits_follow_the_runs_config() -> None:
    from chalicelib.domain.waits import SLACK_S, overdue, time_limit_s, waiting_since

    config = base_config()
    config["training"] = {
        **config["training"],
        "spot": True,
        "warm_pool_s": 0,
        "max_runtime_s": 3600,
        "max_wait_s": 7200,
    }
    run = make_run(S.PREPARING, config)
    training = decide(run, event_of("processing_job.completed", run)).run
    assert time_limit_s(training) == 7200 + SLACK_S  # MaxWait bounds a spot job
    since = waiting_since(training)
    assert since == T0 + timedelta(hours=1)
    assert overdue(training, since + timedelta(seconds=7200 + SLACK_S)) is None
    assert overdue(training, since + timedelta(seconds=7201 + SLACK_S)) == (7201 + SLACK_S, 7200 + SLACK_S)
    # A spot retry starts a new wait: the new attempt gets its own time.
    retried = decide(training, event_of("training_job.interrupted", training, "evt-2")).run
    assert waiting_since(retried) == T0 + timedelta(hours=1)
    tuned = make_run(S.TUNING, base_config(tuning=normalise_config({**DEMO_CONFIG, "tuning": TUNING})["tuning"]))
    tuning = tuned.config["tuning"]
    rounds = -(-tuning["max_jobs"] // tuning["max_parallel_jobs"])
    trial = tuned.config["training"]
    per_trial = trial["max_wait_s"] if trial["spot"] else trial["max_runtime_s"]
    assert time_limit_s(tuned) == rounds * per_trial + SLACK_S
    # An evaluate job's own limit follows its test split (known when it starts): the run
    # waits for the most it may have been given, or for the project's own limit.
    assert time_limit_s(make_run(S.EVALUATING)) == 86400 + SLACK_S
    named = base_config()
    named["evaluation"] = {"instance_type": None, "max_runtime_s": 5400}
    assert time_limit_s(make_run(S.EVALUATING, named)) == 5400 + SLACK_S


def test_history_times_never_run_backwards_and_carry_the_jobs_exit_message() -> None:
    from chalicelib.domain.events import ProcessingJobChanged
    from chalicelib.domain.run import HistoryEntry

    late = T0 + timedelta(microseconds=250_000)
    started = HistoryEntry("r", "run.requested", S.RECEIVED, S.PREPARING, "dataset dropped", late)
    run = make_run(S.PREPARING, history=(started,))
    event = ProcessingJobChanged(
        event_id="p",
        time=late - timedelta(seconds=1),  # stamped in whole seconds, before the last entry
        job_name=AWAITING[S.PREPARING],
        status="Completed",
        details={"exit_message": "230 of 240 rows kept from 1 file(s); 10 invalid dropped"},
    )
    after = decide(run, event).run
    assert after.history[-1].time >= late
    assert after.history[-1].reason.endswith(": 230 of 240 rows kept from 1 file(s); 10 invalid dropped")


def test_a_causal_lm_is_gated_on_what_it_generates() -> None:
    """By default a causal LM's gate compares generations (its first scorer, token F1): a
    challenger worse beyond noise is rejected with the scorer's numbers in the reason, and
    a threshold on exact match holds it back however its perplexity looks."""
    config = normalise_config({"base_model": "random:llama-tiny", "task": "causal-lm"})
    assert config["gates"]["primary_metric"] == "token_f1"
    worse = Comparison("token_f1", 0.41, 0.93, low=-0.6, high=-0.44, confidence=0.95, rows=40)
    run = gated(config, {"token_f1": 0.41, "perplexity": 3.1}, worse)
    assert run.state is S.REJECTED
    reason = run.history[-1].reason
    assert "token_f1 0.4100 vs champion run cccccccccccc 0.9300 on the same 40 test rows" in reason
    assert "worse beyond noise" in reason
    strict = normalise_config(
        {"base_model": "random:llama-tiny", "task": "causal-lm", "gates": {"metrics": {"exact_match": 0.9}}}
    )
    held = gated(strict, {"exact_match": 0.55, "token_f1": 0.8, "perplexity": 1.2})
    assert held.state is S.REJECTED and "exact_match 0.55 is below the threshold 0.9" in held.history[-1].reason
    assert gated(strict, {"exact_match": 0.95, "token_f1": 0.97, "perplexity": 1.2}).state is S.REGISTERING


def test_a_runs_history_stays_within_its_budget_whatever_comes() -> None:
    """Months of alarms and retraining requests, each with as much text as any sender can
    put in: the history stays within HISTORY_BUDGET_BYTES (so the run's item stays well
    under DynamoDB's 400 KB and every later transition can commit); the run's creation and
    the newest entries stay, and the retraining guards still see the recent starts."""
    from chalicelib.domain.machine import HISTORY_BUDGET_BYTES, MAX_REASON_CHARS, entry_bytes

    config = base_config()
    config["retrain"] = {**config["retrain"], "cooldown_s": 0, "max_per_day": 100}
    first = HistoryEntry("created", "run.requested", S.RECEIVED, S.PREPARING, "dataset dropped", T0)
    run = make_run(S.DEPLOYED, config, history=(first,))
    for n in range(3000):
        at = T0 + timedelta(hours=n)
        if n % 3 == 0:
            event: DomainEvent = RetrainRequested(event_id=f"r{n}", time=at, run_id=RUN_ID, reason="x" * 50_000,
                                                  actor="arn:aws:iam::1:user/" + "u" * 5000)  # fmt: skip
        else:
            kind = "alarm.alarm" if n % 3 == 1 else "alarm.ok"
            event = dataclasses.replace(event_of(kind, run, f"a{n}"), time=at)
        run = decide(run, event).run
        assert sum(entry_bytes(e) for e in run.history) <= HISTORY_BUDGET_BYTES + entry_bytes(run.history[-1])
    assert all(len(e.reason) <= MAX_REASON_CHARS and len(e.actor or "") <= 512 for e in run.history)
    assert run.history[0] == first and run.history[-1].event_id == "a2999"
    started = [e.event_id for e in run.history if e.commands == ("StartChildRun",)]
    assert started[-2:] == ["r2997", "a2998"]


def test_a_deployed_run_stops_only_when_asked_to_stop_serving() -> None:
    """Stopping a deployed run deletes the project's endpoint: never by a plain stop."""
    run = make_run(S.DEPLOYED, stage="dev")
    plain = decide(run, StopRequested(event_id="s1", time=T0, run_id=RUN_ID))
    assert not plain.changed and plain.run.state is S.DEPLOYED
    assert "asks to stop serving (stop_serving), which deletes the endpoint" in plain.note
    asked = decide(run, StopRequested(event_id="s2", time=T0, run_id=RUN_ID, stop_serving=True))
    assert asked.run.state is S.STOPPED
    assert asked.commands == (DeleteEndpoint(RUN_ID, "tl-dev-demo"),)
