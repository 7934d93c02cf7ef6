"""Hyperparameter tuning jobs: trials are local training jobs, chosen by ``tuner.Search``."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from .common import read_json, write_json
from .exceptions import ServiceError
from .jobs import Backend, Job, TrainingJob
from .tuner import Search, SearchSpaceError
from .validation import validate

log = logging.getLogger("tuneloop.sagemaker")


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

    def __init__(self, server: Backend, request: dict[str, Any]) -> None:
        super().__init__(server, request)
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

    def restore(self, record: dict[str, Any]) -> None:
        super().restore(record)
        trials = read_json(self.folder / "trials.json")
        self.trials = [t for t in trials if isinstance(t, dict)] if isinstance(trials, list) else []
        best = record.get("BestTrainingJob")
        self.best = best if isinstance(best, dict) else None

    def execute(self) -> None:
        self.emit()
        finished = self._parent_results()
        running: dict[str, tuple[TrainingJob, Any]] = {}
        if self.resumed:
            finished += self._settle_trials()
        warm = self.search.warm_start(finished)
        if warm:
            log.info("tuning job %s starts from %d finished trials", self.name, warm)
        if self.resumed:
            running = self._take_back_trials()
            log.info("tuning job %s resumes: %d trials so far, %d running", self.name, len(self.trials), len(running))
        limits = self.config["ResourceLimits"]
        max_jobs = int(limits["MaxNumberOfTrainingJobs"])
        parallel = max(1, int(limits.get("MaxParallelTrainingJobs", 1)))
        deadline = time.monotonic() + int(limits.get("MaxRuntimeInSeconds", 0) or 10**9)
        launched = len(self.trials)
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

    def _settle_trials(self) -> list[tuple[dict[str, str], float]]:
        """After a restart: trials that finished while this job's own record lagged take
        their outcome from their records; what every finished trial found, for the search."""
        results = []
        for summary in self.trials:
            name = summary["TrainingJobName"]
            record = self.server.records.get(("training", name))
            if summary["TrainingJobStatus"] == "InProgress" and ("training", name) not in self.server.jobs:
                status = (record or {}).get("TrainingJobStatus", "Failed")
                reason = (record or {}).get("FailureReason") or "InternalServerError: the trial's record was lost"
                metrics = {m.get("MetricName"): m.get("Value") for m in (record or {}).get("FinalMetricDataList", [])}
                value = metrics.get(self.search.metric) if status == "Completed" else None
                summary.update(TrainingJobStatus="Failed" if status == "InProgress" else status)
                if status not in ("Completed", "Stopped"):
                    summary["FailureReason"] = reason
                self._record_objective(summary, value, completed=status == "Completed")
            metric = summary.get("FinalHyperParameterTuningJobObjectiveMetric")
            if summary["TrainingJobStatus"] == "Completed" and metric:
                results.append((summary["TunedHyperParameters"], metric["Value"]))
        return results

    def _take_back_trials(self) -> dict[str, tuple[TrainingJob, Any]]:
        """The trials still running when the server stopped resume as training jobs; take
        them back. A trial started but never recorded here is stopped: it is not one."""
        running: dict[str, tuple[TrainingJob, Any]] = {}
        known = {t["TrainingJobName"] for t in self.trials}
        for summary in self.trials:
            job = self.server.jobs.get(("training", summary["TrainingJobName"]))
            if summary["TrainingJobStatus"] == "InProgress" and isinstance(job, TrainingJob):
                running[job.name] = (job, self.search.adopt(summary["TunedHyperParameters"]))
        for (kind, name), job in list(self.server.jobs.items()):
            if kind == "training" and name.startswith(f"{self.name}-") and name not in known:
                log.info("tuning job %s stops %s: a trial it never recorded", self.name, name)
                threading.Thread(target=job.stop, daemon=True).start()
        return running

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
        self.server.check_request("training", request)  # what a trial runs, as a training job's
        job = TrainingJob(self.server, request, tuning_arn=self.arn)
        job.threads = self.threads_per_trial()
        job.on_end = self.wake.set
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

    def threads_per_trial(self) -> int:
        """On AWS each trial has instances of its own; here trials share this machine, so
        each gets an equal share of the threads it may use (at least one)."""
        parallel = max(1, int(self.config["ResourceLimits"].get("MaxParallelTrainingJobs", 1)))
        return max(1, cpu_budget() // parallel)

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
        self._record_objective(summary, value, completed=outcome == "completed")
        self.server.save(self)

    def _record_objective(self, summary: dict[str, Any], value: float | None, completed: bool) -> None:
        with self.lock:
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
            if completed and value is not None and self.search.better(float(value), best_value):
                self.best = dict(summary)

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
        write_json(self.folder / "trials.json", self.trial_summaries())


def cpu_budget() -> int:
    """The threads the local cloud's jobs may use between them: OMP_NUM_THREADS where whoever
    started it set one (a share of a machine that runs other work too), else every core."""
    try:
        given = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        given = 0
    return given if given > 0 else os.cpu_count() or 1
