"""Settings from the environment, read once and lazily, frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

from . import spec
from .domain.limits import Limits
from .domain.names import STAGE_NAME_RE


class SettingsError(spec.TuneloopError, RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    stage: str
    region: str
    bucket: str
    projects_table: str
    runs_table: str
    dataset_prefix: str = "datasets/"
    # Largest JSON body the API accepts; API Gateway's own limit is 10 MB.
    max_body_bytes: int = 256 * 1024
    # An outbox older than this is re-executed by the reconciler.
    outbox_stale_s: int = 60
    # The reconciler's sweeper: a run that has waited this long on a resource gets it
    # Described; at most sweep_batch runs and sweep_budget_s seconds per tick.
    sweep_grace_s: int = 300
    sweep_batch: int = 25
    sweep_budget_s: float = 30.0
    # SageMaker jobs (see `tuneloop configure`): execution role, images resolved for the
    # region at configure time, and where the training code version lives in S3.
    role_arn: str = ""
    training_image: str = ""
    training_image_cpu: str = ""
    processing_image: str = ""
    inference_image: str = ""
    # The inference image's GPU build: where a model is evaluated on a GPU instance.
    inference_image_gpu: str = ""
    # Where a causal LM is served: SageMaker's PyTorch inference image, whose model server
    # (TorchServe) streams an answer as it is generated. Unset: the inference image.
    streaming_image: str = ""
    code_uri: str = ""
    processing_instance_type: str = "ml.m5.large"
    kms_key_id: str = ""
    # The stage's SNS topic for notices (the stack's NotificationsTopic); unset: kept only.
    notices_topic_arn: str = ""
    # Prices the shipped table lacks (another region, another instance type) are asked of
    # the AWS Price List API and cached in the bucket; off, such cost lines stay unpriced.
    price_list_api: bool = False
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    # The local cloud: jobs reach no model hub, so a project's base model must be one
    # they load offline (checked when the project is created).
    offline_models: bool = False
    # What a project may spend on this stage (instance types, counts, runtime, ...).
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        missing = [name for name in ("TUNELOOP_BUCKET",) if not env.get(name)]
        if missing:
            raise SettingsError(f"missing environment variable(s): {', '.join(missing)}")
        stage = env.get("TUNELOOP_STAGE", "dev")
        if not STAGE_NAME_RE.match(stage):
            raise SettingsError(
                f"TUNELOOP_STAGE={stage[:40]!r}: a stage is a lower-case letter, then up to 7 letters or digits "
                "(it starts the name of everything the stage makes)"
            )
        try:
            limits = Limits.from_env(env, stage)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        processing = env.get("TUNELOOP_PROCESSING_INSTANCE_TYPE", "ml.m5.large")
        if not limits.allows(processing):
            raise SettingsError(
                f"TUNELOOP_PROCESSING_INSTANCE_TYPE={processing} is outside the stage's instance limits"
            )
        return cls(
            stage=stage,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            bucket=env["TUNELOOP_BUCKET"],
            projects_table=env.get("TUNELOOP_PROJECTS_TABLE", f"tuneloop-{stage}-projects"),
            runs_table=env.get("TUNELOOP_RUNS_TABLE", f"tuneloop-{stage}-runs"),
            dataset_prefix=env.get("TUNELOOP_DATASET_PREFIX", "datasets/"),
            max_body_bytes=int(env.get("TUNELOOP_MAX_BODY_BYTES", str(256 * 1024))),
            outbox_stale_s=int(env.get("TUNELOOP_OUTBOX_STALE_S", "60")),
            sweep_grace_s=int(env.get("TUNELOOP_SWEEP_GRACE_S", "300")),
            sweep_batch=int(env.get("TUNELOOP_SWEEP_BATCH", "25")),
            sweep_budget_s=float(env.get("TUNELOOP_SWEEP_BUDGET_S", "30")),
            role_arn=env.get("TUNELOOP_SAGEMAKER_ROLE_ARN", ""),
            training_image=env.get("TUNELOOP_TRAINING_IMAGE", ""),
            training_image_cpu=env.get("TUNELOOP_TRAINING_IMAGE_CPU", ""),
            processing_image=env.get("TUNELOOP_PROCESSING_IMAGE", ""),
            inference_image=env.get("TUNELOOP_INFERENCE_IMAGE", ""),
            inference_image_gpu=env.get("TUNELOOP_INFERENCE_IMAGE_GPU", ""),
            streaming_image=env.get("TUNELOOP_STREAMING_IMAGE", ""),
            code_uri=env.get("TUNELOOP_CODE_URI", "").rstrip("/"),
            processing_instance_type=processing,
            kms_key_id=env.get("TUNELOOP_KMS_KEY_ID", ""),
            notices_topic_arn=env.get("TUNELOOP_NOTICES_TOPIC_ARN", ""),
            price_list_api=env.get("TUNELOOP_PRICE_LIST_API", "") == "1",
            subnets=_split(env.get("TUNELOOP_SUBNETS", "")),
            security_groups=_split(env.get("TUNELOOP_SECURITY_GROUPS", "")),
            offline_models=env.get("TUNELOOP_OFFLINE_MODELS", "") == "1",
            limits=limits,
        )


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()
