"""tuneloop's local SageMaker: the SageMaker JSON protocol on loopback, jobs run here.

The app's unmodified boto3 client reaches it through ``AWS_ENDPOINT_URL_SAGEMAKER``.
Every request is validated against botocore's SageMaker service model (types, required
members, lengths, ranges, enums and patterns), so a request AWS would reject with a
``ValidationException`` is rejected here the same way.

Jobs run on this machine, not in containers: each gets an /opt/ml-style folder
(``SAGEMAKER_BASE_DIR``); inputs are downloaded from local S3; processing jobs run their
entry point with /opt/ml paths mapped into that folder; training jobs run through the real
``sagemaker-training`` toolkit (hosts ``["localhost"]``). Logs go to a file, metrics are
scraped with the job's own ``MetricDefinitions``, outputs and ``model.tar.gz`` are
uploaded to local S3, stop and ``MaxRuntimeInSeconds`` are honoured, and every status
change is emitted as an AWS-shaped ``SageMaker … Job State Change`` event.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.session
from botocore.validate import ParamValidator

from . import toolkit

log = logging.getLogger("tuneloop.sagemaker")
ACCOUNT = "123456789012"
REGION = "us-east-1"
OPT_ML = "/opt/ml"
Emit = Callable[[dict[str, Any]], object]


class ServiceError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# --- validation against botocore's model ---------------------------------------------------

_MODEL = botocore.session.get_session().get_service_model("sagemaker")
_PATTERNS: dict[str, re.Pattern[str] | None] = {}


def _pattern(source: str) -> re.Pattern[str] | None:
    if source not in _PATTERNS:
        try:
            _PATTERNS[source] = re.compile(source)
        except re.error:  # a Java-only construct: leave that one to botocore's checks
            _PATTERNS[source] = None
    return _PATTERNS[source]


def _violation(path: str, value: Any, rule: str) -> str:
    shown = f"'{value}' " if isinstance(value, (str, int)) else ""
    return f"Value {shown}at '{path}' failed to satisfy constraint: Member must {rule}"


def _constraints(value: Any, shape: Any, path: str, errors: list[str]) -> None:
    """What botocore's client-side validation leaves to the service: max, enum, pattern."""
    meta = shape.metadata
    too_long = f"have length less than or equal to {meta.get('max')}"
    if shape.type_name == "structure" and isinstance(value, Mapping):
        for name, member in shape.members.items():
            if name in value:
                _constraints(value[name], member, f"{path}.{name}" if path else name, errors)
    elif shape.type_name == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(_violation(path, None, too_long))
        for n, item in enumerate(value):
            _constraints(item, shape.member, f"{path}.{n + 1}", errors)
    elif shape.type_name == "map" and isinstance(value, Mapping):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(_violation(path, None, too_long))
        for key, item in value.items():
            _constraints(key, shape.key, f"{path}.key", errors)
            _constraints(item, shape.value, f"{path}.{key}", errors)
    elif shape.type_name == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(_violation(path, value, too_long))
        if shape.enum and value not in shape.enum:
            errors.append(_violation(path, value, f"satisfy enum value set: [{', '.join(shape.enum)}]"))
        compiled = _pattern(meta["pattern"]) if "pattern" in meta else None
        if compiled is not None and not compiled.fullmatch(value):
            errors.append(_violation(path, value, f"satisfy regular expression pattern: {meta['pattern']}"))
    elif shape.type_name in ("integer", "long") and isinstance(value, int) and "max" in meta and value > meta["max"]:
        errors.append(_violation(path, value, f"have value less than or equal to {meta['max']}"))


def validate(operation: str, params: Mapping[str, Any]) -> None:
    try:
        model = _MODEL.operation_model(operation)
    except botocore.exceptions.OperationNotFoundError as exc:
        raise ServiceError("UnknownOperationException", f"Unknown operation {operation}") from exc
    report = ParamValidator().validate(dict(params), model.input_shape)
    errors = [report.generate_report()] if report.has_errors() else []
    _constraints(params, model.input_shape, "", errors)
    if errors:
        detail = "; ".join(errors)
        raise ServiceError(
            "ValidationException", f"{len(errors)} validation error{'s' if len(errors) > 1 else ''} detected: {detail}"
        )


# --- S3 helpers -------------------------------------------------------------------------------


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ServiceError("ValidationException", f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def download_prefix(s3: Any, uri: str, target: Path) -> int:
    """Objects under ``uri`` (a prefix, or one object's key) into ``target``, keeping sub-paths."""
    bucket, prefix = split_s3(uri)
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            relative = key[len(prefix) :].lstrip("/") if key != prefix else Path(key).name
            if not relative or relative.endswith("/") or ".." in Path(relative).parts:
                continue
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(path))
            count += 1
    return count


def upload_folder(s3: Any, folder: Path, uri: str) -> int:
    """Upload what ``folder`` holds. Writes still in flight (``.tmp*`` names, as train.py's
    atomic checkpoints use) are not uploaded, and a file that vanishes meanwhile is skipped:
    a stopped job's last process may still be renaming its checkpoint."""
    bucket, prefix = split_s3(uri)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".tmp") for part in relative.parts):
            continue
        try:
            s3.upload_file(str(path), bucket, prefix + relative.as_posix())
        except FileNotFoundError:
            continue
        count += 1
    return count


# --- jobs -------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


