"""Managed Warm Pools, locally: a training job with ``ResourceConfig.KeepAlivePeriodInSeconds``
runs on a warm instance (``tuneloop.local.container.warm``) and leaves it to the next matching job.

The lifecycle is SageMaker's (``WarmPoolStatus`` in DescribeTrainingJob):

- a job that asks for a keep-alive period runs on a matching ``Available`` instance when
  there is one (that job's pool becomes ``Reused``, ``ReusedByJob`` names the new job),
  else on a new one (a cold start, as on AWS); while it runs its pool is ``InUse``;
- when it ends its instance stays ``Available`` for the keep-alive period, then is
  ``Terminated``; ``ResourceRetainedBillableTimeInSeconds`` is the time it waited;
- "matching" is what SageMaker matches on: image, instance type and count, volume size and
  key, role, VPC, network isolation and traffic encryption.

Instances do not outlive the server: a restart finds every pool ``Terminated``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..container import warm
from ..processes import stop_group
from .common import now

log = logging.getLogger("tuneloop.sagemaker")
# How long a new instance may take to import its stack before the job runs cold instead.
START_TIMEOUT_S = 300
MATCHED_FIELDS = ("InstanceType", "InstanceCount", "VolumeSizeInGB", "VolumeKmsKeyId")


def keep_alive(request: dict[str, Any]) -> int:
    value = request.get("ResourceConfig", {}).get("KeepAlivePeriodInSeconds", 0)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def match_key(request: dict[str, Any]) -> str:
    resources = request.get("ResourceConfig", {})
    return json.dumps(
        {
            "image": request.get("AlgorithmSpecification", {}).get("TrainingImage"),
            "role": request.get("RoleArn"),
            "resources": {k: resources.get(k) for k in MATCHED_FIELDS},
            "vpc": request.get("VpcConfig"),
            "isolation": bool(request.get("EnableNetworkIsolation")),
            "encryption": bool(request.get("EnableInterContainerTrafficEncryption")),
        },
        sort_keys=True,
    )


class Instance:
    """One warm instance: a fork server process and its ``python``."""

    def __init__(self, key: str, environment: dict[str, str], modules: tuple[str, ...] = ()) -> None:
        self.key = key
        # A socket path must stay short (108 bytes): a private folder under the temp dir.
        self.folder = Path(tempfile.mkdtemp(prefix="tuneloop-warm-"))
        socket_path = str(self.folder / "socket")
        self.python = warm.write_launcher(self.folder, socket_path)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tuneloop.local.container.warm", socket_path, str(self.python), *modules],
            cwd=self.folder,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ready = False

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> bool:
        """Wait for the instance's ``ready`` line; its later output goes to the log."""
        assert self.process.stdout is not None
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        self.ready = bool(result) and result[0].strip() == b"ready"
        if self.ready:
            threading.Thread(target=self._drain, daemon=True).start()
        return self.ready

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            log.info("warm instance %s: %s", self.folder.name, line.decode(errors="replace").rstrip())

    def alive(self) -> bool:
        return self.ready and self.process.poll() is None

    def terminate(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()  # the instance ends its processes and exits
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            stop_group(self.process, 5)
        shutil.rmtree(self.folder, ignore_errors=True)


class Pool:
    """One job's warm pool: the instance it ran on and what happened to it after."""

    def __init__(self, job_name: str, keep_alive_s: int, instance: Instance) -> None:
        self.job_name = job_name
        self.keep_alive_s = keep_alive_s
        self.instance: Instance | None = instance
        self.status = "InUse"
        self.available_since: float | None = None
        self.retained_s = 0
        self.reused_by = ""
        self.timer: threading.Timer | None = None

    def describe(self) -> dict[str, Any]:
        retained = self.retained_s
        if self.status == "Available" and self.available_since is not None:
            retained = int(time.monotonic() - self.available_since)
        out: dict[str, Any] = {"Status": self.status, "ResourceRetainedBillableTimeInSeconds": retained}
        if self.reused_by:
            out["ReusedByJob"] = self.reused_by
        return out

    def end_wait(self, status: str, reused_by: str = "") -> Instance | None:
        if self.timer is not None:
            self.timer.cancel()
        if self.available_since is not None:
            self.retained_s = int(time.monotonic() - self.available_since)
        self.available_since = None
        self.status, self.reused_by = status, reused_by
        instance, self.instance = self.instance, None
        return instance


class WarmPools:
    """Every job's pool, by job name; what a new job runs on."""

    def __init__(self, environment: dict[str, str], on_change: Any = None) -> None:
        self.environment = environment
        self.pools: dict[str, Pool] = {}
        self.lock = threading.Lock()
        self.on_change = on_change or (lambda job_name: None)
        self.closed = False

    def status(self, job_name: str) -> dict[str, Any] | None:
        pool = self.pools.get(job_name)
        return pool.describe() if pool else None

    def acquire(self, job_name: str, request: dict[str, Any]) -> tuple[Instance | None, str]:
        """The instance a job runs on (None: it runs without one) and the pool it reused."""
        keep = keep_alive(request)
        if keep <= 0 or self.closed:
            return None, ""
        key = match_key(request)
        reused_from = ""
        instance: Instance | None = None
        with self.lock:
            candidates = [
                p for p in self.pools.values() if p.status == "Available" and p.instance and p.instance.key == key
            ]
            for pool in sorted(candidates, key=lambda p: p.available_since or 0.0):
                found = pool.end_wait("Reused", reused_by=job_name)
                if found is not None and found.alive():
                    instance, reused_from = found, pool.job_name
                    break
                pool.status = "Terminated"
                if found is not None:
                    threading.Thread(target=found.terminate, daemon=True).start()
        if reused_from:
            self.on_change(reused_from)
        if instance is None:
            started = Instance(key, self.environment)
            if not started.wait_ready():
                log.warning("a warm instance did not start; job %s runs without one", job_name)
                threading.Thread(target=started.terminate, daemon=True).start()
                return None, ""
            instance = started
        with self.lock:
            self.pools[job_name] = Pool(job_name, keep, instance)
        return instance, reused_from

    def release(self, job_name: str) -> None:
        """The job ended: its instance waits for the next matching job, or ends."""
        with self.lock:
            pool = self.pools.get(job_name)
            if pool is None or pool.status != "InUse":
                return
            if pool.instance is None or not pool.instance.alive() or self.closed:
                instance = pool.end_wait("Terminated")
            else:
                instance = None
                pool.status, pool.available_since = "Available", time.monotonic()
                pool.timer = threading.Timer(pool.keep_alive_s, self.expire, args=(job_name,))
                pool.timer.daemon = True
                pool.timer.start()
        if instance is not None:
            instance.terminate()

    def expire(self, job_name: str) -> None:
        with self.lock:
            pool = self.pools.get(job_name)
            if pool is None or pool.status != "Available":
                return
            instance = pool.end_wait("Terminated")
            pool.retained_s = pool.keep_alive_s
        if instance is not None:
            instance.terminate()
        self.on_change(job_name)

    def close(self) -> None:
        self.closed = True
        with self.lock:
            instances = [p.end_wait("Terminated") for p in self.pools.values() if p.instance is not None]
        for instance in instances:
            if instance is not None:
                instance.terminate()


def terminated(record: dict[str, Any], at: datetime | None = None) -> dict[str, Any] | None:
    """A restarted server's view of a pool its predecessor held: gone."""
    status = record.get("WarmPoolStatus")
    if not isinstance(status, dict) or status.get("Status") not in ("Available", "InUse"):
        return None
    ended = record.get("TrainingEndTime")
    retained = status.get("ResourceRetainedBillableTimeInSeconds", 0)
    if status.get("Status") == "Available" and isinstance(ended, (int, float)):
        keep = keep_alive(record)
        retained = min(keep, max(0, int((at or now()).timestamp() - ended)))
    return {**status, "Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": int(retained or 0)}
