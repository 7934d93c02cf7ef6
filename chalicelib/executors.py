"""Executors: each command type is carried out by exactly one executor.

Executors must be idempotent: a command can run again after a crash or from the
reconciler. AWS resource names are deterministic, so a repeat finds ResourceInUse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from . import spec
from .domain.commands import (
    Command,
    ConfigureAutoscaling,
    CreateDriftAlarms,
    DeleteEndpoint,
    DeployEndpoint,
    DescribeTuningJob,
    LoadEvaluation,
    RegisterModelPackage,
    RetireDeployment,
    StartChildRun,
    StartProcessingJob,
    StartTrainingJob,
    StartTransformJob,
    StartTuningJob,
    StopJob,
    SupersedePrevious,
    UpdateModelPackageApproval,
)
from .domain.events import DomainEvent
from .domain.run import Run


class PermanentCommandError(spec.TuneloopError):
    """The command can never succeed as issued (e.g. a ValidationException); fail the run."""


@dataclass(frozen=True)
class Outcome:
    done: bool
    note: str = ""
    # Events the command produced that must be applied next (e.g. loaded metrics).
    events: tuple[DomainEvent, ...] = ()


class RunPort(Protocol):
    """What internal executors need from the service."""

    def supersede_deployed(self, project: str, by_run_id: str) -> int: ...

    def start_child_run(self, parent_run_id: str, child_run_id: str, reason: str) -> str:
        """Start the child run; returns the note for the outbox (the child, or why none)."""


Executor = Callable[[Command, Run], Outcome]


class SageMakerPort(Protocol):
    def start_processing_job(self, command: Command, run: Run) -> Outcome: ...

    def start_training_job(self, command: Command, run: Run) -> Outcome: ...

    def stop_job(self, command: Command, run: Run) -> Outcome: ...

    def start_tuning_job(self, command: Command, run: Run) -> Outcome: ...

    def describe_tuning_job(self, command: Command, run: Run) -> Outcome: ...

    def register_model_package(self, command: Command, run: Run) -> Outcome: ...

    def update_model_package_approval(self, command: Command, run: Run) -> Outcome: ...


class DeploymentPort(Protocol):
    def deploy_endpoint(self, command: Command, run: Run) -> Outcome: ...

    def start_transform_job(self, command: Command, run: Run) -> Outcome: ...

    def configure_autoscaling(self, command: Command, run: Run) -> Outcome: ...

    def create_drift_alarms(self, command: Command, run: Run) -> Outcome: ...

    def delete_endpoint(self, command: Command, run: Run) -> Outcome: ...

    def retire_deployment(self, command: Command, run: Run) -> Outcome: ...


class EvaluationPort(Protocol):
    def load(self, command: Command, run: Run) -> Outcome: ...


def not_yet_available(issue: str) -> Executor:
    """For commands whose AWS executor is not built yet: keep the command pending.

    Never pretends the work happened: the command stays in the run's outbox, visible in
    GET /runs/{id}, and the reconciler leaves it there.
    """

    def execute(command: Command, run: Run) -> Outcome:
        return Outcome(done=False, note=f"{type(command).__name__} kept pending: {issue}")

    return execute


class Executors:
    def __init__(self, table: Mapping[type[Command], Executor]) -> None:
        self._table = dict(table)

    def execute(self, command: Command, run: Run) -> Outcome:
        executor = self._table.get(type(command))
        if executor is None:
            raise PermanentCommandError(f"no executor registered for {type(command).__name__}")
        return executor(command, run)

    @classmethod
    def default(
        cls,
        port: RunPort,
        sagemaker: SageMakerPort | None = None,
        evaluation: EvaluationPort | None = None,
        deployment: DeploymentPort | None = None,
    ) -> Executors:
        def supersede(command: Command, run: Run) -> Outcome:
            assert isinstance(command, SupersedePrevious)
            count = port.supersede_deployed(command.project, command.run_id)
            return Outcome(done=True, note=f"superseded {count} earlier deployed run(s)")

        def child_run(command: Command, run: Run) -> Outcome:
            assert isinstance(command, StartChildRun)
            return Outcome(done=True, note=port.start_child_run(command.run_id, command.child_run_id, command.reason))

        unconfigured = not_yet_available(
            "SageMaker is not configured: set TUNELOOP_SAGEMAKER_ROLE_ARN (tuneloop configure)"
        )
        return cls(
            {
                StartProcessingJob: sagemaker.start_processing_job if sagemaker else unconfigured,
                StartTrainingJob: sagemaker.start_training_job if sagemaker else unconfigured,
                StartTuningJob: sagemaker.start_tuning_job if sagemaker else unconfigured,
                DescribeTuningJob: sagemaker.describe_tuning_job if sagemaker else unconfigured,
                StopJob: sagemaker.stop_job if sagemaker else unconfigured,
                StartTransformJob: deployment.start_transform_job if deployment else unconfigured,
                LoadEvaluation: evaluation.load if evaluation else unconfigured,
                RegisterModelPackage: sagemaker.register_model_package if sagemaker else unconfigured,
                UpdateModelPackageApproval: sagemaker.update_model_package_approval if sagemaker else unconfigured,
                DeployEndpoint: deployment.deploy_endpoint if deployment else unconfigured,
                ConfigureAutoscaling: deployment.configure_autoscaling if deployment else unconfigured,
                CreateDriftAlarms: deployment.create_drift_alarms if deployment else unconfigured,
                DeleteEndpoint: deployment.delete_endpoint if deployment else unconfigured,
                RetireDeployment: deployment.retire_deployment if deployment else unconfigured,
                SupersedePrevious: supersede,
                StartChildRun: child_run,
            }
        )
