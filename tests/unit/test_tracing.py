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


def _patched_in(env: dict[str, str]) -> str:
    import os
    import subprocess
    import sys

    probe = (
        "import chalicelib.observability as o, botocore.client as c; "
        "print(o.tracer.disabled, type(c.BaseClient.__dict__['_make_api_call']).__name__)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_XRAY", "LAMBDA_TASK_ROOT", "AWS_CHALICE"))}
    result = subprocess.run(
        [sys.executable, "-c", probe], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_in_lambda_every_aws_call_is_traced() -> None:
    # In Lambda the tracer patches botocore, so boto3 and PynamoDB calls become subsegments.
    assert (
        _patched_in({"LAMBDA_TASK_ROOT": "/var/task", "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR"})
        == "False FunctionWrapper"
    )
    assert _patched_in({}) == "True function"
