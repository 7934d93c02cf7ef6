"""The one small object that carries the app's dependencies, built lazily.

Handlers call ``get()``; tests call ``override()`` with their own wiring.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import Settings, settings
from .service import RunService

if TYPE_CHECKING:
    from .budget import StageBudget
    from .endpoints import EndpointViews
    from .feedback import FeedbackInbox
    from .notices import Notices
    from .refusals import RefusedUploads
    from .reports import RunReports
    from .teardown import ProjectTeardown


@dataclass(frozen=True)
class Deps:
    settings: Settings
    service: RunService
    # Trials and evaluation links for GET /runs/{id}; None until SageMaker is configured.
    reports: RunReports | None = None
    # Labels for captured requests (POST /projects/{name}/feedback, feedback/ drops).
    feedback: FeedbackInbox | None = None
    # The endpoint's status, traffic, monitoring metrics and alarms; None until SageMaker is configured.
    endpoints: EndpointViews | None = None
    # Uploads that started nothing (a drop for an unknown project), for GET /drops.
    refused: RefusedUploads | None = None
    # What DELETE /projects/{name} deletes of a project's runs; None until SageMaker is configured.
    teardown: ProjectTeardown | None = None
    # The stage's notices (GET /notices; its SNS topic).
    notices: Notices | None = None
    # The month's spend against the stage's budget (GET /spend); None until SageMaker is configured.
    budget: StageBudget | None = None


_lock = threading.Lock()
_deps: Deps | None = None


class LazyClient:
    """A boto3 client made on first use: most invocations never call SageMaker."""

    def __init__(self, service: str, **options: Any) -> None:
        self._service = service
        self._options = options
        self._client: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3

                    self._client = boto3.client(self._service, **self._options)
        return getattr(self._client, name)


def build(
    config: Settings,
    sagemaker_client: Any = None,
    s3_client: Any = None,
    cloudwatch_client: Any = None,
    autoscaling_client: Any = None,
) -> Deps:
    from . import models
    from .budget import StageBudget
    from .deployment import DeploymentExecutors
    from .endpoints import EndpointViews
    from .feedback import FeedbackInbox, NewDataCounter
    from .notices import Notices
    from .pricing import API_REGION, SHIPPED, PriceBook, PriceListApi
    from .refusals import RefusedUploads
    from .reports import S3_CONFIG, RunReports
    from .sagemaker import EvaluationLoader, SageMakerExecutors
    from .store import ProjectRepository, RunRepository
    from .sweeper import ResourceProbe
    from .teardown import ProjectTeardown

    models.bind(config)
    runs = RunRepository(models.RunModel)
    s3 = s3_client or LazyClient("s3", config=S3_CONFIG)
    sagemaker = (
        SageMakerExecutors(
            sagemaker_client or LazyClient("sagemaker"),
            config,
            champion=runs.champion,
            s3=s3,
            failed_datasets=runs.failed_datasets,
        )
        if config.role_arn
        else None
    )
    evaluation = EvaluationLoader(s3, config) if config.role_arn else None
    service = RunService(
        ProjectRepository(models.ProjectModel),
        runs,
        bucket=config.bucket,
        outbox_stale_s=config.outbox_stale_s,
        dataset_prefix=config.dataset_prefix,
        # Until SageMaker is configured, job commands wait in the outbox (the reconciler
        # runs them once it is): nothing fails, nothing is lost.
        sagemaker=sagemaker,
        evaluation=evaluation,
        deployment=DeploymentExecutors(
            sagemaker_client or LazyClient("sagemaker"),
            cloudwatch_client or LazyClient("cloudwatch"),
            autoscaling_client or LazyClient("application-autoscaling"),
            config,
        )
        if config.role_arn
        else None,
        probe=ResourceProbe(sagemaker_client or LazyClient("sagemaker"), evaluation) if config.role_arn else None,
        sweep_grace_s=config.sweep_grace_s,
        sweep_batch=config.sweep_batch,
        sweep_budget_s=config.sweep_budget_s,
        offline_models=config.offline_models,
        limits=config.limits,
        new_data=NewDataCounter(s3, config.bucket, config.dataset_prefix) if config.bucket else None,
        stage=config.stage,
    )
    book = SHIPPED
    if config.price_list_api and config.bucket:
        book = PriceBook(PriceListApi(LazyClient("pricing", region_name=API_REGION), s3, config.bucket, service.clock))
    reports = RunReports(s3, sagemaker, config, book) if sagemaker else None
    feedback = FeedbackInbox(s3, config.bucket, service.clock) if config.bucket else None
    cloudwatch = cloudwatch_client or LazyClient("cloudwatch")
    endpoints = EndpointViews(sagemaker_client or LazyClient("sagemaker"), cloudwatch, service.clock, config.stage)
    refused = RefusedUploads(s3, config.bucket, service.clock) if config.bucket else None
    notices = Notices(s3, config.bucket, LazyClient("sns"), config.notices_topic_arn, service.clock, config.stage) \
        if config.bucket else None  # fmt: skip
    service.notices = notices.tell if notices else None
    budget = None
    if reports is not None:
        budget = StageBudget(service, reports.cost, config.region, config.stage, config.limits.monthly_budget_usd,
                             service.clock, crossed=notices.tell_budget if notices else None, book=book)  # fmt: skip
        service.budget = budget.refusal if config.limits.monthly_budget_usd else None
    teardown = ProjectTeardown(sagemaker_client or LazyClient("sagemaker"), cloudwatch,
                               autoscaling_client or LazyClient("application-autoscaling"), config.stage)  # fmt: skip
    return Deps(settings=config, service=service, reports=reports, feedback=feedback,
                endpoints=endpoints if config.role_arn else None, refused=refused,
                teardown=teardown if config.role_arn else None, notices=notices, budget=budget)  # fmt: skip


def get() -> Deps:
    global _deps
    if _deps is None:
        with _lock:
            if _deps is None:
                _deps = build(settings())
    return _deps


def override(deps: Deps | None) -> None:
    global _deps
    _deps = deps