class Job:
    """One processing or training job: its description (what Describe returns) and process."""

    kind = "job"
    name_key = status_key = arn_kind = detail_type = ""

    @classmethod
    def arn_key(cls) -> str:
        return cls.name_key.replace("Name", "Arn")

    def __init__(self, server: LocalSageMaker, request: dict[str, Any]) -> None:
        self.server = server
        self.request = request
        self.name: str = request[self.name_key]
        self.folder = server.home / self.kind / self.name
        self.arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{self.arn_kind}/{self.name.lower()}"
        self.created = now()
        self.status = "InProgress"
        self.failure_reason = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.stop_requested = False
        self.started: datetime | None = None
        self.ended: datetime | None = None
        self.lock = threading.Lock()

    @property
    def root(self) -> Path:
        """Where /opt/ml lives for this job."""
        return self.folder / "opt" / "ml"

    def local(self, path: str) -> Path:
        if path == OPT_ML or path.startswith(OPT_ML + "/"):
            return self.root / path[len(OPT_ML) :].lstrip("/")
        return self.folder / path.lstrip("/")

    @property
    def log_path(self) -> Path:
        return self.folder / "job.log"

    def tags(self) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.request.get("Tags", [])}

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def event(self) -> dict[str, Any]:
        detail = json.loads(json.dumps(self.describe(), default=lambda d: int(d.timestamp() * 1000)))
        detail["Tags"] = self.tags()
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": self.detail_type,
            "source": "aws.sagemaker",
            "account": ACCOUNT,
            "time": now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [self.arn],
            "detail": detail,
        }

    def emit(self) -> None:
        self.server.emit(self.event())

    def run(self) -> None:
        try:
            self.started = now()
            self.execute()
        except Exception as exc:  # the job fails; the server lives on
            log.exception("job %s failed", self.name)
            self.finish("Failed", f"ClientError: {exc}")

    def execute(self) -> None:
        raise NotImplementedError

    def finish(self, status: str, reason: str = "") -> None:
        if self.server.closing:
            return  # close() has recorded how this job ended
        with self.lock:
            self.status = status
            self.failure_reason = reason[:1024]
            self.ended = now()
        self.server.save(self)
        self.emit()

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the process, killing it at the deadline; None when the deadline hit."""
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.terminate()
            return None

    def terminate(self, grace_s: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def stop(self) -> None:
        self.stop_requested = True
        self.terminate()

    def launched(self, process: subprocess.Popen[bytes]) -> None:
        """Record the job's process; a stop that came before it existed ends it now."""
        self.process = process
        if self.stop_requested:
            self.terminate()

    def read_failure(self, *names: str) -> str:
        for name in names:
            path = self.root / "output" / name
            if path.is_file() and path.read_text(errors="replace").strip():
                return path.read_text(errors="replace").strip()
        return ""


