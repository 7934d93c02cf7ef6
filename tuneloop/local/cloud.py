"""`tuneloop up` / `down` / `status`: the local cloud's processes and their state.

Everything lives under ``TUNELOOP_HOME`` (default ``.tuneloop/`` in the working
directory), readable by its owner only: ``state.json`` (ports, pids, the API token),
``credentials.json`` (the AWS credentials every local service checks, made at the first
``up``), ``logs/``, DynamoDB Local's files, and ``s3/``, the bucket's contents saved at
``down`` and restored at ``up`` (moto keeps S3 in memory only).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import sigv4
from .files import inside, private_folder, write_atomic
from .gateway import database_key_id
from .processes import ProcessRecord, reclaim, start_ticks
from .services import (
    QUEUE_PREFIX,
    REPO_ROOT,
    ServiceError,
    aws_env,
    start_dynamodb_local,
    start_moto,
    wait_until,
)

DEFAULT_BUCKET = "tuneloop-local"
# Events still queued for a handler at `down` (moto's queues live in memory only).
QUEUED_EVENTS = "queued-events.jsonl"
CREDENTIALS_FILE = "credentials.json"
# What a state file from before the services checked signatures stands for.
_UNSIGNED_ERA = sigv4.Credentials("tuneloop", "tuneloop")


def home() -> Path:
    return Path(os.environ.get("TUNELOOP_HOME", ".tuneloop")).resolve()


# The local cloud's stage: its names start tl-local-, and `--stage local` reaches it as a
# deployed stage is reached.
STAGE = "local"


@dataclass
class CloudState:
    dynamodb_port: int
    dynamodb_pid: int
    moto_port: int
    moto_pid: int
    host_pid: int
    api_port: int
    token: str
    bucket: str
    sagemaker_port: int = 0
    # Each process's start time (processes.start_ticks): a PID is only ours while it matches.
    dynamodb_started: int | None = None
    moto_started: int | None = None
    host_started: int | None = None
    # The credentials every local service checks (the same as credentials.json).
    access_key_id: str = ""
    secret_access_key: str = ""

    @property
    def credentials(self) -> sigv4.Credentials:
        if not self.access_key_id:
            return _UNSIGNED_ERA
        return sigv4.Credentials(self.access_key_id, self.secret_access_key)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **aws_env(f"http://127.0.0.1:{self.dynamodb_port}", f"http://127.0.0.1:{self.moto_port}", self.credentials),
            "TUNELOOP_BUCKET": self.bucket,
            "TUNELOOP_STAGE": STAGE,
        }

    def process(self, name: str) -> ProcessRecord:
        """name: dynamodb, moto or host."""
        return ProcessRecord(getattr(self, f"{name}_pid"), getattr(self, f"{name}_started"))

    def running(self) -> dict[str, bool]:
        return {name: self.process(name).running() for name in ("dynamodb", "moto", "host")}

    def client(self, service: str) -> Any:
        """A boto3 client for a local service: sagemaker(-runtime), or one of moto's (s3, sqs, …)."""
        import boto3

        port = self.sagemaker_port if service in ("sagemaker", "sagemaker-runtime") else self.moto_port
        return boto3.client(
            service,
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=self.credentials.access_key,
            aws_secret_access_key=self.credentials.secret_key,
        )

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2), mode=0o600)  # holds the API token


def load_state() -> CloudState | None:
    path = home() / "state.json"
    if not path.is_file():
        return None
    try:
        return CloudState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ServiceError(f"{path} is not a state file this version wrote ({exc}); remove it and run up") from exc


