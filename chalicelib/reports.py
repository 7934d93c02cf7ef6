"""What GET /runs/{id} shows beyond the stored run: tuning trials and evaluation links.

Trials are read live from SageMaker (ListTrainingJobsForHyperParameterTuningJob), so the
run item stays small however many trials a tuning job runs. Report, metrics and plots
are presigned S3 GET URLs: a browser opens them without AWS credentials, on AWS and on
the local cloud's S3 alike.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .config import Settings
from .domain.run import Run
from .pricing import SHIPPED, PriceBook
from .sagemaker import SageMakerExecutors, evaluation_prefix, run_prefix

LINK_EXPIRY_S = 3600
SHOWN_GENERATIONS = 20
# Presigned links must be SigV4: the bucket's objects are KMS-encrypted, and S3 refuses
# SigV2 (still boto3's presigning default in us-east-1) for those.
S3_CONFIG = Config(signature_version="s3v4")


def tuning_job_of(run: Run) -> str | None:
    """The tuning job the run started, if it tuned."""
    return next((entry.awaits for entry in run.history if "StartTuningJob" in entry.commands), None)


class RunReports:
    def __init__(self, s3: Any, sagemaker: SageMakerExecutors, settings: Settings, book: PriceBook = SHIPPED) -> None:
        self._s3 = s3
        self._sagemaker = sagemaker
        self._settings = settings
        self.book = book

    def tuning(self, run: Run, limit: int = 100) -> dict[str, Any] | None:
        job = tuning_job_of(run)
        if job is None:
            return None
        objective = run.config.get("tuning", {}).get("objective", {})
        view: dict[str, Any] = {"job_name": job, "objective": objective, "best_training_job": run.model_source}
        try:
            trials = self._sagemaker.tuning_trials(job, limit)
            # SageMaker sorts by value; a trial stopped early can end above the one the tuner
            # chose, so the trial the run took goes first and says so.
            for trial in trials:
                trial["chosen"] = trial["training_job"] == run.model_source
            view["trials"] = sorted(trials, key=lambda t: not t["chosen"])
        except (ClientError, BotoCoreError) as exc:
            # The run is still worth showing when SageMaker cannot list its trials right now.
            view["trials"] = []
            view["trials_error"] = str(exc)
        return view

    def cost(self, run: Run) -> dict[str, Any]:
        from datetime import UTC, datetime

        from .cost import run_cost

        def trials(job: str) -> list[str]:
            return [t["training_job"] for t in self._sagemaker.tuning_trials(job)]

        return run_cost(run, self._settings.region, self._sagemaker.describe_job, trials, datetime.now(UTC), self.book)

    def _json(self, uri: str) -> Any:
        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            return json.loads(self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def evaluation_file(self, run: Run) -> dict[str, Any] | None:
        """The run's evaluation.json, or None before its evaluation (or if it is gone)."""
        if "evaluation" not in run.metrics:
            return None
        data = self._json(evaluation_prefix(self._settings, run.run_id) + "evaluation.json")
        return data if isinstance(data, dict) else None

    def evaluation(self, run: Run, data: dict[str, Any] | None) -> dict[str, Any] | None:
        """What a page draws beyond the metric summary: per-class scores, the confusion
        matrix, the reliability bins, the metrics' intervals and the training curves."""
        if data is None:
            return None
        found = data.get("metrics")
        metrics: dict[str, Any] = found if isinstance(found, dict) else {}
        view: dict[str, Any] = {
            k: metrics[k] for k in ("labels", "per_class", "confusion_matrix", "calibration") if k in metrics
        }
        view["intervals"] = data.get("intervals") if isinstance(data.get("intervals"), dict) else {}
        view["confidence"] = data.get("confidence", 0.95)
        history = data.get("training_history")
        view["training_history"] = history if isinstance(history, list) else []
        # A causal LM's generations (worst first) and where it differs from the champion:
        # the first few, for a page; evaluation.json and the report have them all.
        for key in ("generations", "differences"):
            found = data.get(key)
            if isinstance(found, list):
                view[key] = [g for g in found[:SHOWN_GENERATIONS] if isinstance(g, dict)]
        # A causal LM's untuned base, this model and the champion on the same test prompts.
        models = data.get("models")
        if isinstance(models, dict):
            view["models"] = {str(k): v for k, v in list(models.items())[:3] if isinstance(v, dict)}
        return view

    def production(self, run: Run, evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
        """Lineage of a retraining run's production data: how many labelled production
        examples it learned from, from which window, in which split (prepare's report), and
        how champion and challenger did on the held-out ones (``evaluation``: its file)."""
        if not run.parent_run_id:
            return None
        try:
            report = self._json(f"{run_prefix(self._settings, run.run_id)}/prepare/report/report.json")
        except (ClientError, BotoCoreError, ValueError) as exc:
            return {"error": f"the run's production lineage could not be read: {exc}"}
        made = report.get("production") if isinstance(report, dict) else None
        if not made:
            return None
        view: dict[str, Any] = {"data": made}
        if evaluation is not None and evaluation.get("production"):
            view["held_out"] = evaluation["production"]
        return view

    def links(self, run: Run) -> dict[str, str]:
        """Presigned links to evaluation.json, report.html and each plot the evaluation wrote."""
        if "evaluation" not in run.metrics:
            return {}
        bucket, _, prefix = evaluation_prefix(self._settings, run.run_id)[len("s3://") :].partition("/")
        try:
            listed = self._s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        except (ClientError, BotoCoreError):
            return {}
        links = {}
        for obj in listed.get("Contents", []):
            name = posixpath.basename(obj["Key"])
            if name == "report.html":
                label = "report"
            elif name == "evaluation.json":
                label = "evaluation"
            elif name.endswith(".png"):
                label = f"plot:{name[: -len('.png')]}"
            else:
                continue
            links[label] = self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": obj["Key"]}, ExpiresIn=LINK_EXPIRY_S
            )
        return links