class ProcessingJob(Job):
    kind = "processing"
    name_key, status_key, arn_kind = "ProcessingJobName", "ProcessingJobStatus", "processing-job"
    detail_type = "SageMaker Processing Job State Change"

    def describe(self) -> dict[str, Any]:
        out = {
            **self.request,
            "ProcessingJobArn": self.arn,
            "ProcessingJobStatus": self.status,
            "CreationTime": self.created,
            "LastModifiedTime": self.ended or self.started or self.created,
        }
        out.pop("Tags", None)
        if self.started:
            out["ProcessingStartTime"] = self.started
        if self.ended:
            out["ProcessingEndTime"] = self.ended
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
            out["ExitMessage"] = self.failure_reason
        return out

    def execute(self) -> None:
        s3 = self.server.s3
        self.emit()
        for item in self.request.get("ProcessingInputs", []):
            source = item.get("S3Input")
            if source:
                download_prefix(s3, source["S3Uri"], self.local(source["LocalPath"]))
        spec = self.request["AppSpecification"]
        command = [self._map(part) for part in (spec.get("ContainerEntrypoint") or [])]
        command += [self._map(part) for part in (spec.get("ContainerArguments") or [])]
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable  # the local cloud's interpreter has what the image would
        for output in self.request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            self.local(output["S3Output"]["LocalPath"]).mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.request.get("Environment", {}),
            "SAGEMAKER_BASE_DIR": str(self.root),
            "PIP_NO_INDEX": "1",
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.launched(
                subprocess.Popen(
                    command,
                    env=env,
                    cwd=self.folder,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        code = self.wait(self.request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 86400))
        if self.stop_requested:
            return self.finish("Stopped")
        if code is None:
            return self.finish("Failed", "MaxRuntimeExceeded: the job ran past MaxRuntimeInSeconds")
        if code != 0:
            reason = (
                self.read_failure("message", "failure") or f"AlgorithmError: the entry point exited with code {code}"
            )
            return self.finish("Failed", reason)
        for output in self.request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            target = output["S3Output"]
            upload_folder(s3, self.local(target["LocalPath"]), target["S3Uri"])
        self.finish("Completed")

    def _map(self, part: str) -> str:
        return re.sub(r"(?<![\w/])/opt/ml(?=/|$)", str(self.root), part)


class TrainingJob(Job):
    kind = "training"
    name_key, status_key, arn_kind = "TrainingJobName", "TrainingJobStatus", "training-job"
    detail_type = "SageMaker Training Job State Change"

    def __init__(self, server: LocalSageMaker, request: dict[str, Any], tuning_arn: str | None = None) -> None:
        super().__init__(server, request)
        self.secondary = "Starting"
        self.transitions: list[dict[str, Any]] = []
        self.metrics: dict[str, dict[str, Any]] = {}
        # Every value each metric definition matched, in order: the tuner's intermediate values.
        self.series: dict[str, list[float]] = {}
        self.model_artifact = ""
        self.tuning_arn = tuning_arn
        self.stopped_early = False
        self._set_secondary("Starting", "Preparing the instances for training")

    def _set_secondary(self, status: str, message: str) -> None:
        with self.lock:
            at = now()
            if self.transitions:
                self.transitions[-1]["EndTime"] = at
            self.secondary = status
            self.transitions.append({"Status": status, "StartTime": at, "StatusMessage": message})

    def advance(self, status: str, message: str) -> None:
        self._set_secondary(status, message)
        self.emit()

    def describe(self) -> dict[str, Any]:
        with self.lock:
            out = {
                **self.request,
                "TrainingJobArn": self.arn,
                "TrainingJobStatus": self.status,
                "SecondaryStatus": self.secondary,
                "CreationTime": self.created,
                "LastModifiedTime": self.ended or self.started or self.created,
                "SecondaryStatusTransitions": [dict(t) for t in self.transitions],
                "FinalMetricDataList": [
                    {"MetricName": name, "Value": m["Value"], "Timestamp": m["Timestamp"]}
                    for name, m in self.metrics.items()
                ],
                "ModelArtifacts": {"S3ModelArtifacts": self.model_artifact},
            }
            out.pop("Tags", None)
            if self.tuning_arn:
                out["TuningJobArn"] = self.tuning_arn
            if self.started:
                out["TrainingStartTime"] = self.started
            if self.ended:
                out["TrainingEndTime"] = self.ended
                seconds = int((self.ended - (self.started or self.created)).total_seconds())
                out["TrainingTimeInSeconds"] = seconds
                out["BillableTimeInSeconds"] = seconds
            if self.failure_reason:
                out["FailureReason"] = self.failure_reason
        return out

    def finish_training(self, status: str, secondary: str, message: str, reason: str = "") -> None:
        self._set_secondary(secondary, message)
        self.finish(status, reason)

    def execute(self) -> None:
        s3 = self.server.s3
        self.emit()
        self.advance("Downloading", "Downloading input data")
        channels: dict[str, Path] = {}
        for channel in self.request.get("InputDataConfig", []):
            source = channel["DataSource"]["S3DataSource"]["S3Uri"]
            target = self.folder / "channels" / channel["ChannelName"]
            download_prefix(s3, source, target)
            channels[channel["ChannelName"]] = target
        hyper = dict(self.request.get("HyperParameters", {}))
        code = self._fetch_code(json.loads(hyper.get("sagemaker_submit_directory", '""')))
        if code is not None:
            hyper["sagemaker_submit_directory"] = json.dumps(str(code))
        layout = toolkit.lay_out(self.root, hyper, channels)
        checkpoints = self.request.get("CheckpointConfig")
        if checkpoints:
            download_prefix(s3, checkpoints["S3Uri"], layout.checkpoints)  # resume where an earlier attempt stopped
        self.advance("Training", "Training image download completed. Training in progress.")
        self.launched(toolkit.start(layout, self.log_path, self.request.get("Environment")))
        scraper = threading.Thread(target=self._scrape, daemon=True)
        scraper.start()
        limit = self.request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 86400)
        exit_code = self.wait(limit)
        scraper.join(timeout=5)
        self._scrape_once()
        if checkpoints:
            upload_folder(s3, layout.checkpoints, checkpoints["S3Uri"])
        if self.stop_requested:
            why = "The job was stopped"
            if self.stopped_early:
                why = "Stopped early by the tuning job's early-stopping rule"
            return self.finish_training("Stopped", "Stopped", why)
        if exit_code is None:
            return self.finish_training("Stopped", "MaxRuntimeExceeded", "The job exceeded MaxRuntimeInSeconds")
        if exit_code != 0:
            reason = (
                self.read_failure("failure") or f"AlgorithmError: the training process exited with code {exit_code}"
            )
            return self.finish_training("Failed", "Failed", "Training job failed", reason)
        self.advance("Uploading", "Uploading generated training model")
        output = self.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        bucket, key = split_s3(f"{output}/{self.name}/output/model.tar.gz")
        archive = self.folder / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(layout.model_dir.iterdir()):
                tar.add(path, arcname=path.name)
        s3.upload_file(str(archive), bucket, key)
        self.model_artifact = f"s3://{bucket}/{key}"
        self.finish_training("Completed", "Completed", "Training job completed")

    def _fetch_code(self, uri: str) -> Path | None:
        if not uri.startswith("s3://"):
            return None
        bucket, key = split_s3(uri)
        target = self.folder / "sourcedir"
        archive = self.folder / "sourcedir.tar.gz"
        self.server.s3.download_file(bucket, key, str(archive))
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        return target

    def _scrape_once(self) -> None:
        definitions = self.request["AlgorithmSpecification"].get("MetricDefinitions", [])
        if not definitions or not self.log_path.exists():
            return
        text = self.log_path.read_text(errors="replace")
        for definition in definitions:
            matches = re.findall(definition["Regex"], text, flags=re.M)
            values = []
            for match in matches:
                try:
                    values.append(float(match[0] if isinstance(match, tuple) else match))
                except ValueError:
                    continue
            if values:
                with self.lock:
                    self.series[definition["Name"]] = values
                    if self.metrics.get(definition["Name"], {}).get("Value") != values[-1]:
                        self.metrics[definition["Name"]] = {"Value": values[-1], "Timestamp": now()}

    def stop_early(self) -> None:
        self.stopped_early = True
        self.stop()

    def _scrape(self) -> None:
        while self.process is not None and self.process.poll() is None:
            self._scrape_once()
            time.sleep(1)


