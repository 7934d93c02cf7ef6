"""The local Lambda host: the Chalice app behind the local API and the event router.

Started by ``tuneloop up`` as its own process with the local endpoints in its
environment (``AWS_ENDPOINT_URL_*``). The app code is the same that ships to Lambda.
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig

from . import template
from .apiserver import ApiServer
from .cloud import QUEUED_EVENTS, etag_file
from .enforce import Enforcer, sign_as_functions
from .files import write_atomic
from .gateway import credentials_from_env
from .router import EventRouter
from .services import REPO_ROOT
from .sigv4 import EXECUTION_ROLE

log = logging.getLogger("tuneloop.host")


def load_app() -> ModuleType:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("app")


def prepare_bucket(bucket: str, snapshot_dir: Path | None = None) -> None:
    """The bucket, and the S3 snapshot if any, restored before notifications are on: only
    when moto starts empty, never over a bucket that lived through a host restart."""
    s3 = boto3.client("s3")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket in existing:
        return  # moto lived on (the host alone restarted): the bucket is current, the snapshot is not
    s3.create_bucket(Bucket=bucket)
    if snapshot_dir is not None and snapshot_dir.is_dir():
        try:
            etags = json.loads(etag_file(snapshot_dir).read_text())
        except (OSError, ValueError):
            etags = {}
        restored = changed = 0
        for path in sorted(p for p in snapshot_dir.rglob("*") if p.is_file()):
            key = path.relative_to(snapshot_dir).as_posix()
            etag = str(etags.get(key, "")) if isinstance(etags, dict) else ""
            s3.upload_file(str(path), bucket, key, Config=same_parts(etag, path.stat().st_size))
            if etag and s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"') != etag:
                changed += 1
            restored += 1
        log.info("restored %d objects into s3://%s", restored, bucket)
        if changed:
            log.warning("%d restored objects have a new ETag (uploaded in parts of unequal size)", changed)


def same_parts(etag: str, size: int) -> TransferConfig:
    """Upload as the ETag says the object was: one part (an MD5), or N parts ("-N"). The
    ETag of N parts depends on where they split: the part size is taken to be the first
    of the SDKs' and the CLI's usual sizes that gives N parts."""
    tail = etag.rsplit("-", 1)[1] if "-" in etag else ""
    parts = int(tail) if tail.isdigit() else 0
    if parts <= 0:
        return TransferConfig(multipart_threshold=max(size + 1, 2**30), multipart_chunksize=2**28)
    mib = 2**20
    for chunk in (8 * mib, 16 * mib, 5 * mib, 64 * mib, 100 * mib, 256 * mib):
        if -(-size // chunk) == parts:
            break
    else:
        chunk = max(5 * mib, -(-size // parts))
    return TransferConfig(multipart_threshold=1, multipart_chunksize=chunk)


def prepare_tables() -> None:
    """The template's tables, as CloudFormation would create them for this stage."""
    from chalicelib import models
    from chalicelib.config import settings

    config = settings()
    created = template.create_tables_for(config, boto3.client("dynamodb"))
    if created:
        log.info("created from the template: %s", ", ".join(created))
    models.bind(config)


def enable_bucket_events(bucket: str) -> None:
    """From here on every upload becomes an Object Created event, as on AWS."""
    boto3.client("s3").put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )


LOCAL_ROLE = "arn:aws:iam::123456789012:role/tuneloop-local-sagemaker-execution"


