"""PynamoDB models: projects and runs (the CloudFormation in infra/ mirrors these)."""

from __future__ import annotations

from pynamodb.attributes import (
    JSONAttribute,
    ListAttribute,
    MapAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
    VersionAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model

from .config import Settings

# The reconciler's index has one constant hash key: it only ever holds runs whose
# outbox still has commands to run (a sparse index), a handful at a time.
OUTBOX_PENDING = "pending"


class ProjectModel(Model):
    class Meta:
        table_name = "tuneloop-dev-projects"
        billing_mode = "PAY_PER_REQUEST"
        max_pool_connections = 32  # the API and the router run handlers on many threads

    name = UnicodeAttribute(hash_key=True)
    config = JSONAttribute()
    created_at = UTCDateTimeAttribute()
    updated_at = UTCDateTimeAttribute()
    version = VersionAttribute()
    # Who last created or changed the config (the audit trail; older items have none).
    updated_by = UnicodeAttribute(null=True)
    # The project's runs on their way (run id -> when its slot was claimed), claimed one at
    # a time with a conditional update so that concurrent drops cannot pass the per-project
    # cap together (store.claim_slot).
    active_runs = MapAttribute(null=True)  # type: ignore[var-annotated]


class ByProjectIndex(GlobalSecondaryIndex["RunModel"]):
    """Runs of a project, newest first (query with scan_index_forward=False)."""

    class Meta:
        index_name = "by-project"
        projection = AllProjection()

    project = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class ByStateIndex(GlobalSecondaryIndex["RunModel"]):
    class Meta:
        index_name = "by-state"
        projection = AllProjection()

    state = UnicodeAttribute(hash_key=True)
    updated_at = UTCDateTimeAttribute(range_key=True)


class ByAwaitingIndex(GlobalSecondaryIndex["RunModel"]):
    """Find the run waiting on a SageMaker job or endpoint by its name (sparse)."""

    class Meta:
        index_name = "by-awaiting"
        projection = KeysOnlyProjection()

    awaiting = UnicodeAttribute(hash_key=True)


class ByOutboxIndex(GlobalSecondaryIndex["RunModel"]):
    """Runs with commands still to execute, oldest outbox first (sparse)."""

    class Meta:
        index_name = "by-outbox"
        projection = KeysOnlyProjection()

    outbox_pending = UnicodeAttribute(hash_key=True)
    outbox_since = UTCDateTimeAttribute(range_key=True)


class HistoryAttribute(MapAttribute[str, object]):
    event_id = UnicodeAttribute()
    event_kind = UnicodeAttribute()
    from_state = UnicodeAttribute(attr_name="from")
    to_state = UnicodeAttribute(attr_name="to")
    reason = UnicodeAttribute(default="")
    time = UTCDateTimeAttribute()
    commands = ListAttribute(of=UnicodeAttribute, default=list)
    awaits = UnicodeAttribute(null=True)
    key = UnicodeAttribute(null=True)
    actor = UnicodeAttribute(null=True)


class RunModel(Model):
    class Meta:
        table_name = "tuneloop-dev-runs"
        billing_mode = "PAY_PER_REQUEST"
        max_pool_connections = 32  # the API and the router run handlers on many threads

    run_id = UnicodeAttribute(hash_key=True)
    project = UnicodeAttribute()
    state = UnicodeAttribute()
    version = VersionAttribute()
    config = JSONAttribute()
    dataset_uri = UnicodeAttribute()
    created_at = UTCDateTimeAttribute()
    updated_at = UTCDateTimeAttribute()
    parent_run_id = UnicodeAttribute(null=True)
    awaiting = UnicodeAttribute(null=True)
    model_source = UnicodeAttribute(null=True)
    package_arn = UnicodeAttribute(null=True)
    metrics = JSONAttribute(default=dict)
    waiting_for_data = ListAttribute(of=UnicodeAttribute, default=list)
    stage = UnicodeAttribute(null=True)
    history = ListAttribute(of=HistoryAttribute, default=list)
    # Commands of the last decision that have not run yet, as [{command, status, note}].
    outbox = JSONAttribute(null=True)
    outbox_event_id = UnicodeAttribute(null=True)
    outbox_pending = UnicodeAttribute(null=True)
    outbox_since = UTCDateTimeAttribute(null=True)
    # When the reconciler's sweeper last asked about the run's resource (not versioned: it
    # changes nothing of the run, and the next commit drops it).
    swept_at = UTCDateTimeAttribute(null=True)

    by_project = ByProjectIndex()
    by_state = ByStateIndex()
    by_awaiting = ByAwaitingIndex()
    by_outbox = ByOutboxIndex()


def bind(settings: Settings) -> None:
    """Point the models at the stage's tables. Endpoints come from AWS_ENDPOINT_URL_*."""
    for model, table in ((ProjectModel, settings.projects_table), (RunModel, settings.runs_table)):
        if model.Meta.table_name != table or getattr(model.Meta, "region", None) != settings.region:
            model.Meta.table_name = table
            setattr(model.Meta, "region", settings.region)  # noqa: B010 - not declared on Meta
            model._connection = None