class TransformJob(Job):
    """A batch transform: the model's own handlers over every line of the input prefix."""

    kind = "transform"
    name_key, status_key, arn_kind = "TransformJobName", "TransformJobStatus", "transform-job"
    detail_type = "SageMaker Transform Job State Change"

    def describe(self) -> dict[str, Any]:
        out = {
            **self.request,
            "TransformJobArn": self.arn,
            "TransformJobStatus": self.status,
            "CreationTime": self.created,
        }
        out.pop("Tags", None)
        if self.started:
            out["TransformStartTime"] = self.started
        if self.ended:
            out["TransformEndTime"] = self.ended
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
        return out

    def execute(self) -> None:
        hosting = self.server.hosting
        self.emit()
        model = hosting.describe_model(self.request["ModelName"])
        container = model.get("PrimaryContainer") or model["Containers"][0]
        model_dir = hosting._unpack(self.request["ModelName"], hosting.model_data(container))
        source = self.request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        inputs, outputs = self.folder / "input", self.folder / "output"
        if download_prefix(self.server.s3, source, inputs) == 0:
            return self.finish("Failed", f"ClientError: no input objects under {source}")
        command = [sys.executable, "-m", "tuneloop.local.serving", "--model-dir", str(model_dir),
                   "--batch-input", str(inputs), "--batch-output", str(outputs)]  # fmt: skip
        with self.log_path.open("ab") as out:
            self.launched(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True))  # fmt: skip
        code = self.wait(self.request.get("ModelClientConfig", {}).get("InvocationsTimeoutInSeconds", 3600) * 24)
        if self.stop_requested:
            return self.finish("Stopped")
        if code != 0:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            return self.finish("Failed", "ClientError: " + " | ".join(tail))
        upload_folder(self.server.s3, outputs, self.request["TransformOutput"]["S3OutputPath"])
        self.finish("Completed")


