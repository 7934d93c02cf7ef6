"""A tuning trial's start-up: a cold training job vs one on a warm pool, in the same run.

Each trial is a real training job on the local SageMaker: the demo project's training
request (all-MiniLM-L6-v2 on the sample reviews, the demo's hyperparameters) through the
sagemaker-training toolkit. Baseline: a cold job (no ``KeepAlivePeriodInSeconds``: a new
interpreter imports torch, transformers, the toolkit and pip). tuneloop: jobs with a keep
alive period, the first on a new instance, the rest reusing it as a tuning job's next
trials do. Overhead is what a job costs beyond its training loop: the job's wall time
(CreateTrainingJob to its end) minus ``train_seconds``, which train.py reports for its
loop (epochs, evaluation and checkpoints included). Cold and warm jobs alternate, so
machine noise hits both alike.

Checked, in both modes: every job completes, each warm job after the first reuses the
previous job's pool (``WarmPoolStatus``), every job reports ``train_seconds``. ``--quick``
(the test suite runs it) trains 2 steps per job. Needs moto (started here).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps a job, one cold and two warm jobs")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (job logs) for a look")
    parser.add_argument(
        "--tuning", action="store_true", help="also the demo's tuning job with 1 and with 2 trials at a time"
    )
    parser.add_argument("--pairs", type=int, default=3, help="cold/warm pairs after the warm pool's first job")
    args = parser.parse_args()
    import boto3

    from chalicelib.config import Settings
    from chalicelib.domain.commands import StartTrainingJob
    from chalicelib.domain.project import normalise_config
    from chalicelib.domain.run import Run
    from chalicelib.domain.states import RunState
    from chalicelib.sagemaker import training_request
    from training import prepare
    from tuneloop.local import sagemaker as sagemaker_server
    from tuneloop.local import sigv4
    from tuneloop.local.services import aws_env, start_moto

    demo = json.loads((REPO / "examples" / "demo-project.json").read_text())["config"]
    training = {**demo["training"], "spot": False, "warm_pool_s": 120}
    if args.quick:
        training["hyperparameters"] = {**training["hyperparameters"], "max_steps": 2}
    config = normalise_config({**{k: v for k, v in demo.items() if k != "tuning"}, "training": training})
    run_id = "bbbbbbbbbbbb"
    problems: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    credentials = sigv4.generate()
    moto = start_moto(credentials, log_path=work / "moto.log")
    try:
        env = aws_env("http://127.0.0.1:1", moto.endpoint, credentials)
        keys = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
        s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", **keys)
        s3.create_bucket(Bucket="bench")
        splits = work / "prepared"
        code = prepare.main(["--input-dir", str(REPO / "examples" / "data"), "--output-dir", str(splits),
                             "--task", "text-classification", "--failure-dir", str(work / "fail")])  # fmt: skip
        if code != 0:
            raise SystemExit("preparing the demo data failed")
        for name in ("train", "validation"):
            for path in (splits / name).iterdir():
                s3.upload_file(str(path), "bench", f"runs/{run_id}/prepare/{name}/{path.name}")
        http_server = sagemaker_server.serve(work / "sm", s3, lambda e: None, credentials=credentials)
        client = boto3.client(
            "sagemaker", endpoint_url=f"http://127.0.0.1:{http_server.port}", region_name="us-east-1", **keys
        )
        settings = Settings(
            stage="bench", region="us-east-1", bucket="bench", projects_table="p", runs_table="r",
            role_arn="arn:aws:iam::123456789012:role/bench", training_image="local/training",
            processing_image="local/processing",
            code_uri=http_server.backend.stage_code(REPO / "training", "bench"),
        )  # fmt: skip
        run = Run(run_id, "bench", RunState.TRAINING, config, "s3://bench/datasets/x.jsonl", datetime.now(UTC))

        def job(number: int, warm: bool) -> dict[str, Any]:
            name = f"tl-{run_id}-train-{number}"
            request = training_request(StartTrainingJob(run_id, "bench", name, attempt=number), run, settings)
            if not warm:
                request["ResourceConfig"].pop("KeepAlivePeriodInSeconds", None)
            # As a tuning job's trials: one checkpoint location, each job its own learning rate
            # (train.py keeps each hyperparameter set's checkpoints apart).
            request["HyperParameters"]["learning-rate"] = repr(5e-5 * (1 + number / 10))
            began = time.monotonic()
            client.create_training_job(**request)
            while (done := client.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] == "InProgress":
                time.sleep(0.1)
            wall = time.monotonic() - began
            metrics = {m["MetricName"]: m["Value"] for m in done["FinalMetricDataList"]}
            if done["TrainingJobStatus"] != "Completed":
                problems.append(f"{name}: {done['TrainingJobStatus']} {done.get('FailureReason', '')}")
            if "train_seconds" not in metrics:
                problems.append(f"{name}: no train_seconds reported")
            phases = {
                t["Status"]: (t["EndTime"] - t["StartTime"]).total_seconds()
                for t in done["SecondaryStatusTransitions"]
                if t.get("EndTime")
            }
            train = float(metrics.get("train_seconds", 0.0))
            row = {"name": name, "warm": warm, "wall": wall, "train": train, "overhead": wall - train, **phases}
            print(f"  {'warm' if warm else 'cold'} job {number:2d}: {wall:6.1f} s, training loop {train:5.1f} s, "
                  f"overhead {wall - train:5.1f} s  (downloading {phases.get('Downloading', 0):.1f} s, "
                  f"uploading {phases.get('Uploading', 0):.1f} s)", flush=True)  # fmt: skip
            return row

        pairs = 1 if args.quick else args.pairs
        print(f"the demo's training job, {'2 steps' if args.quick else 'its hyperparameters'}, {pairs} cold/warm pairs")
        rows = [job(1, warm=True)]  # the pool's first job: a new instance (a cold start on AWS too)
        rows[0]["first"] = True
        number = 1
        for _ in range(pairs):
            for warm in (False, True):
                number += 1
                rows.append(job(number, warm))
        names = [r["name"] for r in rows if r["warm"]]
        for previous, following in itertools.pairwise(names):
            pool = client.describe_training_job(TrainingJobName=previous).get("WarmPoolStatus", {})
            if pool.get("Status") != "Reused" or pool.get("ReusedByJob") != following:
                problems.append(f"{following} did not reuse {previous}'s warm pool: {pool}")
        cold = [r["overhead"] for r in rows if not r["warm"]]
        warm = [r["overhead"] for r in rows if r["warm"] and not r.get("first")]
        print(f"overhead beyond the training loop, median: cold {statistics.median(cold):.1f} s, "
              f"warm {statistics.median(warm):.1f} s (the pool's first job: {rows[0]['overhead']:.1f} s)")  # fmt: skip
        print(f"ratio cold/warm overhead: {statistics.median(cold) / max(statistics.median(warm), 1e-3):.1f}x "
              f"(goal: warm overhead <= 3 s)")  # fmt: skip
        if args.tuning:
            tuning_parallelism(client, settings, run, problems)
        http_server.backend.close()
        http_server.shutdown()
    finally:
        moto.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    for problem in problems:
        print(f"FAILED: {problem}")
    print(f"jobs checked: {len(rows)}, problems: {len(problems)}")
    return 1 if problems else 0


def tuning_parallelism(client: Any, settings: Any, run: Any, problems: list[str]) -> None:
    """The demo's tuning job (3 trials, warm pools) with MaxParallelTrainingJobs 1 and 2:
    on this machine parallel trials split its cores, and a second trial at a time needs a
    second instance."""
    import dataclasses

    from chalicelib.domain.commands import StartTuningJob
    from chalicelib.domain.project import normalise_config
    from chalicelib.sagemaker import tuning_request

    demo = json.loads((REPO / "examples" / "demo-project.json").read_text())["config"]
    for parallel in (1, 2):
        config = normalise_config({**demo, "training": run.config["training"],
                                   "tuning": {**demo["tuning"], "max_parallel_jobs": parallel}})  # fmt: skip
        name = f"tl-{run.run_id}-tune-{parallel}"
        request = tuning_request(StartTuningJob(run.run_id, "bench", name), dataclasses.replace(run, config=config),
                                 settings)  # fmt: skip
        began = time.monotonic()
        client.create_hyper_parameter_tuning_job(**request)
        while (done := client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name))[
            "HyperParameterTuningJobStatus"
        ] == "InProgress":
            time.sleep(0.2)
        wall = time.monotonic() - began
        if done["HyperParameterTuningJobStatus"] != "Completed":
            problems.append(f"{name}: {done['HyperParameterTuningJobStatus']} {done.get('FailureReason', '')}")
        counters = done["TrainingJobStatusCounters"]
        print(f"the demo's tuning job, {parallel} trial(s) at a time: {wall:6.1f} s "
              f"({counters['Completed']} completed, {counters['Stopped']} stopped early)", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
