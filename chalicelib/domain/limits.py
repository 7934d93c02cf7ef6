"""What one stage lets a project spend.

A project's config is checked against its stage's limits when it is saved and again when
a run starts (a limit tightened since is a 400 that says what to fix), so a caller cannot
ask for 64 × ml.p5.48xlarge, a 16 TB volume or a 28-day job. The Lambda role's IAM
conditions (``sagemaker:InstanceTypes``, ``sagemaker:MaxRuntimeInSeconds``) hold the
same values, so a bug in the app cannot exceed them either; a test keeps the two equal.

The limits come from ``TUNELOOP_LIMIT_*`` environment variables, set per stage in
``.chalice/config.json``. Unset, a limit is AWS's own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from typing import Any

from .project import ConfigError

# The active-run limits when a stage sets none: nothing is counted.
UNLIMITED_ACTIVE_RUNS = 10000

# An IAM StringLike pattern and fnmatch agree on these: letters, digits, '.', '-', '*', '?'.
_PATTERN_RE = re.compile(r"^ml\.[a-z0-9.*?-]+$")


@dataclass(frozen=True)
class Limits:
    stage: str = "local"
    # Instance types a job, endpoint or transform may use (``*`` matches any run of characters).
    instance_types: tuple[str, ...] = ("ml.*",)
    max_instance_count: int = 64
    max_volume_gb: int = 16384
    max_runtime_s: int = 28 * 86400
    max_tuning_jobs: int = 500
    max_parallel_jobs: int = 100
    max_endpoint_instances: int = 100
    max_retrains_per_day: int = 100
    # Drift checks asked for by hand (POST /projects/{name}/drift-check), per project;
    # unset, one a second (the local cloud's demo forces two in a row).
    max_drift_checks_per_hour: int = 3600
    # Runs on their way (preparing to transforming) at once, per project and on the stage:
    # past either, a new run is refused (a dropped dataset is recorded as refused, with why).
    # Retraining runs are bounded by max_retrains_per_day and one at a time per project.
    max_active_runs_per_project: int = UNLIMITED_ACTIVE_RUNS
    max_active_runs: int = UNLIMITED_ACTIVE_RUNS
    # What the stage may spend in a calendar month (USD, list prices); past it new runs are
    # refused with the figures. 0: no budget.
    monthly_budget_usd: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str], stage: str = "local") -> Limits:
        values: dict[str, Any] = {"stage": stage}
        for field in fields(cls):
            if field.name == "stage":
                continue
            raw = env.get(f"TUNELOOP_LIMIT_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            if field.name == "instance_types":
                patterns = tuple(part.strip() for part in raw.split(",") if part.strip())
                bad = [p for p in patterns if not _PATTERN_RE.match(p)]
                if not patterns or bad:
                    raise ValueError(f"TUNELOOP_LIMIT_INSTANCE_TYPES: {bad or raw!r} are not ml.* instance patterns")
                values[field.name] = patterns
            else:
                if not raw.isdigit() or int(raw) < 1:
                    raise ValueError(f"TUNELOOP_LIMIT_{field.name.upper()}={raw!r} is not a positive integer")
                values[field.name] = int(raw)
        return cls(**values)

    def allows(self, instance_type: str) -> bool:
        return any(fnmatchcase(instance_type, pattern) for pattern in self.instance_types)

    def _instance(self, field: str, instance_type: str) -> None:
        if not self.allows(instance_type):
            raise ConfigError(
                field,
                f"{instance_type!r} is not allowed on stage {self.stage} (allowed: {', '.join(self.instance_types)})",
            )

    def _at_most(self, field: str, value: int, limit: int, what: str) -> None:
        if value > limit:
            raise ConfigError(field, f"{value} is over stage {self.stage}'s limit of {limit} {what}")

    def check(self, config: Mapping[str, Any]) -> None:
        """Raise ConfigError naming the first field of a normalised config over a limit."""
        training = config["training"]
        self._instance("training.instance_type", training["instance_type"])
        self._at_most("training.instance_count", training["instance_count"], self.max_instance_count, "instances")
        self._at_most("training.volume_size_gb", training["volume_size_gb"], self.max_volume_gb, "GB")
        self._at_most("training.max_runtime_s", training["max_runtime_s"], self.max_runtime_s, "seconds")
        tuning = config.get("tuning")
        if tuning:
            self._at_most("tuning.max_jobs", tuning["max_jobs"], self.max_tuning_jobs, "training jobs")
            self._at_most(
                "tuning.max_parallel_jobs", tuning["max_parallel_jobs"], self.max_parallel_jobs, "parallel jobs"
            )
        evaluation = config.get("evaluation") or {}
        if evaluation.get("instance_type"):
            self._instance("evaluation.instance_type", evaluation["instance_type"])
        if evaluation.get("max_runtime_s"):
            self._at_most("evaluation.max_runtime_s", evaluation["max_runtime_s"], self.max_runtime_s, "seconds")
        deployment = config["deployment"]
        if deployment["mode"] != "none" and deployment["serverless_memory_mb"] is None:
            self._instance("deployment.instance_type", deployment["instance_type"])
            self._at_most(
                "deployment.max_instances", deployment["max_instances"], self.max_endpoint_instances, "instances"
            )
        retrain = config["retrain"]
        self._at_most("retrain.max_per_day", retrain["max_per_day"], self.max_retrains_per_day, "retraining runs")

    @property
    def drift_slot_s(self) -> int:
        """Forced drift checks of one project share a slot this long: one check per slot."""
        return max(1, 3600 // self.max_drift_checks_per_hour)