class TuningJob(Job):
    """A hyperparameter tuning job: trials are local training jobs, chosen by ``tuner.Search``.

    One thread (this job's) asks, reports and tells; at most ``MaxParallelTrainingJobs``
    trials run at once. Trials are named ``<tuning job>-<NNN>-<8 hex>`` as on AWS, carry the
    tuning job's ARN and tags, and emit their own training events.
    """

    kind = "tuning"
    name_key, status_key, arn_kind = (
        "HyperParameterTuningJobName",
        "HyperParameterTuningJobStatus",
        "hyper-parameter-tuning-job",
    )
    detail_type = "SageMaker HyperParameter Tuning Job State Change"
    POLL_S = 0.5

    def __init__(self, server: LocalSageMaker, request: dict[str, Any]) -> None:
        super().__init__(server, request)
        from .tuner import Search, SearchSpaceError

        try:
            self.search = Search(request["HyperParameterTuningJobConfig"])
        except SearchSpaceError as exc:
            raise ServiceError("ValidationException", str(exc)) from exc
        self.trials: list[dict[str, Any]] = []  # summaries, as ListTrainingJobsFor… returns them
        self.best: dict[str, Any] | None = None
        self.wake = threading.Event()

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.request["HyperParameterTuningJobConfig"])

    def counters(self) -> tuple[dict[str, int], dict[str, int]]:
        status = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
        objective = {"Succeeded": 0, "Pending": 0, "Failed": 0}
        for trial in self.trials:
            state = trial["TrainingJobStatus"]
            status["NonRetryableError" if state == "Failed" else state] += 1
            objective[trial["ObjectiveStatus"]] += 1
        return status, objective

    def describe(self) -> dict[str, Any]:
        with self.lock:
            status, objective = self.counters()
            out = {
                **self.request,
                "HyperParameterTuningJobArn": self.arn,
                "HyperParameterTuningJobStatus": self.status,
                "CreationTime": self.created,
                "LastModifiedTime": self.ended or self.started or self.created,
                "TrainingJobStatusCounters": status,
                "ObjectiveStatusCounters": objective,
            }
            out.pop("Tags", None)
            if self.ended:
                out["HyperParameterTuningEndTime"] = self.ended
            if self.best:
                out["BestTrainingJob"] = dict(self.best)
            if self.failure_reason:
                out["FailureReason"] = self.failure_reason
        return out

    def trial_summaries(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(t) for t in self.trials]

    def stop(self) -> None:
        self.stop_requested = True
        self.wake.set()

    def execute(self) -> None:
        self.emit()
        warm = self.search.warm_start(self._parent_results())
        if warm:
            log.info("tuning job %s starts from %d finished parent trials", self.name, warm)
        limits = self.config["ResourceLimits"]
        max_jobs = int(limits["MaxNumberOfTrainingJobs"])
        parallel = max(1, int(limits.get("MaxParallelTrainingJobs", 1)))
        deadline = time.monotonic() + int(limits.get("MaxRuntimeInSeconds", 0) or 10**9)
        running: dict[str, tuple[TrainingJob, Any]] = {}
        launched = 0
        while not self.server.closing:
            for name, (job, trial) in list(running.items()):
                values = list(job.series.get(self.search.metric, []))
                if self.search.report(trial, values) and job.status == "InProgress" and not job.stop_requested:
                    log.info("tuning job %s stops trial %s early", self.name, name)
                    threading.Thread(target=job.stop_early, daemon=True).start()
                if job.status != "InProgress":
                    self._finished(job, trial)
                    del running[name]
            out_of_time = time.monotonic() > deadline
            if self.stop_requested or out_of_time:
                for job, _ in running.values():
                    if job.status == "InProgress" and not job.stop_requested:
                        threading.Thread(target=job.stop, daemon=True).start()
            elif launched < max_jobs:
                while len(running) < parallel and launched < max_jobs:
                    launched += 1
                    job, trial = self._launch(launched)
                    running[job.name] = (job, trial)
            if not running and (launched >= max_jobs or self.stop_requested or out_of_time):
                break
            self.wake.wait(self.POLL_S)
            self.wake.clear()
        self._conclude(stopped=self.stop_requested)

    def _launch(self, number: int) -> tuple[TrainingJob, Any]:
        trial = self.search.ask()
        definition = dict(self.request["TrainingJobDefinition"])
        static = dict(definition.pop("StaticHyperParameters", {}))
        spec = dict(definition.pop("AlgorithmSpecification"))
        name = f"{self.name}-{number:03d}-{uuid.uuid4().hex[:8]}"
        request = {
            "TrainingJobName": name,
            # AWS tells each trial its objective, as this reserved hyperparameter.
            "HyperParameters": {
                **static,
                **trial.hyperparameters,
                "_tuning_objective_metric": self.search.metric,
            },
            "AlgorithmSpecification": spec,
            **definition,
            "Tags": [*self.request.get("Tags", []), {"Key": "tuneloop:tuning-job", "Value": self.name}],
        }
        validate("CreateTrainingJob", request)
        job = TrainingJob(self.server, request, tuning_arn=self.arn)
        self.server.start(job)
        summary = {
            "TrainingJobName": name,
            "TrainingJobArn": job.arn,
            "TuningJobName": self.name,
            "CreationTime": job.created,
            "TrainingJobStatus": "InProgress",
            "TunedHyperParameters": dict(trial.hyperparameters),
            "ObjectiveStatus": "Pending",
        }
        with self.lock:
            self.trials.append(summary)
        self.server.save(self)
        return job, trial

    def _finished(self, job: TrainingJob, trial: Any) -> None:
        value = job.metrics.get(self.search.metric, {}).get("Value")
        if job.status == "Completed" and value is not None:
            outcome = "completed"
        elif job.stopped_early and trial.values:
            outcome, value = "stopped_early", trial.values[-1]
        else:
            outcome, value = "failed", None
        self.search.tell(trial, outcome, value)
        with self.lock:
            summary = next(t for t in self.trials if t["TrainingJobName"] == job.name)
            summary.update(TrainingJobStatus=job.status, TrainingStartTime=job.started, TrainingEndTime=job.ended)
            if job.failure_reason:
                summary["FailureReason"] = job.failure_reason
            if value is not None:
                summary["ObjectiveStatus"] = "Succeeded"
                summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                    "Type": "Maximize" if self.search.maximize else "Minimize",
                    "MetricName": self.search.metric,
                    "Value": value,
                }
            else:
                summary["ObjectiveStatus"] = "Failed"
            best_value = (self.best or {}).get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
            if outcome == "completed" and self.search.better(float(value), best_value):  # type: ignore[arg-type]
                self.best = dict(summary)
        self.server.save(self)

    def _conclude(self, stopped: bool) -> None:
        status, _ = self.counters()
        if stopped:
            return self.finish("Stopped")
        if not self.best and status["Completed"] == 0 and status["Stopped"] == 0:
            first = next((t.get("FailureReason") for t in self.trials if t.get("FailureReason")), "")
            return self.finish(
                "Failed", f"No training job succeeded: {status['NonRetryableError']} failed. First failure: {first}"
            )
        self.finish("Completed")

    def _parent_results(self) -> list[tuple[dict[str, str], float]]:
        parents = (self.request.get("WarmStartConfig") or {}).get("ParentHyperParameterTuningJobs", [])
        results = []
        for parent in parents:
            for trial in self.server.tuning_trials(parent["HyperParameterTuningJobName"]):
                metric = trial.get("FinalHyperParameterTuningJobObjectiveMetric")
                if trial.get("TrainingJobStatus") == "Completed" and metric:
                    results.append((trial["TunedHyperParameters"], metric["Value"]))
        return results

    def save_extra(self) -> None:
        (self.folder / "trials.json").write_text(json.dumps(self.trial_summaries(), default=_json_default))


# --- the server ---------------------------------------------------------------------------


