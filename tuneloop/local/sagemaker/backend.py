"""The local SageMaker's backend: its jobs, registry and hosting, and the operations the
wire protocol dispatches to. Persisted under ``home`` so Describe survives restarts."""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ...training_code import code_digest, upload_code
from ..container import toolkit
from ..processes import ProcessRecord, reclaim
from .common import PROCESSING_CODE, PROCESSING_ROOT, Emit, check_channel, envelope, read_json, write_json
from .exceptions import ServiceError
from .hosting import Hosting
from .jobs import PROCESS_FILE, REQUEST_FILE, STOP_GRACE_S, Job, ProcessingJob, TrainingJob, TransformJob
from .registry import Registry
from .runtime import Runtime
from .tuning import TuningJob
from .validation import validate
from .warmpool import WarmPools, terminated

# The programs tuneloop's jobs run: the processing scripts and the training entry point.
ENTRY_POINTS = frozenset({"prepare.py", "evaluate.py", "drift.py", "train.py"})
# The code versions this server may run (their S3 location → SHA-256), kept across restarts.
TRUSTED_CODE_FILE = "trusted-code.json"
# What a job's request may set in its Environment. Almost any other variable can change what
# runs or from where: the dynamic loader (LD_*), Python (PYTHON*), pip (PIP_*, XDG_* config),
# OpenSSL (OPENSSL_CONF loads modules), torchrun (PET_*: a rendezvous on every interface),
# the model hub (HF_*), the toolkit (SAGEMAKER_*, SM_*), the local cloud's own (AWS_*,
# TUNELOOP_*). tuneloop's own jobs set none; these tune threads and logging only.
ALLOWED_ENVIRONMENT = frozenset({"OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "TQDM_DISABLE",
                                 "PYTORCH_CUDA_ALLOC_CONF", "TRANSFORMERS_VERBOSITY"})  # fmt: skip
# Hyperparameters the toolkit reads to choose what runs: never a tuning range's.
RESERVED_HYPERPARAMETERS = ("sagemaker_", "_tuning")
log = logging.getLogger("tuneloop.sagemaker")


def _processing_path(path: object) -> bool:
    """Under /opt/ml/processing/, as SageMaker requires, with no '.' or '..' segments."""
    if not isinstance(path, str) or not path.startswith(PROCESSING_ROOT + "/"):
        return False
    return all(part not in ("", ".", "..") for part in path[len(PROCESSING_ROOT) + 1 :].rstrip("/").split("/"))


