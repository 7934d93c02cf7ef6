"""`tuneloop up` / `down` / `status`: the local cloud's processes and their state.

Everything lives under ``TUNELOOP_HOME`` (default ``.tuneloop/`` in the working
directory): ``state.json`` (ports, pids, the API token), ``logs/``, DynamoDB Local's
files, and ``s3/``, the bucket's contents saved at ``down`` and restored at ``up``
(moto keeps S3 in memory only).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .services import (
    LOCAL_CREDENTIALS,
    REPO_ROOT,
    ServiceError,
    aws_env,
    free_port,
    start_dynamodb_local,
    start_moto,
    wait_until,
)

DEFAULT_BUCKET = "tuneloop-local"


def home() -> Path:
    return Path(os.environ.get("TUNELOOP_HOME", ".tuneloop")).resolve()


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

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **aws_env(f"http://127.0.0.1:{self.dynamodb_port}", f"http://127.0.0.1:{self.moto_port}"),
            "TUNELOOP_BUCKET": self.bucket,
            "TUNELOOP_STAGE": "local",
        }

    def client(self, service: str) -> Any:
        """A boto3 client for a local service: sagemaker(-runtime), or one of moto's (s3, sqs, …)."""
        import boto3

        port = self.sagemaker_port if service in ("sagemaker", "sagemaker-runtime") else self.moto_port
        return boto3.client(
            service,
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)  # holds the API token


def load_state() -> CloudState | None:
    path = home() / "state.json"
    if not path.is_file():
        return None
    return CloudState(**json.loads(path.read_text()))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(clean: bool = False, api_port: int = 0, log: Any = print) -> CloudState:
    root = home()
    state = load_state()
    if state and all(alive(p) for p in (state.dynamodb_pid, state.moto_pid, state.host_pid)):
        log(f"local cloud already up: API {state.api_url}")
        return state
    if state:
        down(log=lambda *_: None)  # half up: stop what is left (saving the bucket if moto lives)
    if clean and root.exists():
        # Everything a run left: tables, bucket, SageMaker's jobs, registry and endpoints, reports.
        for sub in ("dynamodb", "s3", "sagemaker", "reports"):
            _remove_tree(root / sub)
        for name in ("dead-letters.jsonl",):
            (root / name).unlink(missing_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    started: list[Any] = []
    try:
        log("starting DynamoDB Local …")
        dynamodb = start_dynamodb_local(db_path=root / "dynamodb", log_path=root / "logs" / "dynamodb.log", detach=True)
        started.append(dynamodb)
        log(f"  DynamoDB Local on {dynamodb.endpoint}")
        log("starting moto server (S3, CloudWatch, EventBridge, SQS) …")
        moto = start_moto(log_path=root / "logs" / "moto.log", detach=True)
        started.append(moto)
        log(f"  moto server on {moto.endpoint}")
    except ServiceError:
        for service in started:
            service.stop()
        raise
    assert dynamodb.proc is not None and moto.proc is not None
    token = secrets.token_urlsafe(24)
    port = api_port or free_port()
    partial = CloudState(dynamodb.port, dynamodb.proc.pid, moto.port, moto.proc.pid, 0, port, token, DEFAULT_BUCKET)
    env = {
        **os.environ,
        **partial.env,
        "TUNELOOP_HOME": str(root),
        "TUNELOOP_API_TOKEN": token,
        "TUNELOOP_API_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    (root / "host.json").unlink(missing_ok=True)
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
    partial.host_pid = host.pid
    partial.save(root / "state.json")
    try:
        wait_until(lambda: (root / "host.json").is_file(), 90, "the app host", host)
    except ServiceError:
        log(f"the app host did not start; see {root / 'logs' / 'host.log'}")
        down(log=lambda *_: None, save=False)
        raise
    partial.sagemaker_port = int(json.loads((root / "host.json").read_text()).get("sagemaker_port", 0))
    partial.save(root / "state.json")
    log(f"  local SageMaker on http://127.0.0.1:{partial.sagemaker_port}")
    log(f"  API on {partial.api_url} (bearer token in {root / 'state.json'})")
    return partial


def down(log: Any = print, save: bool = True) -> bool:
    root = home()
    state = load_state()
    if state is None:
        log("local cloud is not up")
        return False
    if save and alive(state.moto_pid):
        saved = snapshot_s3(state, root / "s3")
        log(f"saved {saved} objects of s3://{state.bucket} to {root / 's3'}")
    for name, pid in (
        ("app host", state.host_pid),
        ("moto server", state.moto_pid),
        ("DynamoDB Local", state.dynamodb_pid),
    ):
        if pid and alive(pid):
            _terminate(pid)
            log(f"stopped {name} (pid {pid})")
    (root / "state.json").unlink(missing_ok=True)
    (root / "host.json").unlink(missing_ok=True)
    return True


def snapshot_s3(state: CloudState, target: Path) -> int:
    s3 = state.client("s3")
    staging = target.with_name(target.name + ".new")
    _remove_tree(staging)
    staging.mkdir(parents=True)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=state.bucket):
        for obj in page.get("Contents", []):
            path = staging / obj["Key"]
            if ".." in Path(obj["Key"]).parts:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(state.bucket, obj["Key"], str(path))
            count += 1
    # Replace the old snapshot only once the new one is complete: nothing is lost midway.
    _remove_tree(target)
    staging.rename(target)
    return count


def status() -> dict[str, Any]:
    state = load_state()
    if state is None:
        return {"up": False, "home": str(home())}
    return {
        "up": all(alive(p) for p in (state.dynamodb_pid, state.moto_pid, state.host_pid)),
        "home": str(home()),
        "api": {"url": state.api_url, "pid": state.host_pid, "alive": alive(state.host_pid)},
        "dynamodb": {
            "url": f"http://127.0.0.1:{state.dynamodb_port}",
            "pid": state.dynamodb_pid,
            "alive": alive(state.dynamodb_pid),
        },
        "moto": {"url": f"http://127.0.0.1:{state.moto_port}", "pid": state.moto_pid, "alive": alive(state.moto_pid)},
        "sagemaker": {
            "url": f"http://127.0.0.1:{state.sagemaker_port}",
            "pid": state.host_pid,
            "alive": alive(state.host_pid),
        },
        "bucket": state.bucket,
        "token_file": str(home() / "state.json"),
    }


def _terminate(pid: int, timeout: float = 10) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid) or _reaped(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def _remove_tree(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)
