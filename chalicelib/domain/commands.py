"""Commands: every side effect a decision asks for, as a frozen dataclass.

Each command is executed by exactly one executor (``chalicelib.executors``). Commands
are stored in the run's outbox before they run, so they serialise to plain dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .. import spec


@dataclass(frozen=True)
class Command:
    run_id: str

    # Name of the resource the run waits on after this command (a job it starts).
    starts_job: ClassVar[bool] = False

    @property
    def awaits(self) -> str | None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class _StartJob(Command):
    project: str
    job_name: str

    starts_job: ClassVar[bool] = True

    @property
    def awaits(self) -> str:
        return self.job_name


@dataclass(frozen=True)
class StartProcessingJob(_StartJob):
    step: str  # prepare | evaluate
    input_uri: str


@dataclass(frozen=True)
class StartTrainingJob(_StartJob):
    attempt: int
    # Previous attempt whose checkpoints the new job resumes from (spot interruption).
    resume_from: str | None = None


@dataclass(frozen=True)
class StartTuningJob(_StartJob):
    warm_start_from_run: str | None = None


@dataclass(frozen=True)
class DescribeTuningJob(Command):
    """The tuning job's event named no best training job: ask DescribeHyperParameterTuningJob."""

    job_name: str


@dataclass(frozen=True)
class StartTransformJob(_StartJob):
    pass


@dataclass(frozen=True)
class StopJob(Command):
    job_type: str  # processing | training | tuning | transform
    job_name: str


@dataclass(frozen=True)
class LoadEvaluation(Command):
    """Read the evaluation job's metrics and the deployed champion's, feed them back."""

    project: str
    job_name: str


@dataclass(frozen=True)
class RegisterModelPackage(Command):
    project: str
    model_source: str  # training job whose model artifact is registered
    approval_status: str  # Approved | PendingManualApproval

    @property
    def awaits(self) -> str:
        return f"model-package:{self.run_id}"


@dataclass(frozen=True)
class UpdateModelPackageApproval(Command):
    package_arn: str
    approved: bool
    reason: str
    # Who decided (the IAM principal API Gateway verified): the package records it too.
    approver: str | None = None


@dataclass(frozen=True)
class DeployEndpoint(Command):
    project: str
    endpoint_name: str
    model_source: str

    @property
    def awaits(self) -> str:
        return self.endpoint_name


@dataclass(frozen=True)
class ConfigureAutoscaling(Command):
    """Target tracking on the endpoint's invocations per instance (min/max from the config)."""

    project: str
    endpoint_name: str


@dataclass(frozen=True)
class CreateDriftAlarms(Command):
    project: str
    endpoint_name: str


@dataclass(frozen=True)
class SupersedePrevious(Command):
    """Mark the project's earlier deployed runs superseded by this one."""

    project: str


@dataclass(frozen=True)
class StartChildRun(Command):
    """A retraining run on the project's current data, linked to its parent."""

    project: str
    child_run_id: str
    reason: str


@dataclass(frozen=True)
class RetireDeployment(Command):
    """Delete what a run no longer serves with: its model, endpoint config and alarms."""

    project: str


@dataclass(frozen=True)
class DeleteEndpoint(Command):
    endpoint_name: str


COMMAND_TYPES: Mapping[str, type[Command]] = {
    cls.__name__: cls
    for cls in (
        StartProcessingJob,
        StartTrainingJob,
        StartTuningJob,
        DescribeTuningJob,
        StartTransformJob,
        StopJob,
        LoadEvaluation,
        RegisterModelPackage,
        UpdateModelPackageApproval,
        DeployEndpoint,
        ConfigureAutoscaling,
        CreateDriftAlarms,
        SupersedePrevious,
        StartChildRun,
        DeleteEndpoint,
        RetireDeployment,
    )
}


class UnknownCommandError(spec.TuneloopError, ValueError):
    pass


def command_from_dict(data: Mapping[str, Any]) -> Command:
    fields = dict(data)
    type_name = fields.pop("type", None)
    cls = COMMAND_TYPES.get(str(type_name))
    if cls is None:
        raise UnknownCommandError(f"unknown command type {type_name!r}")
    return cls(**fields)
