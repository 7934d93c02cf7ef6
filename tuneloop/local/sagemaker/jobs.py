"""Processing, training and transform jobs: their descriptions and their processes.

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
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import regex

from ..container import toolkit
from ..container.pytorch import INSTANCES_ENV
from ..files import inside
from ..processes import group_alive, record_child, stop_group, wait_group
from .common import OPT_ML, PROCESSING_CODE, arn, check_channel, envelope, now
from .exceptions import ServiceError
from .staging import TRANSFER, Synced, download_prefix, split_s3, upload_folder
from .warmpool import keep_alive

log = logging.getLogger("tuneloop.sagemaker")
# In each job's folder: the request it was created with (what a restart runs again) and
# the PID of its process (what a restart reclaims if the previous server left it running).
REQUEST_FILE = "request.json"
PROCESS_FILE = "process.json"
# How long a stopped job's processes may take to checkpoint and exit before SIGKILL.
STOP_GRACE_S = 30
# How long one metric definition's regex may take over the job's log.
SCRAPE_TIMEOUT_S = 1.0
# What an ended job's folder keeps: its record, request and log. The rest (inputs, code,
# /opt/ml with its checkpoints and model) is the instance SageMaker gives back when a job
# ends; everything the job produced is in S3 by then.
RECORD_FILES = frozenset({"describe.json", REQUEST_FILE, PROCESS_FILE, "job.log", "trials.json"})


class Backend(Protocol):
    """What a job needs from the server that runs it."""

    home: Path
    s3: Any
    hosting: Any
    warm_pools: Any
    closing: bool
    # Jobs this server runs, and the records of every job it knows, by (kind, name).
    jobs: dict[tuple[str, str], Job]
    records: dict[tuple[str, str], dict[str, Any]]

    def emit(self, event: dict[str, Any]) -> object: ...

    def save(self, job: Job) -> None: ...

    def verify_code(self, uri: str, folder: Path) -> None: ...

    def check_request(self, kind: str, request: dict[str, Any]) -> None: ...

    def start(self, job: Job) -> Job: ...

    def tuning_trials(self, name: str) -> list[dict[str, Any]]: ...


def _time(value: Any) -> datetime | None:
    """A time from a job record (epoch seconds), or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