class LocalSageMaker:
    """Job registry and operations; persisted under ``home`` so Describe survives restarts."""

    JOB_TYPES: Mapping[str, type[Job]] = {
        "processing": ProcessingJob,
        "training": TrainingJob,
        "tuning": TuningJob,
        "transform": TransformJob,
    }

    def __init__(
        self, home: Path, s3: Any, emit: Emit, cloudwatch: Any = None, entry_points: frozenset[str] = ENTRY_POINTS
    ) -> None:
        self.home = home
        self.entry_points = entry_points
        trusted = read_json(home / TRUSTED_CODE_FILE)
        self.trusted_code: dict[str, str] = dict(trusted) if isinstance(trusted, dict) else {}
        self.s3 = s3
        self.emit = emit
        self.jobs: dict[tuple[str, str], Job] = {}
        self.closing = False
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.registry = Registry(home / "registry.json", emit)
        self.hosting = Hosting(home / "hosting", s3, emit, cloudwatch, packages=self.registry)
        self.runtime = Runtime(self.hosting, s3, cloudwatch)
        self.warm_pools = WarmPools(toolkit.instance_environment(), on_change=self._warm_pool_changed)
        self._load()

    def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop for now: end the running jobs' processes (they run in sessions of their
        own, so nothing else would; training checkpoints on SIGTERM) and leave their records
        in progress, to resume when the server starts again, as a spot job resumes."""
        self.closing = True
        self.runtime.close()
        self.hosting.close()
        running = [job for job in list(self.jobs.values()) if job.status == "InProgress"]
        stoppers = [threading.Thread(target=job.terminate, args=(grace_s,), daemon=True) for job in running]
        for thread in stoppers:
            thread.start()
        deadline = time.monotonic() + grace_s + 5
        for job in running:
            if job.thread is not None:  # its last uploads (a SIGTERM checkpoint) finish first
                job.thread.join(max(0.0, deadline - time.monotonic()))
        self.warm_pools.close()  # after the jobs: an instance's end kills what still runs on it

    def _load(self) -> None:
        """Read the job records; resume what the previous server left in progress."""
        unfinished = []
        for kind, cls in self.JOB_TYPES.items():
            for path in sorted((self.home / kind).glob("*/describe.json")):
                record = read_json(path)
                if not isinstance(record, dict):
                    log.error("job record %s is unreadable; moved aside to %s.corrupt", path, path.name)
                    path.replace(path.with_name(path.name + ".corrupt"))
                    continue
                gone = terminated(record) if kind == "training" else None
                if gone is not None:  # its instance did not outlive the server that held it
                    record["WarmPoolStatus"] = gone
                    write_json(path, record)
                self.records[(kind, path.parent.name)] = record
                if record.get(cls.status_key) in ("InProgress", "Stopping"):
                    unfinished.append((kind, path.parent.name, record))
        # Trials before tuning jobs: a tuning job takes its running trials back.
        for kind, name, record in sorted(unfinished, key=lambda u: u[0] == "tuning"):
            self._resume(kind, name, record)

    def _resume(self, kind: str, name: str, record: dict[str, Any]) -> None:
        cls = self.JOB_TYPES[kind]
        folder = self.home / kind / name
        left = ProcessRecord.load(folder / PROCESS_FILE)
        if left is not None and reclaim(left):
            log.info("ended the process the previous server left running for %s job %s", kind, name)
        request = read_json(folder / REQUEST_FILE)
        if not isinstance(request, dict):
            # Nothing to run it again from: end it, and say so as SageMaker would.
            record[cls.status_key] = "Failed"
            record["FailureReason"] = "InternalServerError: the job's request was lost when the server restarted"
            write_json(folder / "describe.json", record)
            self.emit(envelope(cls.detail_type, str(record.get(cls.arn_key(), name)), record))
            return
        job = cls(self, request)
        job.restore(record)
        with self.lock:
            self.jobs[(kind, name)] = job
        if record.get(cls.status_key) == "Stopping":  # a stop was on its way: it has happened
            job.thread = threading.Thread(target=job.finish, args=("Stopped",), daemon=True)
        else:
            log.info("resuming %s job %s after a restart", kind, name)
            job.thread = threading.Thread(target=job.run, kwargs={"resumed": True}, name=f"{kind}-{name}", daemon=True)
        job.thread.start()

    def save(self, job: Job) -> None:
        record = json.loads(json.dumps(job.describe(), default=lambda d: d.timestamp()))
        write_json(job.folder / "describe.json", record)
        if isinstance(job, TuningJob):
            job.save_extra()
        with self.lock:
            self.records[(job.kind, job.name)] = record

    def _warm_pool_changed(self, job_name: str) -> None:
        """A pool moved on (reused, or ended) after its job ended: its record says so."""
        job = self.jobs.get(("training", job_name))
        if job is not None:
            self.save(job)

    def stage_code(self, source: Path, bucket: str, s3: Any = None) -> str:
        """Upload a code folder as SageMaker jobs read it (``staging.upload_code``, with
        ``s3``: by default this server's client) and trust that version: its location and
        SHA-256 are the only code jobs may run."""
        uri = upload_code(s3 or self.s3, source, bucket)
        with self.lock:
            self.trusted_code[uri] = code_digest(source)
            write_json(self.home / TRUSTED_CODE_FILE, self.trusted_code)
        return uri

    def verify_code(self, uri: str, folder: Path) -> None:
        """The code a job downloaded from ``uri`` must be, byte for byte, what was staged there."""
        expected = self.trusted_code.get(uri)
        actual = code_digest(folder, staged_only=False)
        if expected is None or not hmac.compare_digest(actual, expected):
            raise ServiceError(
                "ValidationException",
                f"the code at {uri} is not the code tuneloop staged there (SHA-256 {actual[:16]}…): "
                "it was changed after it was staged; the job does not run it",
            )

    def _staged(self, uri: object, suffix: str, field: str) -> None:
        staged = [known for known in self.trusted_code if uri == known + suffix]
        if not staged:
            raise ServiceError(
                "ValidationException",
                f"{field} {str(uri)[:200]!r}: the local SageMaker runs only code tuneloop staged "
                f"(one of {sorted(self.trusted_code)[:3]}…, with {suffix!r})",
            )

    def check_request(self, kind: str, request: dict[str, Any]) -> None:
        """What a job may run: a job runs as the user who started the local cloud, so only
        tuneloop's own entry points, from code tuneloop staged (pinned by its SHA-256), with
        no environment variable that changes how Python, the loader or pip behave, reading
        and writing only under /opt/ml/processing/ (processing jobs, as on AWS)."""
        if kind == "processing":
            self._check_processing(request)
        elif kind == "training":
            self._check_training(request, "HyperParameters", "")
        elif kind == "tuning":
            self._check_tuning(request)
        elif kind == "transform":
            self._check_environment(request.get("Environment"), "Environment")

    def _check_tuning(self, request: dict[str, Any]) -> None:
        """Each training definition as a training job's; no range may set the toolkit's own
        hyperparameters (sagemaker_submit_directory would choose what each trial runs)."""
        definitions = [("TrainingJobDefinition", request.get("TrainingJobDefinition"))]
        definitions += [(f"TrainingJobDefinitions.{n}", d) for n, d in
                        enumerate(request.get("TrainingJobDefinitions") or [], 1)]  # fmt: skip
        config = request.get("HyperParameterTuningJobConfig") or {}
        ranges = [("HyperParameterTuningJobConfig.ParameterRanges", config.get("ParameterRanges"))]
        for field, definition in definitions:
            if definition is not None:
                self._check_training(definition, "StaticHyperParameters", f"{field}.")
                ranges.append((f"{field}.HyperParameterRanges", definition.get("HyperParameterRanges")))
        for field, by_kind in ranges:
            for kind, items in (by_kind or {}).items():
                for n, item in enumerate(items or [], 1):
                    name = str(item.get("Name"))
                    if name.startswith(RESERVED_HYPERPARAMETERS):
                        raise ServiceError(
                            "ValidationException",
                            f"{field}.{kind}.{n}.Name {name[:64]!r}: a tuning range may not set the toolkit's own "
                            "hyperparameters",
                        )

    def _check_training(self, definition: dict[str, Any], key: str, prefix: str) -> None:
        for n, channel in enumerate(definition.get("InputDataConfig") or [], 1):
            check_channel(channel.get("ChannelName"), f"{prefix}InputDataConfig.{n}.ChannelName")
        hyper = definition.get(key) or {}
        try:
            script = json.loads(hyper.get("sagemaker_program", '""'))
            submit = json.loads(hyper.get("sagemaker_submit_directory", '""'))
        except ValueError:
            script = submit = None
        if script not in self.entry_points:
            raise ServiceError(
                "ValidationException",
                f"entry point {script!r}: the local SageMaker runs only tuneloop's own ({sorted(self.entry_points)})",
            )
        self._staged(submit, "/sourcedir.tar.gz", f"{prefix}{key}.sagemaker_submit_directory")
        self._check_environment(definition.get("Environment"), f"{prefix}Environment")

    def _check_environment(self, environment: Any, field: str) -> None:
        for name in environment or {}:
            if name not in ALLOWED_ENVIRONMENT:
                raise ServiceError(
                    "ValidationException",
                    f"{field}.{name}: the local SageMaker lets a job set only "
                    f"{', '.join(sorted(ALLOWED_ENVIRONMENT))}; {name} could change how the loader, Python, pip, "
                    "torchrun or the toolkit behave, or is the local cloud's own",
                )

    def _check_processing(self, request: dict[str, Any]) -> None:
        command = list(request.get("AppSpecification", {}).get("ContainerEntrypoint") or [])
        script = command[1].rsplit("/", 1)[-1] if len(command) == 2 else ""
        if (
            command[:1] not in (["python3"], ["python"])
            or command[1:] != [f"{PROCESSING_CODE}/{script}"]
            or script not in self.entry_points
        ):
            raise ServiceError(
                "ValidationException",
                f"ContainerEntrypoint {command!r}: the local SageMaker runs only "
                f"['python3', '{PROCESSING_CODE}/<script>'] with one of {sorted(self.entry_points)}",
            )
        code = []
        for n, item in enumerate(request.get("ProcessingInputs") or [], 1):
            for kind in ("S3Input", "DatasetDefinition"):
                local = (item.get(kind) or {}).get("LocalPath")
                if local is None:
                    continue
                if not _processing_path(local):
                    raise ServiceError(
                        "ValidationException",
                        f"ProcessingInputs.{n}.{kind}.LocalPath {str(local)[:200]!r}: must be a path under "
                        f"{PROCESSING_ROOT}/ with no '.' or '..' segments",
                    )
                if local.rstrip("/") == PROCESSING_CODE:
                    code.append((item.get("S3Input") or {}).get("S3Uri"))
                elif local.startswith(PROCESSING_CODE + "/") or PROCESSING_CODE.startswith(local.rstrip("/") + "/"):
                    raise ServiceError(
                        "ValidationException",
                        f"ProcessingInputs.{n}.{kind}.LocalPath {local!r}: only the code input may write to or "
                        f"over {PROCESSING_CODE}",
                    )
        for n, output in enumerate((request.get("ProcessingOutputConfig") or {}).get("Outputs") or [], 1):
            local = (output.get("S3Output") or {}).get("LocalPath")
            if local is not None and (not _processing_path(local) or local.rstrip("/") == PROCESSING_CODE):
                raise ServiceError(
                    "ValidationException",
                    f"ProcessingOutputConfig.Outputs.{n}.S3Output.LocalPath {str(local)[:200]!r}: must be a path "
                    f"under {PROCESSING_ROOT}/ with no '.' or '..' segments, not the code's",
                )
        if len(code) != 1:
            raise ServiceError(
                "ValidationException", f"ProcessingInputs: exactly one input must bring the code to {PROCESSING_CODE}"
            )
        self._staged(code[0], "/source/", "the code input's S3Uri")
        self._check_environment(request.get("Environment"), "Environment")

    def create(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        cls = self.JOB_TYPES[kind]
        self.check_request(kind, request)
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
        return {cls.arn_key(): self.start(job).arn}

    def start(self, job: Job) -> Job:
        """Record a job (its request first: what a restart runs again) and run it."""
        with self.lock:
            self.jobs[(job.kind, job.name)] = job
        write_json(job.folder / REQUEST_FILE, job.request)
        self.save(job)
        job.thread = threading.Thread(target=job.run, name=f"{job.kind}-{job.name}", daemon=True)
        job.thread.start()
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
        if kind == "training" and params.get("WarmPoolStatusEquals"):
            wanted = params["WarmPoolStatusEquals"]
            items = [i for i in items if (i.get("WarmPoolStatus") or {}).get("Status") == wanted]
        summaries = [
            {
                cls.name_key: i[cls.name_key],
                cls.arn_key(): i.get(cls.arn_key()),
                cls.status_key: i[cls.status_key],
                "CreationTime": i.get("CreationTime"),
                **({"WarmPoolStatus": i["WarmPoolStatus"]} if i.get("WarmPoolStatus") else {}),
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
            "DeleteModelPackage": lambda: self.registry.delete_package(params["ModelPackageName"]),
            "DeleteModelPackageGroup": lambda: self.registry.delete_group(params["ModelPackageGroupName"]),
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
