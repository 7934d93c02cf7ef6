"""Deterministic names for runs and the AWS resources a run creates.

Re-executing a command must find the resource it created the first time
(``ResourceInUse``), so every name is derived, never random: stage + run id + step +
attempt. SageMaker names must match ``^[a-zA-Z0-9](-*[a-zA-Z0-9])*$``; tuning job names
are limited to 32 characters, every other job name to 63.

Every name starts with its stage's prefix, ``tl-<stage>-`` (``tl-dev-…``): two stages in
one account and region never share a resource, and each stage's policies allow only names
with its own prefix. A run stored without a stage (made before stages were in names)
keeps the names it started with, ``tl-…`` (``stage=""``); the code that ships passes its
stage to every call here (a test reads the source to make sure).
"""

from __future__ import annotations

import base64
import hashlib
import re

RUN_ID_LENGTH = 12
RUN_ID_RE = re.compile(rf"^[a-z2-7]{{{RUN_ID_LENGTH}}}$")
PROJECT_NAME_RE = re.compile(r"^[a-z0-9](-?[a-z0-9])*$")
PROJECT_NAME_MAX = 24
# A stage's name is in every name it makes: short, so a tuning job's name fits 32 characters.
STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
SAGEMAKER_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_STAGE = r"(?:(?P<stage>[a-z][a-z0-9]{0,7})-)?"
_RUN_PREFIX_RE = re.compile(rf"^tl-{_STAGE}(?P<run_id>[a-z2-7]{{{RUN_ID_LENGTH}}})-")
_JOB_NAME_RE = re.compile(rf"^tl-{_STAGE}(?P<run_id>[a-z2-7]{{{RUN_ID_LENGTH}}})-(?P<step>[a-z]+)-(?P<attempt>\d+)")


def prefix(stage: str) -> str:
    """``tl-<stage>-``: what every name the stage makes starts with (``tl-`` for a run
    stored without a stage)."""
    if stage and not STAGE_NAME_RE.match(stage):
        raise ValueError(f"stage {stage!r} is not a lower-case letter followed by up to 7 letters or digits")
    return f"tl-{stage}-" if stage else "tl-"


def derive_id(*parts: str) -> str:
    """A run id that is a pure function of ``parts`` (idempotency keys, child runs)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:RUN_ID_LENGTH]


def job_name(run_id: str, step: str, attempt: int = 1, *, stage: str = "") -> str:
    name = f"{prefix(stage)}{run_id}-{step}-{attempt}"
    limit = 32 if step == "tune" else 63
    if len(name) > limit or not SAGEMAKER_NAME_RE.match(name):
        raise ValueError(f"cannot build a SageMaker name from {run_id!r}, {step!r}, {attempt}")
    return name


def endpoint_name(project: str, *, stage: str = "") -> str:
    """One endpoint per project: later models replace earlier ones on it (blue/green).
    The project's model package group has the same name."""
    return f"{prefix(stage)}{project}"


def run_id_from_name(name: str) -> str | None:
    """The run id inside any name tuneloop made (jobs, alarms, endpoint configs)."""
    match = _RUN_PREFIX_RE.match(name or "")
    return match["run_id"] if match else None


def parse_job_name(name: str) -> tuple[str, str, int] | None:
    """(run id, step, attempt) from a name tuneloop made, or None for foreign names.

    Also matches the training jobs a tuning job spawns: ``<tuning job>-003-1a2b3c4d``.
    """
    match = _JOB_NAME_RE.match(name or "")
    if not match:
        return None
    return match["run_id"], match["step"], int(match["attempt"])


def drift_alarm_name(run_id: str, metric: str, *, stage: str = "") -> str:
    return f"{prefix(stage)}{run_id}-drift-{metric.replace('_', '-')}"


def quality_alarm_name(run_id: str, metric: str, *, stage: str = "") -> str:
    return f"{prefix(stage)}{run_id}-quality-{metric.replace('_', '-')}"


def monitored(alarm_name: str) -> str:
    """``drift in prediction_psi`` for ``tl-<run>-drift-prediction-psi``: what an alarm watches."""
    for kind in ("drift", "quality"):
        head, found, metric = alarm_name.partition(f"-{kind}-")
        if found and head.startswith("tl-"):
            return f"{kind} in {metric.replace('-', '_')}"
    return alarm_name


def is_monitoring_alarm_of(alarm_name: str, run_id: str) -> bool:
    """A drift or production-quality alarm of this run: its ALARM may start a retraining run."""
    match = _RUN_PREFIX_RE.match(alarm_name or "")
    if not match or match["run_id"] != run_id:
        return False
    return alarm_name[match.end() :].startswith(("drift-", "quality-"))
