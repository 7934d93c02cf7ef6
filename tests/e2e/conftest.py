"""What the end-to-end tests share: the CLI as a user runs it, the local API, clients of
the local services, and a local cloud started from nothing for one test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import wait_for

__all__ = ["REPO", "client", "cloudwatch", "http", "invoke", "local_cloud", "s3", "tuneloop", "wait_for"]

REPO = Path(__file__).resolve().parents[2]


def tuneloop(home: Path, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNELOOP_HOME": str(home)}
    for name in list(env):
        if name.startswith("AWS_ENDPOINT_URL") or name in ("TUNELOOP_BUCKET", "TUNELOOP_STAGE"):
            env.pop(name)  # the CLI finds the local cloud through its state file, nothing else
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Ctrl-C, as a user would: the command's own clean-up runs (the demo takes its local
        # cloud down). Then any cloud still up under this home goes down: a timed-out test
        # must not leave servers running through the rest of the suite.
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        for state in sorted(home.rglob("state.json")):
            down = {**env, "TUNELOOP_HOME": str(state.parent)}
            subprocess.run([sys.executable, "-m", "tuneloop.cli", "down"], env=down, capture_output=True, timeout=180)
        what = f"tuneloop {' '.join(args)} ran past {timeout:.0f}s:\n{stdout[-5000:]}\n{stderr[-3000:]}"
        raise AssertionError(what) from None
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"tuneloop {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def http(state: dict[str, Any], method: str, path: str, body: Any = None, token: str | None = "ok") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{state['api_port']}{path}", data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {state['token'] if token == 'ok' else token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def client(state: dict[str, Any], service: str) -> Any:
    """A boto3 client of a local service: SageMaker (and its Runtime) on the local SageMaker's
    port, the rest on moto's."""
    port = state["sagemaker_port"] if service.startswith("sagemaker") else state["moto_port"]
    return boto3.client(
        service,
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id=state["access_key_id"],  # the credentials `up` made; nothing else is answered
        aws_secret_access_key=state["secret_access_key"],
    )


def s3(state: dict[str, Any]) -> Any:
    return client(state, "s3")


def cloudwatch(state: dict[str, Any]) -> Any:
    return client(state, "cloudwatch")


def invoke(state: dict[str, Any], text: str) -> Any:
    runtime = client(state, "sagemaker-runtime")
    answer = runtime.invoke_endpoint(
        EndpointName="tl-local-demo", ContentType="application/json", Body=json.dumps(text)
    )
    return json.loads(answer["Body"].read())


@contextmanager
def local_cloud(home: Path, refusals: bool = False) -> Iterator[tuple[Path, dict[str, Any]]]:
    """`tuneloop up --clean` in ``home`` (with this process's environment), `down` after.

    Every AWS call a function makes meanwhile is logged, and after `down` decided under
    that function's role from the template: a call AWS would deny fails the test, and
    ``build/policy-audit/<test>.json`` lists the statements no call needed. The services
    enforce the same policies as the calls come: a refusal fails the test too, unless
    ``refusals`` (a test that takes a permission away)."""
    calls = home / "calls.jsonl"
    usage = home / "policy-usage"
    os.environ["TUNELOOP_LOCAL_CALL_LOG"] = str(calls)
    os.environ["TUNELOOP_LOCAL_POLICY_USAGE"] = str(usage)
    try:
        tuneloop(home, "up", "--clean")
    finally:
        os.environ.pop("TUNELOOP_LOCAL_CALL_LOG", None)
        os.environ.pop("TUNELOOP_LOCAL_POLICY_USAGE", None)
    state = json.loads((home / "state.json").read_text())
    try:
        yield home, state
    finally:
        tuneloop(home, "down", check=False)
    from tuneloop.local.audit import audit

    found = audit(calls, stage="local", bucket=state["bucket"], account="123456789012", region="us-east-1")
    # The execution role's calls (jobs, the local SageMaker) were decided by the services as
    # they came; the statements none of them needed join the list.
    from tuneloop.local.enforce import EXECUTION_ROLE_FILE, Enforcer, unused_statements

    enforced = Enforcer.for_stack("local", state["bucket"])
    found.unused[EXECUTION_ROLE_FILE] = unused_statements(enforced, usage)[EXECUTION_ROLE_FILE]
    # Kept where a passing test's folder is not deleted: build/policy-audit/<test>.json.
    kept = REPO / "build" / "policy-audit"
    kept.mkdir(parents=True, exist_ok=True)
    (kept / f"{home.parent.name}.json").write_text(json.dumps(found.__dict__, indent=1))
    assert found.calls > 0, "no call of any function was logged: the audit saw nothing"
    denied = "\n".join(found.denied)
    assert not found.denied, f"calls the functions' roles would be denied on AWS ({found.calls} checked):\n{denied}"
    # The services enforced the same policies as the calls came: none was refused, and the
    # functions and the jobs signed as their own roles.
    logs = "".join(p.read_text(errors="replace") for p in sorted((home / "logs").glob("*.log")))
    refused = [line for line in logs.splitlines() if "AccessDenied" in line]
    if refusals:
        return
    assert not refused, "the local cloud refused calls under the template's policies:\n" + "\n".join(refused[:20])
    for principal in ("function/api_handler", "role/sagemaker-execution"):
        assert f"IAM: {principal}'s calls are decided" in logs, f"no call of {principal} reached a service"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    with local_cloud(tmp_path / "home") as started:
        yield started
