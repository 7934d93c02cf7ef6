"""The local SageMaker's hosting: models, endpoint configs and endpoints.

An endpoint's production variant is a *fleet*: one ``tuneloop.local.container.serving`` process
that loads the model's ``model.tar.gz`` and answers ``/ping`` and ``/invocations``
(``runtime.py`` serves InvokeEndpoint on top of the fleets).

``UpdateEndpoint`` is blue/green: the new fleet starts beside the old one, traffic moves
as the ``BlueGreenUpdatePolicy`` says (canary, linear or all at once), then bakes for
``TerminationWaitInSeconds``. If an ``AutoRollbackConfiguration`` alarm is in ALARM at any
point, traffic returns to the old fleet and the new one stops; no request is dropped
either way, because a fleet stops only once its in-flight requests are answered. Endpoint
and deployment state changes are emitted as AWS-shaped events (endpoint statuses upper
case, as EventBridge carries them). Endpoints in service are started again when the
server restarts.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import random
import secrets
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ..container import toolkit
from ..container.serving import STREAM_HEADER, TOKEN_ENV
from ..processes import ProcessRecord, reclaim, record_child
from .common import Emit, arn, check_channel, envelope, now, read_json, write_json
from .exceptions import ServiceError
from .staging import TRANSFER, download_prefix, split_s3

log = logging.getLogger("tuneloop.hosting")
READY_TIMEOUT_S = 180
# How long a request waits for an endpoint's serving process to start again after a restart.
RESTART_WAIT_S = READY_TIMEOUT_S
# Beside each fleet's log: the PID of its model server.
PROCESS_SUFFIX = ".process.json"
POLL_S = 0.25


def _event_status(status: str) -> str:
    """Describe says InService; EventBridge says IN_SERVICE."""
    out = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(status))
    return out.upper()


class Fleet:
    """One variant's serving process for one endpoint config."""

    def __init__(self, endpoint: str, config: str, variant: str, model_dir: Path, log_path: Path) -> None:
        self.endpoint, self.config, self.variant = endpoint, config, variant
        self.model_dir = model_dir
        self.log_path = log_path
        self.port_file = log_path.with_suffix(".port")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.in_flight = 0
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.failed = ""
        # What the serving process asks of every caller: only this runtime knows it.
        self.token = secrets.token_urlsafe(24)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> None:
        self.port_file.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**toolkit.role_environment(aws=False), TOKEN_ENV: self.token}
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tuneloop.local.container.serving", "--model-dir", str(self.model_dir),
                 "--port-file", str(self.port_file)],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )  # fmt: skip
        record_child(self.process, self.log_path.with_suffix(PROCESS_SUFFIX))

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until the port file appears and /ping answers 200; raises with the log's tail."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.port_file.is_file():
                self.port = int(self.port_file.read_text())
                if self._ping():
                    self.ready.set()
                    return
            time.sleep(POLL_S)
        tail = self.log_path.read_text(errors="replace")[-800:] if self.log_path.is_file() else ""
        self.failed = (
            f"The primary container for production variant {self.variant} did not pass the ping health check. {tail}"
        )
        self.stop(drain_s=0)
        raise RuntimeError(self.failed)

    def _ping(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("GET", "/ping", headers=self.auth)
            ok = connection.getresponse().status == 200
            connection.close()
            return ok
        except OSError:
            return False

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[int, bytes, str]:
        with self.cond:
            self.in_flight += 1
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            connection.request(
                "POST", "/invocations", body=body, headers={"Content-Type": content_type, "Accept": accept, **self.auth}
            )
            response = connection.getresponse()
            answer = response.read()
            mime = response.getheader("Content-Type", "application/json")
            connection.close()
            return response.status, answer, mime
        finally:
            with self.cond:
                self.in_flight -= 1
                self.cond.notify_all()

    def invoke_stream(self, body: bytes, content_type: str, accept: str) -> tuple[int, Any, str]:
        """(200, the answer's chunks as they come, mime) or (status, error body, mime)."""
        with self.cond:
            self.in_flight += 1
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            headers = {"Content-Type": content_type, "Accept": accept, STREAM_HEADER: "1", **self.auth}
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            mime = response.getheader("Content-Type", "application/json")
        except BaseException:
            self._done()
            raise
        if response.status != 200:
            answer = response.read()
            connection.close()
            self._done()
            return response.status, answer, mime

        def chunks() -> Any:
            try:
                while piece := response.read1(65536):
                    yield piece
            finally:
                connection.close()
                self._done()

        return 200, chunks(), mime

    def _done(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def stop(self, drain_s: float = 60) -> None:
        """Answer what is in flight, then end the process."""
        with self.cond:
            self.cond.wait_for(lambda: self.in_flight == 0, timeout=drain_s)
        if self.process is None or self.process.poll() is not None:
            return
        try:
            if self.process.stdin:
                self.process.stdin.close()  # the server's cue to shut down
            self.process.wait(10)
        except (subprocess.TimeoutExpired, OSError):
            self.process.kill()
            self.process.wait()


class Endpoint:
    def __init__(self, hosting: Hosting, name: str, config: str, tags: list[dict[str, str]]) -> None:
        self.hosting = hosting
        self.name = name
        self.config = config
        self.tags = tags
        self.status = "Creating"
        self.failure_reason = ""
        self.created = now()
        self.modified = self.created
        self.fleets: list[tuple[Fleet, float]] = []
        self.lock = threading.Lock()
        self.target_config: str | None = None
        self.deployment: dict[str, Any] = {}
        # While a blue/green update runs: its phase (VariantStatus) and since when.
        self.phase: tuple[str, str, datetime] | None = None
        self.update_started: datetime | None = None
        # Set while no fleet is being started: an endpoint in service whose serving process
        # is starting again (after a restart) answers once it is up, not with an error.
        self.settled = threading.Event()
        self.settled.set()

    @property
    def arn(self) -> str:
        return arn("endpoint", self.name)

    def describe(self) -> dict[str, Any]:
        with self.lock:
            variants = [
                {
                    "VariantName": fleet.variant,
                    "CurrentWeight": weight,
                    "DesiredWeight": weight,
                    "CurrentInstanceCount": 1,
                    "DesiredInstanceCount": 1,
                }
                for fleet, weight in self.fleets
                if fleet.config == self.config
            ]
            out: dict[str, Any] = {
                "EndpointName": self.name,
                "EndpointArn": self.arn,
                "EndpointConfigName": self.config,
                "ProductionVariants": variants,
                "EndpointStatus": self.status,
                "CreationTime": self.created,
                "LastModifiedTime": self.modified,
            }
            if self.failure_reason:
                out["FailureReason"] = self.failure_reason
            if self.target_config and self.update_started:
                # The new (green) fleet of a blue/green update, and its share of traffic.
                green = [(fleet, weight) for fleet, weight in self.fleets if fleet.config == self.target_config]
                phase = self.phase or ("Creating", "starting the new fleet", self.update_started)
                out["PendingDeploymentSummary"] = {
                    "EndpointConfigName": self.target_config,
                    "StartTime": self.update_started,
                    "ProductionVariants": [
                        {
                            "VariantName": fleet.variant,
                            "CurrentWeight": weight,
                            "DesiredWeight": 1.0,
                            "CurrentInstanceCount": 1,
                            "DesiredInstanceCount": 1,
                            "VariantStatus": [{"Status": phase[0], "StatusMessage": phase[1], "StartTime": phase[2]}],
                        }
                        for fleet, weight in green
                    ],
                }
            config = self.hosting.configs.get(self.config, {})
            capture = config.get("DataCaptureConfig")
            if capture:
                out["DataCaptureConfig"] = {
                    "EnableCapture": bool(capture.get("EnableCapture", True)),
                    "CaptureStatus": "Started",
                    "CurrentSamplingPercentage": capture["InitialSamplingPercentage"],
                    "DestinationS3Uri": capture["DestinationS3Uri"],
                }
        return out

    def set_status(self, status: str, reason: str = "") -> None:
        with self.lock:
            self.status = status
            self.failure_reason = reason[:1024]
            self.modified = now()
        self.hosting.save()
        self.hosting.emit(self.hosting.endpoint_event(self))

    def pick(self) -> Fleet:
        with self.lock:
            fleets = [(f, w) for f, w in self.fleets if w > 0]
        if not fleets and self.status in ("InService", "Updating") and self.settled.wait(RESTART_WAIT_S):
            with self.lock:
                fleets = [(f, w) for f, w in self.fleets if w > 0]
        if not fleets:
            raise ServiceError("ValidationError", f"Endpoint {self.name} is not in service", 400)
        roll = random.random() * sum(w for _, w in fleets)
        for fleet, weight in fleets:
            roll -= weight
            if roll <= 0:
                return fleet
        return fleets[-1][0]


class Hosting:
    """Models, endpoint configs and endpoints; saved to ``hosting.json``."""

    def __init__(self, home: Path, s3: Any, emit: Emit, cloudwatch: Any = None, packages: Any = None) -> None:
        self.home = home
        self.s3 = s3
        self.emit = emit
        self.cloudwatch = cloudwatch
        self.packages = packages
        self.models: dict[str, dict[str, Any]] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.lock = threading.RLock()
        self.closing = False
        self._reclaim()
        self._load()

    # --- persistence -------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.home / "hosting.json"

    def save(self) -> None:
        with self.lock:
            data = {
                "models": self.models,
                "configs": self.configs,
                "endpoints": {
                    name: {
                        "config": e.config,
                        "status": e.status,
                        "created": e.created.timestamp(),
                        "tags": e.tags,
                        # An update in flight, to finish after a restart.
                        "target_config": e.target_config,
                        "deployment": e.deployment,
                    }
                    for name, e in self.endpoints.items()
                },
            }
            write_json(self.path, data)

    def _reclaim(self) -> None:
        """End the model servers a previous server left running (it died without stopping them)."""
        for path in sorted((self.home / "endpoints").glob(f"*/*{PROCESS_SUFFIX}")):
            record = ProcessRecord.load(path)
            if record is not None and reclaim(record):
                log.info("ended the model server %s the previous server left running", path.name)
            path.unlink(missing_ok=True)

    def _load(self) -> None:
        data = read_json(self.path)
        if not isinstance(data, dict):
            return
        self.models, self.configs = data.get("models", {}), data.get("configs", {})
        for name, record in data.get("endpoints", {}).items():
            endpoint = Endpoint(self, name, record["config"], record.get("tags", []))
            endpoint.created = datetime.fromtimestamp(record["created"], now().tzinfo)
            self.endpoints[name] = endpoint
            target = record.get("target_config")
            if record["status"] == "Updating" and target in self.configs:
                # The serving processes ended with the previous server: serve the old model
                # again, then carry the update through, with its events, as it would have gone.
                endpoint.status, endpoint.target_config = "Updating", target
                endpoint.update_started = now()
                endpoint.deployment = dict(record.get("deployment") or {})
                endpoint.settled.clear()
                threading.Thread(target=self._resume_update, args=(endpoint,), daemon=True).start()
            elif record["status"] in ("InService", "Updating"):
                # The serving process ended with the previous server: start it again.
                endpoint.status = "InService"
                endpoint.settled.clear()
                threading.Thread(target=self._bring_up, args=(endpoint, True), daemon=True).start()
            elif record["status"] == "Creating":
                threading.Thread(target=self._bring_up, args=(endpoint,), daemon=True).start()
            else:
                endpoint.status = record["status"]

    def _resume_update(self, endpoint: Endpoint) -> None:
        self._bring_up(endpoint, restarting=True)
        if endpoint.fleets and endpoint.target_config:
            log.info("endpoint %s resumes its update to %s", endpoint.name, endpoint.target_config)
            self._blue_green(endpoint, endpoint.target_config, endpoint.deployment)

    def close(self) -> None:
        self.closing = True
        for endpoint in list(self.endpoints.values()):
            for fleet, _ in list(endpoint.fleets):
                fleet.stop(drain_s=5)

    # --- models and configs --------------------------------------------------------------

    def create_model(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = params["ModelName"]
        with self.lock:
            if name in self.models:
                raise ServiceError(
                    "ValidationException", f'Cannot create already existing model "{arn("model", name)}".'
                )
            container = params.get("PrimaryContainer") or (params.get("Containers") or [None])[0]
            if not container:
                raise ServiceError("ValidationException", "A model needs a PrimaryContainer")
            self.model_data(container)  # a package that does not exist fails now, as on AWS
            self.models[name] = {**params, "ModelArn": arn("model", name), "CreationTime": now().timestamp()}
        self.save()
        return {"ModelArn": arn("model", name)}

    def model_data(self, container: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
        """The container as it serves (a package's as it was registered) and since when its
        pins hold. What was approved is what serves: an artifact whose ETag the package pins,
        replaced since, is refused here and, should it be replaced meanwhile, when it is
        fetched (``_fetch`` asks for the pinned ETag)."""
        name = container.get("ModelPackageName")
        if name:
            container = self.packages.describe(name)["InferenceSpecification"]["Containers"][0]
        elif not container.get("ModelDataUrl"):
            raise ServiceError("ValidationException", "The container names neither ModelDataUrl nor ModelPackageName")
        since = f"{name} was registered" if name else "the model was made"
        self._check_pin(str(container["ModelDataUrl"]), container.get("ModelDataETag"), since)
        for n, source in enumerate(container.get("AdditionalModelDataSources") or [], 1):
            check_channel(source.get("ChannelName"), f"AdditionalModelDataSources.{n}.ChannelName")
            self._check_pin(source["S3DataSource"]["S3Uri"], source["S3DataSource"].get("ETag"), since)
        return container, since

    def _check_pin(self, uri: str, pinned: Any, since: str) -> None:
        if not pinned:
            return
        bucket, key = split_s3(uri)
        now = str(self.s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
        if now != str(pinned).strip('"'):
            raise self._changed(uri, since, f"ETag {now}, pinned {pinned}")

    @staticmethod
    def _changed(uri: str, since: str, detail: str) -> ServiceError:
        return ServiceError("ValidationException", f"the model data at {uri} changed since {since} ({detail})")

    def describe_model(self, name: str) -> dict[str, Any]:
        if name not in self.models:
            raise ServiceError("ValidationException", f'Could not find model "{arn("model", name)}".')
        return dict(self.models[name])

    def delete_model(self, name: str) -> dict[str, Any]:
        with self.lock:
            if self.models.pop(name, None) is None:
                raise ServiceError("ValidationException", f'Could not find model "{arn("model", name)}".')
        self.save()
        return {}

    def create_endpoint_config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = params["EndpointConfigName"]
        config_arn = arn("endpoint-config", name)
        with self.lock:
            if name in self.configs:
                raise ServiceError(
                    "ValidationException", f'Cannot create already existing endpoint configuration "{config_arn}".'
                )
            for variant in params["ProductionVariants"]:
                if variant.get("ModelName") not in self.models:
                    raise ServiceError("ValidationException", f'Could not find model "{variant.get("ModelName")}".')
            self.configs[name] = {**params, "EndpointConfigArn": config_arn, "CreationTime": now().timestamp()}
        self.save()
        return {"EndpointConfigArn": config_arn}

    def describe_endpoint_config(self, name: str) -> dict[str, Any]:
        if name not in self.configs:
            raise ServiceError("ValidationException", f'Could not find endpoint configuration "{name}".')
        return dict(self.configs[name])

    def delete_endpoint_config(self, name: str) -> dict[str, Any]:
        with self.lock:
            if self.configs.pop(name, None) is None:
                raise ServiceError("ValidationException", f'Could not find endpoint configuration "{name}".')
        self.save()
        return {}

    # --- endpoints -----------------------------------------------------------------------

    def _endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise ServiceError("ValidationException", f'Could not find endpoint "{name}".')
        return endpoint

    def create_endpoint(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name, config = params["EndpointName"], params["EndpointConfigName"]
        with self.lock:
            if name in self.endpoints:
                raise ServiceError(
                    "ValidationException", f'Cannot create already existing endpoint "{arn("endpoint", name)}".'
                )
            self.describe_endpoint_config(config)
            endpoint = Endpoint(self, name, config, list(params.get("Tags", [])))
            self.endpoints[name] = endpoint
        self.save()
        self.emit(self.endpoint_event(endpoint))
        threading.Thread(target=self._bring_up, args=(endpoint,), daemon=True).start()
        return {"EndpointArn": endpoint.arn}

    def _bring_up(self, endpoint: Endpoint, restarting: bool = False) -> None:
        """Start the endpoint's fleet; requests that arrive meanwhile wait for it to be ready."""
        try:
            try:
                fleet = self._start_fleet(endpoint.name, endpoint.config)
                with endpoint.lock:
                    endpoint.fleets = [(fleet, 1.0)]
            finally:
                endpoint.settled.set()
            fleet.wait_ready()
        except Exception as exc:
            log.exception("endpoint %s failed to start", endpoint.name)
            with endpoint.lock:
                endpoint.fleets = []
            endpoint.set_status("Failed", str(exc))
            return
        if restarting:
            log.info("endpoint %s serves again after the restart", endpoint.name)
            return
        endpoint.set_status("InService")

    def _start_fleet(self, endpoint: str, config_name: str) -> Fleet:
        config = self.configs[config_name]
        variant = config["ProductionVariants"][0]
        model = self.models[variant["ModelName"]]
        container = model.get("PrimaryContainer") or model["Containers"][0]
        model_dir = self.unpack(variant["ModelName"], container)
        fleet = Fleet(endpoint, config_name, variant["VariantName"], model_dir,
                      self.home / "endpoints" / endpoint / f"{config_name}.log")  # fmt: skip
        fleet.start()
        return fleet

    def unpack(self, model_name: str, container: Mapping[str, Any]) -> Path:
        """A model's data laid out as SageMaker lays out /opt/ml: ``model/`` (model.tar.gz
        unpacked) and ``additional-model-data-sources/<channel>/`` for each further source.
        Returns the model folder."""
        container, since = self.model_data(container)
        uri = str(container["ModelDataUrl"])
        root = self.home / "models" / model_name
        if (root / ".laid-out").is_file():
            return root / "model"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self._fetch(uri, "S3Object", "Gzip", root / "model", container.get("ModelDataETag"), since)
        for source in container.get("AdditionalModelDataSources") or []:
            s3 = source["S3DataSource"]
            target = root / "additional-model-data-sources" / source["ChannelName"]
            self._fetch(s3["S3Uri"], s3["S3DataType"], s3.get("CompressionType", "None"), target, s3.get("ETag"), since)
        (root / ".laid-out").write_text(uri)
        return root / "model"

    def _fetch(
        self, uri: str, data_type: str, compression: str, target: Path, pinned: Any = None, since: str = ""
    ) -> None:
        if data_type == "S3Prefix":
            if download_prefix(self.s3, uri, target) == 0:
                raise ServiceError("ValidationException", f"no model data under {uri}")
            return
        bucket, key = split_s3(uri)
        target.mkdir(parents=True)
        path = target / key.rsplit("/", 1)[-1] if compression != "Gzip" else target.with_name(f"{target.name}.tar.gz")
        self._download(bucket, key, path, pinned, since)
        if compression == "Gzip":
            with tarfile.open(path) as tar:
                tar.extractall(target, filter="data")
            path.unlink()

    def _download(self, bucket: str, key: str, path: Path, pinned: Any, since: str) -> None:
        """The object into ``path``; a pinned one only as it was pinned (GetObject with
        If-Match: no window between the pin's check and the bytes read)."""
        if not pinned:
            self.s3.download_file(bucket, key, str(path), Config=TRANSFER)
            return
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key, IfMatch='"' + str(pinned).strip('"') + '"')["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise self._changed(f"s3://{bucket}/{key}", since, f"not the pinned ETag {pinned}") from exc
            raise
        with path.open("wb") as out:
            shutil.copyfileobj(body, out, 1 << 20)

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        return self._endpoint(name).describe()

    def list_endpoints(self, params: Mapping[str, Any]) -> dict[str, Any]:
        items = [e.describe() for e in self.endpoints.values()]
        keys = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus")
        return {"Endpoints": [{k: i[k] for k in keys} for i in items]}

    def delete_endpoint(self, name: str) -> dict[str, Any]:
        with self.lock:
            endpoint = self._endpoint(name)
            del self.endpoints[name]
        self.save()
        for fleet, _ in endpoint.fleets:
            threading.Thread(target=fleet.stop, daemon=True).start()
        return {}

    def update_endpoint(self, params: Mapping[str, Any]) -> dict[str, Any]:
        endpoint = self._endpoint(params["EndpointName"])
        config = params["EndpointConfigName"]
        self.describe_endpoint_config(config)
        with endpoint.lock:
            if endpoint.status != "InService":
                raise ServiceError(
                    "ValidationException",
                    f'Cannot update in-progress endpoint "{endpoint.arn}".',
                )
            endpoint.target_config = config
            endpoint.deployment = dict(params.get("DeploymentConfig") or {})
            endpoint.update_started = now()
            endpoint.phase = ("Creating", "starting the new fleet", endpoint.update_started)
        endpoint.set_status("Updating")
        threading.Thread(
            target=self._blue_green, args=(endpoint, config, dict(params.get("DeploymentConfig") or {})), daemon=True
        ).start()
        return {"EndpointArn": endpoint.arn}

    def _blue_green(self, endpoint: Endpoint, config: str, deployment: Mapping[str, Any]) -> None:
        policy = deployment.get("BlueGreenUpdatePolicy") or {}
        routing = policy.get("TrafficRoutingConfiguration") or {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
        alarms = [a["AlarmName"] for a in (deployment.get("AutoRollbackConfiguration") or {}).get("Alarms", [])]
        old = [fleet for fleet, _ in endpoint.fleets]
        self._deployment_event(endpoint, config, "CREATING_NEW_FLEET", "starting the new fleet")
        try:
            green = self._start_fleet(endpoint.name, config)
            green.wait_ready()
        except Exception as exc:
            return self._roll_back(endpoint, config, None, f"the new fleet failed to start: {exc}")
        wait = float(routing.get("WaitIntervalInSeconds", 0))
        steps: list[tuple[float, float]]
        if routing["Type"] == "CANARY":
            steps = [(routing["CanarySize"]["Value"] / 100.0, wait), (1.0, 0.0)]
        elif routing["Type"] == "LINEAR":
            step = routing["LinearStepSize"]["Value"] / 100.0
            count = math.ceil(1 / step - 1e-9)
            steps = [(min(1.0, step * (n + 1)) if n + 1 < count else 1.0, wait) for n in range(count)]
            steps[-1] = (1.0, 0.0)
        else:
            steps = [(1.0, 0.0)]
        for share, hold in steps:
            with endpoint.lock:
                endpoint.fleets = [(green, share)] + [(fleet, 1.0 - share) for fleet in old]
                endpoint.phase = ("ActivatingTraffic", f"{share:.0%} of traffic on the new fleet", now())
            self._deployment_event(endpoint, config, "TRAFFIC_SHIFTING", f"{share:.0%} of traffic on the new fleet")
            fired = self._watch(alarms, hold)
            if fired:
                return self._roll_back(endpoint, config, green, f"alarm {fired} went into ALARM while shifting traffic")
        baking = float(policy.get("TerminationWaitInSeconds", 0))
        with endpoint.lock:
            endpoint.phase = ("Baking", f"baking for {baking:.0f}s", now())
        self._deployment_event(endpoint, config, "BAKING", f"baking for {baking:.0f}s")
        fired = self._watch(alarms, baking)
        if fired:
            return self._roll_back(endpoint, config, green, f"alarm {fired} went into ALARM during baking")
        with endpoint.lock:
            endpoint.fleets = [(green, 1.0)]
            endpoint.config = config
            endpoint.target_config = None
            endpoint.phase = endpoint.update_started = None
        for fleet in old:
            fleet.stop()
        self._deployment_event(endpoint, config, "COMPLETED", "the new fleet serves all traffic")
        endpoint.set_status("InService")

    def _watch(self, alarms: list[str], seconds: float) -> str | None:
        """Hold for ``seconds``, checking the rollback alarms; the first one in ALARM, if any."""
        deadline = time.monotonic() + seconds
        while True:
            if alarms and self.cloudwatch is not None:
                answer = self.cloudwatch.describe_alarms(AlarmNames=alarms)
                for alarm in answer.get("MetricAlarms", []):
                    if alarm["StateValue"] == "ALARM":
                        return str(alarm["AlarmName"])
            if time.monotonic() >= deadline or self.closing:
                return None
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _roll_back(self, endpoint: Endpoint, config: str, green: Fleet | None, why: str) -> None:
        with endpoint.lock:
            endpoint.fleets = [(fleet, 1.0) for fleet, _ in endpoint.fleets if fleet is not green]
            endpoint.target_config = None
            endpoint.phase = endpoint.update_started = None
        if green is not None:
            green.stop()
        self._deployment_event(endpoint, config, "ROLLBACK_COMPLETED", f"Rolled back: {why}")
        endpoint.set_status("InService", f"Update rolled back: {why}")

    def endpoint_event(self, endpoint: Endpoint) -> dict[str, Any]:
        detail = json.loads(json.dumps(endpoint.describe(), default=lambda d: int(d.timestamp() * 1000)))
        detail["EndpointStatus"] = _event_status(detail["EndpointStatus"])
        detail["Tags"] = {t["Key"]: t["Value"] for t in endpoint.tags}
        return envelope("SageMaker Endpoint State Change", endpoint.arn, detail)

    def _deployment_event(self, endpoint: Endpoint, config: str, state: str, message: str) -> None:
        detail = {
            "EndpointName": endpoint.name,
            "EndpointArn": endpoint.arn,
            "EndpointConfigName": config,
            "State": state,
            "Message": message,
        }
        self.emit(envelope("SageMaker Endpoint Deployment State Change", endpoint.arn, detail))
