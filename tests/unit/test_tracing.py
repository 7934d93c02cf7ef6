"""One X-Ray subsegment per transition, annotated with run, project and states."""

from __future__ import annotations

from typing import Any

from chalicelib.observability import tracer, transition_segment


def test_transition_subsegment_is_annotated(recording: Any) -> None:
    assert tracer.provider is not None
    with transition_segment("aaaaaaaaaaaa", "demo", "training", "evaluating", "training_job.completed"):
        pass
    [sub] = [s for s in recording.subsegments if s.name == "transition"]
    assert sub.annotations == {
        "run_id": "aaaaaaaaaaaa",
        "project": "demo",
        "from_state": "training",
        "to_state": "evaluating",
        "event_kind": "training_job.completed",
    }


def test_tracing_is_off_outside_lambda() -> None:
    # No daemon and no Lambda here: the tracer switched itself off, silently.
    assert tracer.disabled is True
