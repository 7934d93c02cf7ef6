"""Run a training job through the real `sagemaker-training` toolkit, on this machine.

The toolkit reads an /opt/ml-style folder (``SAGEMAKER_BASE_DIR``): hyperparameters,
resource and input-data config under ``input/config``, channels under ``input/data``.
It copies the source folder into ``code/``, installs its requirements.txt (here with
``PIP_NO_INDEX=1``: everything must already be installed, no network install in the
middle of a job), runs the entry point with the hyperparameters as ``--key value``
arguments and the SM_* variables, and writes ``output/failure`` when it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..sigv4 import EXECUTION_ROLE, Credentials

HOST = "localhost"


@dataclass(frozen=True)
class TrainingLayout:
    base: Path

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def checkpoints(self) -> Path:
        return self.base / "checkpoints"

    @property
    def failure_file(self) -> Path:
        return self.base / "output" / "failure"

    def channel(self, name: str) -> Path:
        return self.base / "input" / "data" / name


def wire_hyperparameters(
    entry_point: str, source_dir: Path, values: Mapping[str, object], distributed: bool = False
) -> dict[str, str]:
    """Hyperparameters as CreateTrainingJob carries them: strings, the toolkit's keys JSON-encoded."""
    wire = {str(k): str(v) for k, v in values.items()}
    wire["sagemaker_program"] = json.dumps(entry_point)
    wire["sagemaker_submit_directory"] = json.dumps(str(source_dir))
    if distributed:
        wire["sagemaker_torch_distributed_enabled"] = "true"
    return wire


def lay_out(base: Path, hyperparameters: Mapping[str, str], channels: Mapping[str, Path]) -> TrainingLayout:
    """Write the toolkit's config files and link the channels' data in.

    ``hyperparameters`` are in CreateTrainingJob's wire form (all strings); the toolkit
    reads each as JSON where it can, as SageMaker's containers do.
    """
    layout = TrainingLayout(base)
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    for folder in (layout.model_dir, base / "output" / "data", layout.checkpoints):
        folder.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(dict(hyperparameters)))
    resources = {
        "current_host": HOST,
        "hosts": [HOST],
        "network_interface_name": "lo",
        "current_group_name": "homogeneousCluster",
    }
    (config / "resourceconfig.json").write_text(json.dumps(resources))
    data = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    (config / "inputdataconfig.json").write_text(json.dumps({name: data for name in channels}))
    for name, source in channels.items():
        target = layout.channel(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() == source.resolve():
            continue
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        target.symlink_to(source.resolve(), target_is_directory=True)
    return layout


# What the execution role reaches: a job's processes get the local cloud's endpoints for
# these and no other (on AWS its role allows S3 and CloudWatch's PutMetricData).
ROLE_SERVICES = ("S3", "CLOUDWATCH")
_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")


def role_environment(aws: bool = True) -> dict[str, str]:
    """The environment a job's or a model server's processes start from: this process's,
    less what is the local cloud's own (the API's bearer token, its settings, the other
    services' endpoints). ``aws``: with the execution role's credentials and the endpoints
    of the services it reaches; a model server gets none (the runtime captures for it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TUNELOOP_"))}
    for name in ("TUNELOOP_LOG_LEVEL", "TUNELOOP_MODEL_CACHE"):  # how jobs log; where packaged models convert to
        if name in os.environ:
            env[name] = os.environ[name]
    if aws:
        env.update({k: os.environ[k] for k in _CREDENTIALS if k in os.environ})
        if "AWS_ACCESS_KEY_ID" in os.environ and "AWS_SECRET_ACCESS_KEY" in os.environ:
            # The execution role's key pair, derived from the cloud's: its calls are its role's.
            cloud = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
            role = cloud.principal(EXECUTION_ROLE)
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = role.access_key, role.secret_key
        for service in ROLE_SERVICES:
            endpoint = os.environ.get(f"AWS_ENDPOINT_URL_{service}")
            if endpoint:
                env[f"AWS_ENDPOINT_URL_{service}"] = endpoint
    return env


def instance_environment() -> dict[str, str]:
    """What every training process here starts with (a warm instance too)."""
    return {
        **role_environment(),
        "PIP_NO_INDEX": "1",  # a requirements.txt must be satisfied already: never a network install
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def job_environment(layout: TrainingLayout, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**instance_environment(), "SAGEMAKER_BASE_DIR": str(layout.base), **(extra or {})}


def start(
    layout: TrainingLayout, log_path: Path, extra_env: Mapping[str, str] | None = None, python: Path | None = None
) -> subprocess.Popen[bytes]:
    """The toolkit's ``train`` command in its own process group (stop = signal the group).
    ``python``: a warm instance's interpreter (``tuneloop.local.container.warm``) instead of a cold one."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(python or sys.executable), "-m", "sagemaker_training.cli.train"],
            env=job_environment(layout, extra_env),
            cwd=layout.base,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