class LocalSageMaker:
    """Job registry and operations; persisted under ``home`` so Describe survives restarts."""

    JOB_TYPES: Mapping[str, type[Job]] = {
        "processing": ProcessingJob,
        "training": TrainingJob,
        "tuning": TuningJob,
        "transform": TransformJob,
    }

    def __init__(self, home: Path, s3: Any, emit: Emit, cloudwatch: Any = None) -> None:
        from .hosting import Hosting

        self.home = home
        self.s3 = s3
        self.emit = emit
        self.jobs: dict[tuple[str, str], Job] = {}
        self.closing = False
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.registry = Registry(home / "registry.json", emit)
        self.hosting = Hosting(home / "hosting", s3, emit, cloudwatch, packages=self.registry)
        self._load()

    def close(self, grace_s: float = 10) -> None:
        """End running jobs (their processes run in sessions of their own, so nothing else
        would) and record them as failed, saying why."""
        self.closing = True
        self.hosting.close()
        for job in list(self.jobs.values()):
            if job.status != "InProgress":
                continue
            job.terminate(grace_s)
            with job.lock:
                job.status = "Failed"
                job.failure_reason = "InternalServerError: the local SageMaker server stopped during the job"
                job.ended = now()
            self.save(job)

    def _load(self) -> None:
        for kind in self.JOB_TYPES:
            for path in sorted((self.home / kind).glob("*/describe.json")):
                record = json.loads(path.read_text())
                status_key = self.JOB_TYPES[kind].status_key
                if record.get(status_key) in ("InProgress", "Stopping"):
                    # The process died with the previous server: say so, do not pretend.
                    record[status_key] = "Failed"
                    record["FailureReason"] = "InternalServerError: the local SageMaker server restarted during the job"
                    path.write_text(json.dumps(record, default=str))
                self.records[(kind, path.parent.name)] = record

    def save(self, job: Job) -> None:
        job.folder.mkdir(parents=True, exist_ok=True)
        record = json.loads(json.dumps(job.describe(), default=lambda d: d.timestamp()))
        (job.folder / "describe.json").write_text(json.dumps(record))
        if isinstance(job, TuningJob):
            job.save_extra()
        with self.lock:
            self.records[(job.kind, job.name)] = record

    def create(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        cls = self.JOB_TYPES[kind]
        name = request[cls.name_key]
        with self.lock:
            if (kind, name) in self.records or (kind, name) in self.jobs:
                existing = self.jobs.get((kind, name))
                arn = existing.arn if existing else self.records[(kind, name)].get(cls.arn_key(), name)
                raise ServiceError(
                    "ResourceInUse",
                    "Job name must be unique within an AWS account and region, "
                    f"and a job with this name already exists ({arn})",
                )
            job = cls(self, request)
            self.jobs[(kind, name)] = job
        self.save(job)
        threading.Thread(target=job.run, name=f"{kind}-{name}", daemon=True).start()
        return {cls.arn_key(): job.arn}

    def start(self, job: Job) -> Job:
        """Register and run a job the server made itself (a tuning job's trial)."""
        with self.lock:
            self.jobs[(job.kind, job.name)] = job
        self.save(job)
        threading.Thread(target=job.run, name=f"{job.kind}-{job.name}", daemon=True).start()
        return job

    def tuning_trials(self, name: str) -> list[dict[str, Any]]:
        job = self.jobs.get(("tuning", name))
        if isinstance(job, TuningJob):
            return job.trial_summaries()
        if ("tuning", name) not in self.records:
            raise ServiceError("ResourceNotFound", f"Amazon SageMaker can't find a tuning job with name {name}")
        path = self.home / "tuning" / name / "trials.json"
        return list(json.loads(path.read_text())) if path.is_file() else []

    def list_trials(self, params: Mapping[str, Any]) -> dict[str, Any]:
        trials = self.tuning_trials(params["HyperParameterTuningJobName"])
        if params.get("StatusEquals"):
            trials = [t for t in trials if t["TrainingJobStatus"] == params["StatusEquals"]]
        sort_by = params.get("SortBy", "CreationTime")
        descending = params.get("SortOrder", "Descending" if sort_by != "Name" else "Ascending") == "Descending"
        if sort_by == "FinalObjectiveMetricValue":
            # AWS lists the best first, whatever the objective's direction; no objective last.
            scored = [t for t in trials if t.get("FinalHyperParameterTuningJobObjectiveMetric")]
            rest = [t for t in trials if not t.get("FinalHyperParameterTuningJobObjectiveMetric")]
            maximize = any(
                t["FinalHyperParameterTuningJobObjectiveMetric"].get("Type", "Maximize") == "Maximize" for t in scored
            )
            scored.sort(key=lambda t: t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"], reverse=maximize)
            trials = scored + rest
        else:
            key = {"Name": "TrainingJobName", "Status": "TrainingJobStatus"}.get(sort_by, "CreationTime")
            trials.sort(key=lambda t: str(t.get(key)), reverse=descending)
        start = int(params.get("NextToken") or 0)
        size = int(params.get("MaxResults", 10))
        page: dict[str, Any] = {"TrainingJobSummaries": trials[start : start + size]}
        if start + size < len(trials):
            page["NextToken"] = str(start + size)
        return page

    def describe(self, kind: str, name: str) -> dict[str, Any]:
        job = self.jobs.get((kind, name))
        if job is not None:
            return job.describe()
        record = self.records.get((kind, name))
        if record is None and kind == "tuning":
            raise ServiceError("ResourceNotFound", f"Amazon SageMaker can't find a tuning job with name {name}")
        if record is None:
            raise ServiceError(
                "ValidationException", f"Requested resource not found: {kind} job {name} does not exist", 400
            )
        return record

    def stop(self, kind: str, name: str) -> dict[str, Any]:
        job = self.jobs.get((kind, name))
        if job is None or job.status != "InProgress":
            raise ServiceError("ValidationException", f"The {kind} job {name} is not in progress")
        threading.Thread(target=job.stop, daemon=True).start()
        return {}

    def list(self, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
        cls = self.JOB_TYPES[kind]
        items = [
            self.describe(k, n) for (k, n) in list({**self.records, **{key: {} for key in self.jobs}}) if k == kind
        ]
        if params.get("NameContains"):
            items = [i for i in items if params["NameContains"] in i[cls.name_key]]
        if params.get("StatusEquals"):
            items = [i for i in items if i[cls.status_key] == params["StatusEquals"]]
        summaries = [
            {
                cls.name_key: i[cls.name_key],
                cls.arn_key(): i.get(cls.arn_key()),
                cls.status_key: i[cls.status_key],
                "CreationTime": i.get("CreationTime"),
            }
            for i in items
        ]
        key = {"processing": "ProcessingJobSummaries", "training": "TrainingJobSummaries"}.get(
            kind, "HyperParameterTuningJobSummaries"
        )
        return {key: summaries[: params.get("MaxResults", 100)]}

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        validate(operation, params)
        handlers: dict[str, Callable[[], dict[str, Any]]] = {
            "CreateProcessingJob": lambda: self.create("processing", params),
            "DescribeProcessingJob": lambda: self.describe("processing", params["ProcessingJobName"]),
            "StopProcessingJob": lambda: self.stop("processing", params["ProcessingJobName"]),
            "ListProcessingJobs": lambda: self.list("processing", params),
            "CreateTrainingJob": lambda: self.create("training", params),
            "DescribeTrainingJob": lambda: self.describe("training", params["TrainingJobName"]),
            "StopTrainingJob": lambda: self.stop("training", params["TrainingJobName"]),
            "ListTrainingJobs": lambda: self.list("training", params),
            "CreateHyperParameterTuningJob": lambda: self.create("tuning", params),
            "DescribeHyperParameterTuningJob": lambda: self.describe("tuning", params["HyperParameterTuningJobName"]),
            "StopHyperParameterTuningJob": lambda: self.stop("tuning", params["HyperParameterTuningJobName"]),
            "ListTrainingJobsForHyperParameterTuningJob": lambda: self.list_trials(params),
            "CreateModelPackageGroup": lambda: self.registry.create_group(params),
            "CreateModelPackage": lambda: self.registry.create_package(params),
            "DescribeModelPackage": lambda: self.registry.describe(params["ModelPackageName"]),
            "UpdateModelPackage": lambda: self.registry.update(params),
            "ListModelPackages": lambda: self.registry.list(params),
            "CreateModel": lambda: self.hosting.create_model(params),
            "DescribeModel": lambda: self.hosting.describe_model(params["ModelName"]),
            "DeleteModel": lambda: self.hosting.delete_model(params["ModelName"]),
            "CreateEndpointConfig": lambda: self.hosting.create_endpoint_config(params),
            "DescribeEndpointConfig": lambda: self.hosting.describe_endpoint_config(params["EndpointConfigName"]),
            "DeleteEndpointConfig": lambda: self.hosting.delete_endpoint_config(params["EndpointConfigName"]),
            "CreateEndpoint": lambda: self.hosting.create_endpoint(params),
            "DescribeEndpoint": lambda: self.hosting.describe_endpoint(params["EndpointName"]),
            "UpdateEndpoint": lambda: self.hosting.update_endpoint(params),
            "DeleteEndpoint": lambda: self.hosting.delete_endpoint(params["EndpointName"]),
            "ListEndpoints": lambda: self.hosting.list_endpoints(params),
            "CreateTransformJob": lambda: self.create("transform", params),
            "DescribeTransformJob": lambda: self.describe("transform", params["TransformJobName"]),
            "StopTransformJob": lambda: self.stop("transform", params["TransformJobName"]),
        }
        handler = handlers.get(operation)
        if handler is None:
            raise ServiceError(
                "UnknownOperationException", f"{operation} is not implemented by the local SageMaker server"
            )
        return handler()


class Registry:
    """Model package groups and versioned packages, saved to ``registry.json``."""

    def __init__(self, path: Path, emit: Emit) -> None:
        self.path = path
        self.emit = emit
        self.lock = threading.Lock()
        data = json.loads(path.read_text()) if path.is_file() else {}
        self.groups: dict[str, dict[str, Any]] = data.get("groups", {})
        self.packages: dict[str, dict[str, Any]] = data.get("packages", {})
        self.tokens: dict[str, str] = data.get("tokens", {})

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"groups": self.groups, "packages": self.packages, "tokens": self.tokens}))
        tmp.replace(self.path)

    def _event(self, record: dict[str, Any]) -> None:
        self.emit(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "SageMaker Model Package State Change",
                "source": "aws.sagemaker",
                "account": ACCOUNT,
                "time": now().strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": REGION,
                "resources": [record["ModelPackageArn"]],
                "detail": json.loads(json.dumps(record)),
            }
        )

    def create_group(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = params["ModelPackageGroupName"]
        arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package-group/{name.lower()}"
        with self.lock:
            if name in self.groups:
                raise ServiceError("ValidationException", f"Model Package Group already exists: {arn}")
            self.groups[name] = {
                "ModelPackageGroupName": name,
                "ModelPackageGroupArn": arn,
                "ModelPackageGroupDescription": params.get("ModelPackageGroupDescription", ""),
                "CreationTime": now().timestamp(),
                "ModelPackageGroupStatus": "Completed",
            }
            self._save()
        return {"ModelPackageGroupArn": arn}

    def create_package(self, params: Mapping[str, Any]) -> dict[str, Any]:
        group = params.get("ModelPackageGroupName")
        token = params.get("ClientToken")
        with self.lock:
            if token and token in self.tokens:
                return {"ModelPackageArn": self.tokens[token]}
            if group not in self.groups:
                raise ServiceError("ValidationException", f"Model Package Group {group} does not exist")
            version = 1 + sum(1 for p in self.packages.values() if p["ModelPackageGroupName"] == group)
            arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{group.lower()}/{version}"
            record = {
                **{k: v for k, v in params.items() if k not in ("ClientToken", "Tags")},
                "ModelPackageArn": arn,
                "ModelPackageVersion": version,
                "ModelPackageStatus": "Completed",
                "ModelApprovalStatus": params.get("ModelApprovalStatus", "PendingManualApproval"),
                "CreationTime": now().timestamp(),
            }
            self.packages[arn] = record
            if token:
                self.tokens[token] = arn
            self._save()
        self._event(record)
        return {"ModelPackageArn": arn}

    def describe(self, name: str) -> dict[str, Any]:
        record = self.packages.get(name)
        if record is None:
            raise ServiceError("ValidationException", f"Model package {name} does not exist")
        return dict(record)

    def update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        arn = params["ModelPackageArn"]
        with self.lock:
            record = self.packages.get(arn)
            if record is None:
                raise ServiceError("ValidationException", f"Model package {arn} does not exist")
            changed = "ModelApprovalStatus" in params and params["ModelApprovalStatus"] != record["ModelApprovalStatus"]
            for key in ("ModelApprovalStatus", "ApprovalDescription", "CustomerMetadataProperties"):
                if key in params:
                    record[key] = params[key]
            record["LastModifiedTime"] = now().timestamp()
            self._save()
        if changed:
            self._event(record)
        return {"ModelPackageArn": arn}

    def list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        group = params.get("ModelPackageGroupName")
        items = [p for p in self.packages.values() if group in (None, p["ModelPackageGroupName"])]
        keys = (
            "ModelPackageGroupName",
            "ModelPackageVersion",
            "ModelPackageArn",
            "ModelApprovalStatus",
            "ModelPackageStatus",
            "CreationTime",
        )
        return {"ModelPackageSummaryList": [{k: p[k] for k in keys if k in p} for p in items]}


class SageMakerHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backend: LocalSageMaker, port: int = 0) -> None:
        self.backend = backend
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"cannot serialise {type(value).__name__}")