def start_sagemaker(home: Path, bucket: str, router: EventRouter) -> Any:
    """The local SageMaker server, and the app's settings that point jobs at it."""
    from .sagemaker import serve

    # SageMaker reads a job's inputs and writes its outputs (and an endpoint's captures)
    # with the execution role: so does the local one.
    role = credentials_from_env().principal(EXECUTION_ROLE)
    s3 = boto3.client("s3", aws_access_key_id=role.access_key, aws_secret_access_key=role.secret_key)
    port = int(os.environ.get("TUNELOOP_SAGEMAKER_PORT", "0"))
    server = serve(home / "sagemaker", s3, router.send, port, cloudwatch=boto3.client("cloudwatch"),
                   enforcer=Enforcer.from_env())  # fmt: skip
    os.environ["AWS_ENDPOINT_URL_SAGEMAKER"] = f"http://127.0.0.1:{server.port}"
    os.environ["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = f"http://127.0.0.1:{server.port}"
    os.environ.setdefault("TUNELOOP_SAGEMAKER_ROLE_ARN", LOCAL_ROLE)
    # Images are what the containers would be on AWS; locally jobs run in this Python.
    os.environ.setdefault("TUNELOOP_TRAINING_IMAGE", "tuneloop-local/huggingface-pytorch-training")
    os.environ.setdefault("TUNELOOP_PROCESSING_IMAGE", "tuneloop-local/pytorch-processing")
    os.environ.setdefault("TUNELOOP_INFERENCE_IMAGE", "tuneloop-local/huggingface-pytorch-inference")
    os.environ.setdefault("TUNELOOP_INFERENCE_IMAGE_GPU", "tuneloop-local/huggingface-pytorch-inference-gpu")
    os.environ.setdefault("TUNELOOP_STREAMING_IMAGE", "tuneloop-local/pytorch-inference")
    # The only code its jobs may run: this version of training/, pinned by its SHA-256.
    # (Uploaded as `deploy` uploads it, with the operator's key: no role may write code/.)
    os.environ["TUNELOOP_CODE_URI"] = server.backend.stage_code(REPO_ROOT / "training", bucket, boto3.client("s3"))
    # The reconciler runs every 30 s here (5 minutes on AWS): ask about a silent run after a minute.
    os.environ.setdefault("TUNELOOP_SWEEP_GRACE_S", "60")
    os.environ.setdefault("TUNELOOP_OFFLINE_MODELS", "1")  # its jobs reach no model hub
    return server


def build_router(app_module: ModuleType, dead_letters: Path | None, dropped: Path | None = None) -> EventRouter:
    """The event router, each handler's rule as the template gives it for this stage. (The
    environment, not the app's settings: those are read once, after start_sagemaker.)"""
    stage = os.environ.get("TUNELOOP_STAGE", "local")
    patterns = template.rule_patterns(app_module.app, template.load(stage, os.environ["TUNELOOP_BUCKET"]))
    drop = os.environ.get("TUNELOOP_DROP_EVENTS")
    router = EventRouter(
        app_module,
        boto3.client("sqs"),
        boto3.client("events"),
        dead_letters,
        drop_pattern=json.loads(drop) if drop else None,
        dropped_path=dropped,
        patterns=patterns,
    )
    router.install()
    return router


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    home = Path(os.environ["TUNELOOP_HOME"])
    token = os.environ.pop("TUNELOOP_API_TOKEN")  # the API's alone: no job or model server inherits it
    port = int(os.environ.get("TUNELOOP_API_PORT", "0"))
    bucket = os.environ["TUNELOOP_BUCKET"]
    if os.environ.get("TUNELOOP_LOCAL_CALL_LOG"):
        from .audit import install

        install(Path(os.environ["TUNELOOP_LOCAL_CALL_LOG"]))
    sign_as_functions(credentials_from_env())  # each handler's calls are its own role's
    for name, value in template.shared_environment().items():  # as the template gives every function
        os.environ.setdefault(name, value)
    app_module = load_app()
    router = build_router(app_module, home / "dead-letters.jsonl", home / "dropped-events.jsonl")
    requeued = router.requeue(home / QUEUED_EVENTS)
    if requeued:
        log.info("queued again %d events saved at the last down", requeued)
    prepare_bucket(bucket, home / "s3")
    # The SageMaker settings go into the environment before the app reads its settings.
    sagemaker = start_sagemaker(home, bucket, router)
    prepare_tables()
    enable_bucket_events(bucket)
    router.start(schedule_interval_s=float(os.environ.get("TUNELOOP_SCHEDULE_INTERVAL_S", "30")))
    # moto keeps alarms but never evaluates them; this does, and emits their events.
    from .alarms import AlarmEvaluator

    alarms = AlarmEvaluator(
        boto3.client("cloudwatch"), router.send, float(os.environ.get("TUNELOOP_ALARM_INTERVAL_S", "10"))
    )
    alarms.start()
    try:
        server = ApiServer(app_module.app, token, port, credentials_from_env())
    except OSError as exc:
        # The port `up` last had (or one it picked) was taken meanwhile: any free one will
        # do, and host.json tells `up` which. A port the user asked for is kept or fails.
        if exc.errno != errno.EADDRINUSE or not port or os.environ.get("TUNELOOP_API_PORT_FIXED") == "1":
            raise
        log.warning("API port %d is taken; listening on a free one", port)
        server = ApiServer(app_module.app, token, 0, credentials_from_env())
    ports = {"api_port": server.port, "sagemaker_port": sagemaker.port, "pid": os.getpid()}
    write_atomic(home / "host.json", json.dumps(ports), mode=0o600)  # appears whole, the owner's alone
    log.info("API on http://127.0.0.1:%d; routes: %s", server.port, [r.name for r in router.routes])

    def shut_down(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        alarms.stop()
        sagemaker.shutdown()
        sagemaker.backend.close()
        if sagemaker.enforcer is not None:
            sagemaker.enforcer.save_usage()
        router.stop()
        server.server_close()
        log.info("host stopped")


if __name__ == "__main__":
    main()