def local_credentials(root: Path, renew: bool = False) -> sigv4.Credentials:
    """The local cloud's AWS credentials: made at the first ``up`` (or ``up --clean``) and
    kept in ``credentials.json``, mode 600. They stay the same across ``down``/``up``:
    DynamoDB Local keeps the tables in the database of the key ID the gateway derives from
    them."""
    path = root / CREDENTIALS_FILE
    if not renew and path.is_file():
        try:
            saved = json.loads(path.read_text())
            credentials = sigv4.Credentials(str(saved["aws_access_key_id"]), str(saved["aws_secret_access_key"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceError(f"{path} is not a credentials file this version wrote ({exc}); remove it") from exc
    else:
        credentials = sigv4.generate()
        body = {"aws_access_key_id": credentials.access_key, "aws_secret_access_key": credentials.secret_key}
        write_atomic(path, json.dumps(body, indent=2), mode=0o600)
    _adopt_databases(root / "dynamodb", credentials)
    return credentials


def _adopt_databases(folder: Path, credentials: sigv4.Credentials) -> None:
    """DynamoDB Local's files under the gateway's own key ID (``database_key_id``). A home
    from an older version kept them in one shared database, or under the public key ID."""
    ours = database_key_id(credentials)
    older = [(folder / "shared-local-instance.db", "us-east-1")]
    public = credentials.access_key
    older += [(path, path.name[len(public) + 1 : -3]) for path in folder.glob(f"{public}_*.db")]
    for path, region in older:
        keyed = folder / f"{ours}_{region}.db"
        if path.is_file() and not keyed.exists():
            path.rename(keyed)


def up(clean: bool = False, api_port: int = 0, log: Any = print) -> CloudState:
    root = home()
    iam_settings()  # checked before anything starts
    state = load_state()
    if state:
        running = state.running()
        if all(running.values()):
            log(f"local cloud already up: API {state.api_url}")
            return state
        if running["dynamodb"] and running["moto"] and not clean:
            # Only the app host died (a crash, a kill): DynamoDB Local and moto keep the
            # tables, the bucket and the events queued meanwhile. Start the host alone;
            # it reclaims the jobs and model servers the dead host left running.
            log(f"the app host (pid {state.host_pid}) is not running; starting it again")
            reclaim(state.process("host"))
            return _start_host(root, state, log)
        stopped = ", ".join(name for name, ok in running.items() if not ok)
        log(f"local cloud half up ({stopped} not running): stopping the rest")
        down(log=log)
    if clean and root.exists():
        # Everything a run left: tables, bucket, SageMaker's jobs, registry and endpoints, reports.
        for sub in ("dynamodb", "s3", "sagemaker", "reports"):
            _remove_tree(root / sub)
        for name in ("dead-letters.jsonl", QUEUED_EVENTS):
            (root / name).unlink(missing_ok=True)
    private_folder(root)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    credentials = local_credentials(root, renew=clean)
    started: list[Any] = []
    try:
        log("starting DynamoDB Local …")
        dynamodb = start_dynamodb_local(
            credentials, db_path=root / "dynamodb", log_path=root / "logs" / "dynamodb.log", detach=True
        )
        started.append(dynamodb)
        log(f"  DynamoDB Local on {dynamodb.endpoint}")
        log("starting moto (S3, CloudWatch, EventBridge, SQS) …")
        moto = start_moto(credentials, log_path=root / "logs" / "moto.log", detach=True)
        started.append(moto)
        log(f"  moto (behind tuneloop's SigV4 gateway) on {moto.endpoint}")
    except BaseException:  # a failure or Ctrl-C: what started stops (no state file knows of it yet)
        for service in started:
            service.stop()
        raise
    assert dynamodb.proc is not None and moto.proc is not None
    fresh = CloudState(
        dynamodb.port, dynamodb.proc.pid, moto.port, moto.proc.pid, 0, api_port,
        secrets.token_urlsafe(24), DEFAULT_BUCKET,
        dynamodb_started=start_ticks(dynamodb.proc.pid), moto_started=start_ticks(moto.proc.pid),
        access_key_id=credentials.access_key, secret_access_key=credentials.secret_key,
    )  # fmt: skip
    return _start_host(root, fresh, log, fixed_port=bool(api_port))


def _start_host(root: Path, state: CloudState, log: Any, fixed_port: bool = False) -> CloudState:
    """The app host (API, event router, local SageMaker) beside running DynamoDB Local and moto."""
    env = {
        **os.environ,
        **state.env,
        "TUNELOOP_HOME": str(root),
        "TUNELOOP_API_TOKEN": state.token,
        # 0: the host binds a free port itself (no window for another process to take one
        # picked here); host.json says which.
        "TUNELOOP_API_PORT": str(state.api_port),
        "TUNELOOP_API_PORT_FIXED": "1" if fixed_port else "0",
        "PYTHONUNBUFFERED": "1",
    }
    (root / "host.json").unlink(missing_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    log("starting the app host (API + event router) …")
    with open(root / "logs" / "host.log", "ab") as out:
        host = subprocess.Popen(
            [sys.executable, "-m", "tuneloop.local.host"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    state.host_pid, state.host_started = host.pid, start_ticks(host.pid)
    state.save(root / "state.json")
    try:
        wait_until(lambda: (root / "host.json").is_file(), 90, "the app host", host)
    except ServiceError:
        log(f"the app host did not start; see {root / 'logs' / 'host.log'}")
        down(log=lambda *_: None, save=False)
        raise
    started = json.loads((root / "host.json").read_text())
    state.sagemaker_port = int(started.get("sagemaker_port", 0))
    state.api_port = int(started.get("api_port", state.api_port))
    state.save(root / "state.json")
    log(f"  local SageMaker on http://127.0.0.1:{state.sagemaker_port}")
    log(f"  API on {state.api_url} (bearer token in {root / 'state.json'})")
    from . import template

    log(f"  {template.summary(template.load(STAGE, state.bucket))}")
    enforcer = iam_settings()
    log(f"  {enforcer.summary() if enforcer else 'IAM not enforced (TUNELOOP_LOCAL_IAM=off)'}")
    return state


def iam_settings() -> Any:
    """The policies the services will enforce (``enforce.Enforcer``), or None when off; a
    TUNELOOP_LOCAL_POLICY_DIR that is not a folder stops ``up`` before anything starts."""
    from .enforce import Enforcer

    try:
        return Enforcer.from_env()
    except ValueError as exc:
        raise ServiceError(str(exc)) from exc


def down(log: Any = print, save: bool = True) -> bool:
    root = home()
    state = load_state()
    if state is None:
        log("local cloud is not up")
        return False
    # The host first: it ends running jobs (training checkpoints on SIGTERM), to resume at
    # the next up. Then what it left behind is saved while moto still holds it.
    started = time.monotonic()
    if state.process("host").running():
        # Say so before the wait: running jobs checkpoint and stop, which can take a minute.
        log(f"stopping the app host (pid {state.host_pid}); its running jobs checkpoint and stop (up to 60 s)…")
    if reclaim(state.process("host"), grace_s=60):
        log(f"stopped the app host in {time.monotonic() - started:.0f} s")
    if save and state.process("moto").running():
        log("saving undelivered events and the bucket…")
        queued = save_queued_events(state, root / QUEUED_EVENTS)
        if queued:
            log(f"saved {queued} undelivered events to {root / QUEUED_EVENTS}; up delivers them")
        saved, refused = snapshot_s3(state, root / "s3")
        log(f"saved {saved} objects of s3://{state.bucket} to {root / 's3'}")
        if refused:
            shown = ", ".join(repr(key) for key in refused[:5])
            log(f"not saved: {len(refused)} key(s) that would land outside {root / 's3'} ({shown})")
    for name, label in (("moto", "moto server"), ("dynamodb", "DynamoDB Local")):
        if reclaim(state.process(name)):
            log(f"stopped {label} (pid {getattr(state, f'{name}_pid')})")
    (root / "state.json").unlink(missing_ok=True)
    (root / "host.json").unlink(missing_ok=True)
    log(f"local cloud down in {time.monotonic() - started:.0f} s")
    return True


def save_queued_events(state: CloudState, path: Path, settle_s: float = 8.0) -> int:
    """Take every event still queued for a handler out of moto's queues into ``path``
    (moto keeps them in memory only); the next host delivers them. Messages a stopped host
    had received but not finished become visible again after the queue's visibility
    timeout: wait for those, up to ``settle_s``."""
    sqs = state.client("sqs")
    urls = sqs.list_queues(QueueNamePrefix=QUEUE_PREFIX).get("QueueUrls", [])
    saved: list[dict[str, Any]] = []
    deadline = time.monotonic() + settle_s
    for url in urls:
        queue = url.rsplit("/", 1)[-1]
        while True:
            answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                         MessageAttributeNames=["All"], VisibilityTimeout=300)  # fmt: skip
            messages = answer.get("Messages", [])
            for message in messages:
                saved.append({"queue": queue, "body": message["Body"],
                              "attributes": message.get("MessageAttributes") or {}})  # fmt: skip
            if messages:
                continue
            attributes = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
            )
            if int(attributes["Attributes"].get("ApproximateNumberOfMessagesNotVisible", 0)) == 0:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    if saved:
        existing = path.read_text() if path.is_file() else ""
        write_atomic(path, existing + "".join(json.dumps(item) + "\n" for item in saved))
    return len(saved)


def snapshot_s3(state: CloudState, target: Path) -> tuple[int, list[str]]:
    """Save the bucket's objects under ``target``: (how many, the keys refused because
    they would land outside it)."""
    s3 = state.client("s3")
    refused: list[str] = []
    staging = target.with_name(target.name + ".new")
    _remove_tree(staging)
    staging.mkdir(parents=True)
    count = 0
    etags: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=state.bucket):
        for obj in page.get("Contents", []):
            path = inside(staging, obj["Key"])
            if path is None:  # anyone may PUT a key like /home/you/.bashrc: it is not saved
                refused.append(obj["Key"])
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(state.bucket, obj["Key"], str(path))
            etags[obj["Key"]] = str(obj.get("ETag", "")).strip('"')
            count += 1
    # Replace the old snapshot only once the new one is complete: nothing is lost midway.
    # The ETags go beside it: a restore uploads each object as it was uploaded (one part or
    # N), so its ETag, which model packages pin, comes back the same.
    write_atomic(etag_file(target), json.dumps(etags))
    _remove_tree(target)
    staging.rename(target)
    return count, refused


def etag_file(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name + ".etags.json")


def status() -> dict[str, Any]:
    state = load_state()
    if state is None:
        return {"up": False, "home": str(home())}
    running = state.running()
    return {
        "up": all(running.values()),
        "home": str(home()),
        "api": {"url": state.api_url, "pid": state.host_pid, "alive": running["host"]},
        "dynamodb": {
            "url": f"http://127.0.0.1:{state.dynamodb_port}",
            "pid": state.dynamodb_pid,
            "alive": running["dynamodb"],
        },
        "moto": {"url": f"http://127.0.0.1:{state.moto_port}", "pid": state.moto_pid, "alive": running["moto"]},
        "sagemaker": {
            "url": f"http://127.0.0.1:{state.sagemaker_port}",
            "pid": state.host_pid,
            "alive": running["host"],
        },
        "bucket": state.bucket,
        "token_file": str(home() / "state.json"),
        "credentials_file": str(home() / CREDENTIALS_FILE),
    }


def _remove_tree(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)