class _Handler(BaseHTTPRequestHandler):
    server: SageMakerHttpServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the second waits for the
    # client's delayed ACK of the first: +40 ms on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.startswith("/endpoints/") and self.path.endswith("/invocations"):
            return self._invoke(self.rfile.read(length))
        body = self.rfile.read(length) if length else b"{}"
        target = self.headers.get("X-Amz-Target", "")
        operation = target.split(".", 1)[1] if target.startswith("SageMaker.") else ""
        try:
            if not operation:
                raise ServiceError("UnknownOperationException", f"missing or foreign X-Amz-Target {target!r}")
            params = json.loads(body or b"{}")
            result = self.server.backend.call(operation, params)
            status, payload = 200, json.dumps(result, default=_json_default).encode()
        except ServiceError as exc:
            status = exc.status
            payload = json.dumps({"__type": exc.code, "message": exc.message}).encode()
        except json.JSONDecodeError as exc:
            status, payload = 400, json.dumps({"__type": "SerializationException", "message": str(exc)}).encode()
        self._reply(status, payload, {"Content-Type": "application/x-amz-json-1.1"})

    def _invoke(self, body: bytes) -> None:
        """SageMaker Runtime InvokeEndpoint (REST-JSON): POST /endpoints/<name>/invocations."""
        from urllib.parse import unquote

        name = unquote(self.path[len("/endpoints/") : -len("/invocations")])
        try:
            status, payload, headers = self.server.backend.hosting.invoke(
                name,
                body,
                self.headers.get("Content-Type", "application/json"),
                self.headers.get("Accept", "application/json"),
            )
        except ServiceError as exc:
            status, headers = exc.status, {"x-amzn-ErrorType": exc.code, "Content-Type": "application/json"}
            payload = json.dumps({"message": exc.message}).encode()
        self._reply(status, payload, headers)

    def _reply(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(home: Path, s3: Any, emit: Emit, port: int = 0, cloudwatch: Any = None) -> SageMakerHttpServer:
    """Start the server on a background thread; returns it (``.port``, ``.shutdown()``).
    The same port serves SageMaker Runtime's InvokeEndpoint (``/endpoints/<name>/invocations``)."""
    server = SageMakerHttpServer(LocalSageMaker(home, s3, emit, cloudwatch), port)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server


def code_version(source: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(source).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def upload_code(s3: Any, source: Path, bucket: str) -> str:
    """The training code as SageMaker jobs read it: a tarball and the files, once per version."""
    version = code_version(source)
    prefix = f"code/{version}"
    try:
        s3.head_object(Bucket=bucket, Key=f"{prefix}/sourcedir.tar.gz")
    except Exception:
        staging = Path(tempfile.mkdtemp(prefix="tuneloop-code-"))
        try:
            archive = staging / "sourcedir.tar.gz"
            files = [p for p in sorted(source.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
            with tarfile.open(archive, "w:gz") as tar:
                for path in files:
                    tar.add(path, arcname=path.relative_to(source).as_posix())
            for path in files:
                s3.upload_file(str(path), bucket, f"{prefix}/source/{path.relative_to(source).as_posix()}")
            s3.upload_file(str(archive), bucket, f"{prefix}/sourcedir.tar.gz")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return f"s3://{bucket}/{prefix}"
