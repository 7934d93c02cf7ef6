"""What the end-to-end tests share: the CLI as a user runs it, the local API, clients of
the local services, and a local cloud started from nothing for one test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

REPO = Path(__file__).resolve().parents[2]


def tuneloop(home: Path, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNELOOP_HOME": str(home)}
    for name in list(env):
        if name.startswith("AWS_ENDPOINT_URL") or name == "TUNELOOP_BUCKET":
            env.pop(name)  # the CLI finds the local cloud through its state file, nothing else
    result = subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
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


def s3(state: dict[str, Any]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{state['moto_port']}",
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
    )


def cloudwatch(state: dict[str, Any]) -> Any:
    return boto3.client(
        "cloudwatch",
        endpoint_url=f"http://127.0.0.1:{state['moto_port']}",
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
    )


def invoke(state: dict[str, Any], text: str) -> Any:
    runtime = boto3.client(
        "sagemaker-runtime",
        endpoint_url=f"http://127.0.0.1:{state['sagemaker_port']}",
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
    )
    answer = runtime.invoke_endpoint(EndpointName="tl-demo", ContentType="application/json", Body=json.dumps(text))
    return json.loads(answer["Body"].read())


def wait_for(predicate: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    home = tmp_path / "home"
    tuneloop(home, "up", "--clean")
    try:
        yield home, json.loads((home / "state.json").read_text())
    finally:
        tuneloop(home, "down", check=False)
