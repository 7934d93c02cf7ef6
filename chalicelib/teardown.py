"""Deleting a project: everything its runs made that costs or acts, by the names they made.

The endpoint (billed by the hour) and its scaling target, every run's endpoint configs,
models and alarms (drift, quality, rollback); the registered model versions and their
group only when asked. What is already gone counts as deleted: a repeat finds nothing
left. Each call's answer is recorded in the inventory the caller gets back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from .domain import names
from .domain.run import Run
from .domain.states import RunState

VARIANT = "AllTraffic"


@dataclass
class Inventory:
    deleted: dict[str, list[str]] = field(default_factory=dict)
    kept: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, name: str, deleted: bool = True) -> None:
        (self.deleted if deleted else self.kept).setdefault(kind, []).append(name)

    def as_dict(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "kept": self.kept}


def _gone(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return code in ("ResourceNotFound", "ObjectNotFoundException", "ResourceNotFoundException") or (
        code == "ValidationException"
        and any(words in message for words in ("could not find", "does not exist", "no scalable target"))
    )


class ProjectTeardown:
    def __init__(self, sagemaker: Any, cloudwatch: Any, autoscaling: Any, stage: str) -> None:
        self._sagemaker = sagemaker
        self._cloudwatch = cloudwatch
        self._autoscaling = autoscaling
        self._stage = stage

    def _delete(self, inventory: Inventory, kind: str, name: str, call: Any, **request: Any) -> None:
        try:
            call(**request)
        except ClientError as exc:
            if not _gone(exc):
                raise
            return
        inventory.add(kind, name)

    def tear_down(self, project: str, runs: Sequence[Run], delete_models: bool) -> dict[str, Any]:
        inventory = Inventory()
        endpoint = names.endpoint_name(project, stage=self._stage)
        resource = f"endpoint/{endpoint}/variant/{VARIANT}"
        dimension = "sagemaker:variant:DesiredInstanceCount"
        # Looked up first: deregistering a target that is not there is denied (the policy
        # reads the target's stage tag, and a missing target has none), not "not found".
        found = self._autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource],
                                                            ScalableDimension=dimension)  # fmt: skip
        if found.get("ScalableTargets"):
            self._delete(inventory, "scaling_targets", resource, self._autoscaling.deregister_scalable_target,
                         ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=dimension)  # fmt: skip
        self._delete(inventory, "endpoints", endpoint, self._sagemaker.delete_endpoint, EndpointName=endpoint)
        # Only a run that deployed (or ran a batch transform) made a model, a config, alarms.
        served = [r for r in runs if any(h.to_state in (RunState.DEPLOYING, RunState.TRANSFORMING) for h in r.history)]
        for run in served:
            config = names.job_name(run.run_id, "config", stage=run.stage)
            self._delete(inventory, "endpoint_configs", config, self._sagemaker.delete_endpoint_config,
                         EndpointConfigName=config)  # fmt: skip
            model = names.job_name(run.run_id, "model", stage=run.stage)
            self._delete(inventory, "models", model, self._sagemaker.delete_model, ModelName=model)
            alarms = []
            paginator = self._cloudwatch.get_paginator("describe_alarms")
            for page in paginator.paginate(AlarmNamePrefix=f"{names.prefix(run.stage)}{run.run_id}-"):
                alarms += [a["AlarmName"] for a in page.get("MetricAlarms", [])]
            for start in range(0, len(alarms), 100):  # DeleteAlarms takes 100 names at most
                self._cloudwatch.delete_alarms(AlarmNames=alarms[start : start + 100])
            for alarm in alarms:
                inventory.add("alarms", alarm)
        self._model_packages(inventory, endpoint, delete_models)
        return inventory.as_dict()

    def _model_packages(self, inventory: Inventory, group: str, delete_models: bool) -> None:
        packages: list[str] = []
        try:
            for page in self._sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group):
                packages += [p["ModelPackageArn"] for p in page.get("ModelPackageSummaryList", [])]
        except ClientError as exc:
            if not _gone(exc):
                raise
        if not delete_models:
            for arn in packages:
                inventory.add("model_packages", arn, deleted=False)
            return
        for arn in packages:
            self._delete(inventory, "model_packages", arn, self._sagemaker.delete_model_package, ModelPackageName=arn)
        self._delete(inventory, "model_package_groups", group, self._sagemaker.delete_model_package_group,
                     ModelPackageGroupName=group)  # fmt: skip
