"""Structured JSON logs and X-Ray tracing (Powertools conventions).

The Tracer switches itself off outside Lambda (no daemon there), silently; in Lambda it
patches botocore so every boto3 and PynamoDB call becomes a subsegment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Tracer

SERVICE = "tuneloop"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE, patch_modules=("boto3", "botocore"))


@contextmanager
def transition_segment(run_id: str, project: str, from_state: str, to_state: str, event_kind: str) -> Iterator[Any]:
    """One X-Ray subsegment per transition, annotated so traces can be searched by run."""
    with tracer.provider.in_subsegment("transition") as subsegment:
        subsegment.put_annotation("run_id", run_id)
        subsegment.put_annotation("project", project)
        subsegment.put_annotation("from_state", from_state)
        subsegment.put_annotation("to_state", to_state)
        subsegment.put_annotation("event_kind", event_kind)
        yield subsegment
