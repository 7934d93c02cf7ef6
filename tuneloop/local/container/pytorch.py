"""The framework layer of the local training instance, as SageMaker's PyTorch containers
have it (``SAGEMAKER_TRAINING_MODULE``): the `sagemaker-training` toolkit imports this
module and calls :func:`main` to run the entry point.

Without ``sagemaker_torch_distributed_enabled``, or when the job is one process (one
instance, no GPU), the entry point runs as one process (the toolkit's Process runner).
Otherwise the toolkit's own TorchDistributed runner starts it
under ``torchrun``, as on AWS — with one difference, stated: a job of ``InstanceCount``
N runs here on one host, so torchrun starts N processes on this host (``--nproc_per_node
N``, one per instance, gloo on CPU) where AWS starts one torchrun per instance. Each
process sees the same contract it would there: ``RANK`` 0..N-1, ``WORLD_SIZE`` N, the
job's SM_* variables. The rendezvous port is one the kernel picks, so parallel jobs never
collide, and it and gloo's listen on 127.0.0.1 only (``torchrun.py``).
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

INSTANCES_ENV = "TUNELOOP_INSTANCE_COUNT"


def _torchrun_folder() -> Path:
    """A folder holding a ``torchrun`` that runs ``tuneloop.local.container.torchrun`` with this
    interpreter, in the job's /opt/ml (``SAGEMAKER_BASE_DIR``)."""
    folder = Path(os.environ.get("SAGEMAKER_BASE_DIR") or tempfile.mkdtemp(prefix="tuneloop-")) / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "torchrun"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tuneloop.local.container.torchrun "$@"\n')
    script.chmod(0o700)
    return folder


def main() -> None:
    from sagemaker_training import entry_point, environment, params, runner

    env = environment.Environment()
    processes = (int(env.num_gpus) or 1) * max(1, int(os.environ.get(INSTANCES_ENV, "1")))
    # One process (one CPU instance) needs no torchrun: it runs as the Process runner runs
    # it, so a warm instance can still fork it.
    distributed = bool(env.additional_framework_parameters.get("sagemaker_torch_distributed_enabled")) and processes > 1
    extra: dict[str, object] = {}
    kind = runner.ProcessRunnerType
    if distributed:
        kind = runner.TorchDistributedRunnerType
        extra[params.MPI_PROCESSES_PER_HOST] = processes
        # The toolkit runs `torchrun` from PATH: here tuneloop's, which keeps the
        # rendezvous store on 127.0.0.1, on a port the kernel picks (torchrun.py), run by
        # this interpreter (a warm instance's too); gloo listens on the loopback interface.
        os.environ["PATH"] = str(_torchrun_folder()) + os.pathsep + os.environ.get("PATH", "")
        os.environ["PET_MASTER_ADDR"] = "127.0.0.1"
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    entry_point.run(
        env.module_dir,
        env.user_entry_point,
        env.to_cmd_args(),
        env.to_env_vars(),
        runner_type=kind,
        extra_opts=extra,
    )