class Job:
    """One processing or training job: its description (what Describe returns) and process."""

    kind = "job"
    name_key = status_key = arn_kind = detail_type = ""
    start_key = ""  # the record's start time field

    @classmethod
    def arn_key(cls) -> str:
        return cls.name_key.replace("Name", "Arn")

    def __init__(self, server: Backend, request: dict[str, Any]) -> None:
        self.server = server
        self.request = request
        self.name: str = request[self.name_key]
        self.folder = server.home / self.kind / self.name
        self.arn = arn(self.arn_kind, self.name)
        self.created = now()
        self.status = "InProgress"
        self.failure_reason = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.stop_requested = False
        self.started: datetime | None = None
        self.ended: datetime | None = None
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.resumed = False

    def restore(self, record: dict[str, Any]) -> None:
        """Take back what the record of an interrupted job knows: when it was created and
        started (it resumes as the same job, as a spot job does after an interruption)."""
        self.created = _time(record.get("CreationTime")) or self.created
        self.started = _time(record.get(self.start_key)) if self.start_key else None
        self.resumed = True

    @property
    def root(self) -> Path:
        """Where /opt/ml lives for this job."""
        return self.folder / "opt" / "ml"

    def local(self, path: str) -> Path:
        """Where a container path is in this job's folder; never outside it."""
        if path == OPT_ML or path.startswith(OPT_ML + "/"):
            found = self.root / path[len(OPT_ML) :].lstrip("/")
        else:
            found = self.folder / path.lstrip("/")
        if inside(self.folder, found.relative_to(self.folder).as_posix()) is None:
            raise ServiceError("ValidationException", f"the path {path[:200]!r} leads outside the job's folder")
        return found

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
        return envelope(self.detail_type, self.arn, detail)

    def emit(self) -> None:
        self.server.emit(self.event())

    def run(self, resumed: bool = False) -> None:
        try:
            self.started = self.started if resumed and self.started else now()
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
        self.release()
        self.emit()

    def release(self) -> None:
        """Give the instance back: delete the ended job's working files. A demo's tuning
        trials would otherwise keep gigabytes of checkpoints and models on the disk."""
        if not self.folder.is_dir():
            return
        for entry in self.folder.iterdir():
            if entry.name in RECORD_FILES:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the process, killing it at the deadline; None when the deadline hit.
        Its whole group must be done before the job uploads anything: a toolkit stopped by
        SIGTERM exits at once while its training script still writes the checkpoint."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.terminate()
            return None
        wait_group(self.process, STOP_GRACE_S)
        return code

    def terminate(self, grace_s: float = STOP_GRACE_S) -> None:
        if self.process is None or (self.process.poll() is not None and not group_alive(self.process.pid)):
            return
        stop_group(self.process, grace_s)

    def stop(self) -> None:
        self.stop_requested = True
        self.terminate()

    def launched(self, process: subprocess.Popen[bytes]) -> None:
        """Record the job's process; a stop that came before it existed ends it now."""
        self.process = process
        record_child(process, self.folder / PROCESS_FILE)
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
    start_key = "ProcessingStartTime"
    detail_type = "SageMaker Processing Job State Change"
    exit_message = ""

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
        # As SageMaker does: /opt/ml/output/message, up to 1 KB, whether the job failed or not.
        if self.failure_reason or self.exit_message:
            out["ExitMessage"] = self.failure_reason or self.exit_message
        return out

    def execute(self) -> None:
        s3 = self.server.s3
        self.emit()
        code_uri = ""
        for item in self.request.get("ProcessingInputs", []):
            source = item.get("S3Input")
            if source:
                local = self.local(source["LocalPath"])
                shutil.rmtree(local, ignore_errors=True)  # a resumed job's earlier files (its __pycache__) go
                download_prefix(s3, source["S3Uri"], local)
                if source["LocalPath"].rstrip("/") == PROCESSING_CODE:
                    code_uri = source["S3Uri"].removesuffix("/source/")
        # What runs is what tuneloop staged, byte for byte (every input is in by now).
        self.server.verify_code(code_uri, self.local(PROCESSING_CODE))
        spec = self.request["AppSpecification"]
        command = [self._map(part) for part in (spec.get("ContainerEntrypoint") or [])]
        command += [self._map(part) for part in (spec.get("ContainerArguments") or [])]
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable  # the local cloud's interpreter has what the image would
        for output in self.request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            folder = self.local(output["S3Output"]["LocalPath"])
            shutil.rmtree(folder, ignore_errors=True)  # a resumed job starts its outputs afresh
            folder.mkdir(parents=True, exist_ok=True)
        env = {
            **toolkit.role_environment(),
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
        self.exit_message = self.read_failure("message")[:1024]
        self.finish("Completed")

    def _map(self, part: str) -> str:
        return re.sub(r"(?<![\w/])/opt/ml(?=/|$)", str(self.root), part)


class TrainingJob(Job):
    kind = "training"
    name_key, status_key, arn_kind = "TrainingJobName", "TrainingJobStatus", "training-job"
    start_key = "TrainingStartTime"
    detail_type = "SageMaker Training Job State Change"

    def __init__(self, server: Backend, request: dict[str, Any], tuning_arn: str | None = None) -> None:
        super().__init__(server, request)
        self.secondary = "Starting"
        self.transitions: list[dict[str, Any]] = []
        self.metrics: dict[str, dict[str, Any]] = {}
        # Every value each metric definition matched, in order: the tuner's intermediate values.
        self.series: dict[str, list[float]] = {}
        self.model_artifact = ""
        self.tuning_arn = tuning_arn
        self.stopped_early = False
        # Metric definitions whose regex ran out of time (or did not compile): not scraped again.
        self.dropped_metrics: set[str] = set()
        # A pool this job's record knew before a restart (the server's pools know the rest).
        self.warm_pool_record: dict[str, Any] | None = None
        self.on_end: Callable[[], None] | None = None
        # The checkpoints downloaded from S3, as they were: what need not go back up.
        self.synced: Synced = {}
        # The CPU threads this job's processes use (OMP_NUM_THREADS): a tuning job running
        # trials side by side splits this machine's cores between them. None: all of them.
        self.threads: int | None = None
        self._set_secondary("Starting", "Preparing the instances for training")

    def restore(self, record: dict[str, Any]) -> None:
        super().restore(record)
        self.tuning_arn = record.get("TuningJobArn") or self.tuning_arn
        pool = record.get("WarmPoolStatus")
        self.warm_pool_record = dict(pool) if isinstance(pool, dict) else None
        self.transitions = [
            {k: (_time(v) if k.endswith("Time") else v) for k, v in t.items()}
            for t in record.get("SecondaryStatusTransitions") or []
            if isinstance(t, dict)
        ]
        self._set_secondary("Restarting", "The local SageMaker restarted; the job resumes from its checkpoints")

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
            pool = self.server.warm_pools.status(self.name) or self.warm_pool_record
            if pool and keep_alive(self.request) > 0:
                out["WarmPoolStatus"] = pool
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

    def finish(self, status: str, reason: str = "") -> None:
        if not self.server.closing:
            self.server.warm_pools.release(self.name)  # its instance waits for the next job
        super().finish(status, reason)
        if self.on_end is not None:
            self.on_end()  # its tuning job launches the next trial now, not at its next poll

    def execute(self) -> None:
        s3 = self.server.s3
        self.emit()
        self.advance("Downloading", "Downloading input data")
        channels: dict[str, Path] = {}
        for channel in self.request.get("InputDataConfig", []):
            source = channel["DataSource"]["S3DataSource"]["S3Uri"]
            check_channel(channel["ChannelName"], "InputDataConfig.ChannelName")
            target = self.folder / "channels" / channel["ChannelName"]
            download_prefix(s3, source, target)
            channels[channel["ChannelName"]] = target
        hyper = dict(self.request.get("HyperParameters", {}))
        code = self._fetch_code(json.loads(hyper.get("sagemaker_submit_directory", '""')))
        hyper["sagemaker_submit_directory"] = json.dumps(str(code))
        layout = toolkit.lay_out(self.root, hyper, channels)
        # The toolkit copies the checked code into /opt/ml/code only when that folder is
        # empty: whatever an earlier attempt left there goes first.
        shutil.rmtree(layout.base / "code", ignore_errors=True)
        checkpoints = self.request.get("CheckpointConfig")
        if checkpoints:
            if self.resumed:
                # SageMaker syncs /opt/ml/checkpoints to S3 while a job runs: what the
                # interrupted process saved last goes up before anything comes down.
                upload_folder(s3, layout.checkpoints, checkpoints["S3Uri"])
            # Resume where an earlier attempt stopped.
            download_prefix(s3, checkpoints["S3Uri"], layout.checkpoints, synced=self.synced)
        instance, reused = self.server.warm_pools.acquire(self.name, self.request)
        if reused:
            self.advance("Training", f"Reusing the warm pool of training job {reused}. Training in progress.")
        else:
            self.advance("Training", "Training image download completed. Training in progress.")
        python = instance.python if instance is not None else None
        environment = dict(self.request.get("Environment") or {})
        instances = max(1, int(self.request.get("ResourceConfig", {}).get("InstanceCount", 1)))
        cores = self.threads or (os.cpu_count() if instances > 1 else None)
        if cores:
            # The instances of a job share the trial's (or this host's) cores.
            environment.setdefault("OMP_NUM_THREADS", str(max(1, cores // instances)))
        # As SageMaker's PyTorch images do: the framework layer picks the runner (torchrun
        # when the job is distributed), here with one process per instance on this host.
        environment["SAGEMAKER_TRAINING_MODULE"] = "tuneloop.local.container.pytorch:main"
        environment[INSTANCES_ENV] = str(instances)
        self.launched(toolkit.start(layout, self.log_path, environment, python=python))
        ended = threading.Event()
        scraper = threading.Thread(target=self._scrape, args=(ended,), daemon=True)
        scraper.start()
        limit = self.request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 86400)
        exit_code = self.wait(limit)
        ended.set()  # the scraper's wait ends now, not at its next tick
        scraper.join(timeout=5)
        self._scrape_once()
        if checkpoints:
            upload_folder(s3, layout.checkpoints, checkpoints["S3Uri"], synced=self.synced)
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
        # A gzip of stored blocks (level 0): model weights compress by under a tenth, and
        # finding that out costs seconds per job (2.8 s at level 1 for MiniLM's 87 MB).
        with tarfile.open(archive, "w:gz", compresslevel=0) as tar:
            for path in sorted(layout.model_dir.iterdir()):
                tar.add(path, arcname=path.name)
        s3.upload_file(str(archive), bucket, key, Config=TRANSFER)
        self.model_artifact = f"s3://{bucket}/{key}"
        self.finish_training("Completed", "Completed", "Training job completed")

    def _fetch_code(self, uri: str) -> Path:
        """The staged code the job runs, downloaded and checked against what was staged;
        a submit directory anywhere else (a local folder) is never run."""
        if not uri.startswith("s3://"):
            raise ServiceError("ValidationException", f"sagemaker_submit_directory {uri[:200]!r} is not staged code")
        bucket, key = split_s3(uri)
        target = self.folder / "sourcedir"
        archive = self.folder / "sourcedir.tar.gz"
        shutil.rmtree(target, ignore_errors=True)  # a resumed job's earlier copy is not trusted either
        self.server.s3.download_file(bucket, key, str(archive), Config=TRANSFER)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        self.server.verify_code(uri.removesuffix("/sourcedir.tar.gz"), target)
        return target

    def _scrape_once(self) -> None:
        """Each metric definition's values in the log so far. A definition's regex runs with
        a time bound (``SCRAPE_TIMEOUT_S``, the regex module's timeout): one that takes longer,
        such as ``(a+)+$`` on a line of a's, is dropped for this job and said so in its log,
        never left to hold the job's thread."""
        definitions = self.request["AlgorithmSpecification"].get("MetricDefinitions", [])
        if not definitions or not self.log_path.exists():
            return
        text = self.log_path.read_text(errors="replace")
        for definition in definitions:
            if definition["Name"] in self.dropped_metrics:
                continue
            try:
                matches = regex.findall(definition["Regex"], text, flags=regex.M, timeout=SCRAPE_TIMEOUT_S)
            except (TimeoutError, regex.error) as exc:
                self.dropped_metrics.add(definition["Name"])
                why = f"took over {SCRAPE_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else f"is not valid: {exc}"
                with self.log_path.open("a") as log_file:
                    log_file.write(f"MetricDefinitions {definition['Name']!r}: its Regex {why}; not scraped\n")
                continue
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

    def _scrape(self, ended: threading.Event) -> None:
        while not ended.is_set() and self.process is not None and self.process.poll() is None:
            self._scrape_once()
            ended.wait(1)


class TransformJob(Job):
    """A batch transform: the model's own handlers over every line of the input prefix."""

    kind = "transform"
    name_key, status_key, arn_kind = "TransformJobName", "TransformJobStatus", "transform-job"
    start_key = "TransformStartTime"
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
        model_dir = hosting.unpack(self.request["ModelName"], container)
        source = self.request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        inputs, outputs = self.folder / "input", self.folder / "output"
        if download_prefix(self.server.s3, source, inputs) == 0:
            return self.finish("Failed", f"ClientError: no input objects under {source}")
        command = [sys.executable, "-m", "tuneloop.local.container.serving", "--model-dir", str(model_dir),
                   "--batch-input", str(inputs), "--batch-output", str(outputs)]  # fmt: skip
        capture = self.request.get("DataCaptureConfig") or {}
        captured = self.folder / "capture"
        if capture.get("GenerateInferenceId"):
            command += ["--capture-output", str(captured)]
        env = toolkit.role_environment(aws=False)  # it reads and writes local files only
        with self.log_path.open("ab") as out:
            self.launched(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True, env=env))  # fmt: skip
        code = self.wait(self.request.get("ModelClientConfig", {}).get("InvocationsTimeoutInSeconds", 3600) * 24)
        if self.stop_requested:
            return self.finish("Stopped")
        if code != 0:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            return self.finish("Failed", "ClientError: " + " | ".join(tail))
        upload_folder(self.server.s3, outputs, self.request["TransformOutput"]["S3OutputPath"])
        if capture and captured.is_dir():
            # Under the job's name and the hour, as endpoints' capture files are laid out.
            stamp = now()
            destination = f"{capture['DestinationS3Uri'].rstrip('/')}/{self.name}/{stamp:%Y/%m/%d/%H}/"
            upload_folder(self.server.s3, captured, destination)
        self.finish("Completed")
