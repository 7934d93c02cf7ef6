"""The client side of the CLI: the local API, runs shown and followed, reports saved.

Shared by ``tuneloop`` (cli.py) and ``make demo`` (demo.py), which import this and never
each other.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chalicelib import spec

from .local import cloud

REPO_ROOT = Path(__file__).resolve().parents[1]
# S3 takes one PutObject of at most 5 GB.
MAX_UPLOAD_BYTES = 5 * 1024**3


class CliError(spec.TuneloopError):
    pass


def ask(question: str) -> str:
    """What the user typed at the terminal (empty on end of input or Ctrl-C)."""
    try:
        return input(question).strip()
    except (EOFError, KeyboardInterrupt):
        return ""


def confirmed(question: str, yes: bool) -> bool:
    """True with --yes, or when "yes" is typed at a terminal; CliError when there is none to ask at."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise CliError(f"{question}: pass --yes to confirm (no terminal to ask at)")
    return ask(f"{question}? Type yes to go on: ").lower() == "yes"


def q(part: str) -> str:
    """A name or id as one path segment (or query value): nothing in it changes the URL."""
    return urllib.parse.quote(part, safe="")


# --- API client -------------------------------------------------------------------------


class Api:
    """The app's HTTP API: the local cloud's (its bearer token) or a stage's (each call
    signed with SigV4 for ``execute-api``, the API's IAM auth)."""

    def __init__(
        self, base: str, *, token: str | None = None, credentials: Any = None, region: str = "us-east-1",
        where: str = "the local API",
    ) -> None:  # fmt: skip
        self.base = base.rstrip("/")
        self.token = token
        self.credentials = credentials
        self.region = region
        self.where = where

    def _headers(self, method: str, url: str, data: bytes | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token is not None:
            return {**headers, "Authorization": f"Bearer {self.token}"}
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        signed = AWSRequest(method=method, url=url, data=data or b"", headers=headers)
        SigV4Auth(self.credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(signed)
        return dict(signed.headers)

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        url = self.base + path
        request = urllib.request.Request(url, data=data, method=method, headers=self._headers(method, url, data))
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310  # the API's http(s) URL
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            payload, status = exc.read(), exc.code
        except OSError as exc:
            hint = "; is `tuneloop up` running?" if self.token is not None else ""
            raise CliError(f"cannot reach {self.where} at {self.base}: {exc}{hint}") from exc
        try:
            parsed = json.loads(payload) if payload else None
        except json.JSONDecodeError:
            parsed = None
        if status not in ok:
            message = (
                (parsed.get("Message") or parsed.get("message")) if isinstance(parsed, dict) else None
            ) or payload.decode(errors="replace")[:300]
            raise CliError(f"{method} {path} → {status}: {message}")
        if payload and parsed is None:
            raise CliError(f"{method} {path}: {self.where} answered something that is not JSON")
        return parsed


def local_state() -> cloud.CloudState:
    state = cloud.load_state()
    if state is None:
        raise CliError("the local cloud is not up: run `tuneloop up` first")
    return state


def local_api() -> Api:
    return local_target().api


@dataclass
class Target:
    """Where a command goes: the local cloud, or a stage. ``s3`` uploads to its data
    bucket; ``sagemaker`` (the local cloud's) shows a training job's progress in `watch`."""

    name: str
    api: Api
    bucket: str
    s3: Callable[[], Any]
    sagemaker: Callable[[], Any] | None = None
    # Where to look when an upload starts nothing.
    logs: str = ""


def local_target(state: cloud.CloudState | None = None) -> Target:
    state = state or local_state()
    return Target(
        "the local cloud",
        Api(state.api_url, token=state.token),
        state.bucket,
        lambda: state.client("s3"),
        (lambda: state.client("sagemaker")) if state.sagemaker_port else None,
        f"`tuneloop dlq list`, `tuneloop drops` and {cloud.home() / 'logs' / 'host.log'}",
    )


def _upload(
    target: Target,
    path: Path,
    project: str,
    key: str,
    check_key: Callable[[str], Any],
    refused: str,
    check_project: Callable[[dict[str, Any]], str | None] = lambda project: None,
) -> tuple[Api, str, str]:
    """Check first what the intake would refuse (the key, an empty file, the project), so
    nothing is uploaded that it would ignore; then upload. Returns (the API, the object's
    URI, the upload's identity, which names what the intake makes of it)."""
    from chalicelib.intake import IntakeIgnored, upload_identity

    if not path.is_file():
        raise CliError(f"{path} is not a file")
    try:
        check_key(key)
    except IntakeIgnored as exc:
        raise CliError(f"{refused}: {exc}") from exc
    if path.stat().st_size == 0:
        raise CliError(f"{refused}: {path} is empty")
    api = target.api
    try:
        why = check_project(api.call("GET", f"/projects/{q(project)}"))
    except CliError as exc:
        if "→ 404" in str(exc):
            raise CliError(f"{refused}: there is no project {project!r} (tuneloop project create)") from exc
        raise
    if why:
        raise CliError(f"{refused}: {why}")
    s3 = target.s3()
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise CliError(
            f"{refused}: {path} is {size} bytes; one upload takes at most {MAX_UPLOAD_BYTES} (S3's PutObject)"
        )
    try:
        # One PutObject, whose answer names the upload (ETag, version): the uploader needs
        # only s3:PutObject (a stage's submitter policy), not read access to the bucket.
        with path.open("rb") as body:
            put = s3.put_object(Bucket=target.bucket, Key=key, Body=body)
    except Exception as exc:  # botocore's errors: the one line they carry
        raise CliError(f"cannot upload to s3://{target.bucket}/{key} ({target.name}): {exc}") from exc
    identity = upload_identity(put.get("VersionId"), put.get("ETag"), size)
    uri = f"s3://{target.bucket}/{key}"
    if identity is None:
        raise CliError(f"uploaded {uri}, but S3 gave it no ETag to find what it started by")
    return api, uri, identity


class Progress:
    """A wait the user sees: after a few seconds, a line on stderr, then one every 10 s."""

    def __init__(self, what: str, first_s: float = 3.0, every_s: float = 10.0) -> None:
        self.what, self.first_s, self.every_s = what, first_s, every_s
        self.started = time.monotonic()
        self.next = self.started + first_s

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self.next:
            print(f"{self.what} ({now - self.started:.0f}s)…", file=sys.stderr, flush=True)
            self.next = now + self.every_s


def drop(
    target: Target, path: Path, project: str, dataset_id: str | None = None, timeout: float = 60
) -> tuple[str, str]:
    """Upload a dataset file under the project's drop prefix and return (its URI, the run
    its upload started). CliError says why no run will start, or why none did."""
    from chalicelib.intake import check_dataset_key, run_id_for

    dataset_id = dataset_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"datasets/{project}/{dataset_id}/{path.name}"
    api, uri, identity = _upload(target, path, project, key, check_dataset_key, "no run would start")
    run_id = run_id_for(target.bucket, key, identity)
    deadline = time.monotonic() + timeout
    polls = 0
    progress = Progress(f"uploaded {uri}; waiting for the intake to start its run")
    while True:
        progress.tick()
        try:
            api.call("GET", f"/runs/{q(run_id)}")
            return uri, run_id
        except CliError as exc:
            if "→ 404" not in str(exc) or time.monotonic() > deadline:
                raise CliError(f"uploaded {uri}, but no run started within {timeout:.0f}s (see {target.logs})") from exc
        polls += 1
        if polls % 8 == 0:  # every 2 s: did the intake refuse it (a run limit reached meanwhile)?
            refused = [r for r in api.call("GET", "/drops?limit=20")["refused"] if r.get("key") == key]
            if refused:
                raise CliError(f"uploaded {uri}, but it started no run: {refused[0]['reason']}")
        time.sleep(0.25)


def send_feedback(target: Target, path: Path, project: str, timeout: float = 60) -> dict[str, Any]:
    """Upload a feedback file under ``feedback/<project>/`` (the S3 door) and return the
    receipt the intake wrote for it: rows accepted, rows refused with line and reason."""
    from chalicelib import spec
    from chalicelib.domain import names
    from chalicelib.intake import check_feedback_key

    def classifies(view: dict[str, Any]) -> str | None:
        task = (view.get("config") or {}).get("task")
        return None if task in spec.FEEDBACK_FIELDS else f"{project!r} is a {task} project; it takes no feedback"

    key = f"feedback/{project}/{datetime.now(UTC):%Y%m%dT%H%M%SZ}/{path.name}"
    api, uri, identity = _upload(target, path, project, key, check_feedback_key, "nothing would be stored", classifies)
    delivery = names.derive_id("feedback", target.bucket, key, identity)
    deadline = time.monotonic() + timeout
    progress = Progress(f"uploaded {uri}; waiting for the intake's receipt")
    while time.monotonic() < deadline:
        progress.tick()
        for receipt in api.call("GET", f"/projects/{q(project)}/feedback?limit=100")["receipts"]:
            if receipt.get("delivery") == delivery:
                return dict(receipt)
        time.sleep(0.25)
    raise CliError(f"uploaded {uri}, but no receipt within {timeout:.0f}s (see {target.logs})")


def describe_receipt(receipt: dict[str, Any]) -> str:
    """``stored 98 row(s) from <source>; refused 2: line 3: label: missing or not a string; …``."""
    text = f"stored {receipt['accepted']} row(s) from {receipt['source']} at {receipt['received_at']}"
    if receipt["refused"]:
        reasons = "; ".join(f"line {e['line']}: {e['reason']}" for e in receipt["errors"][:5])
        text += f"; refused {receipt['refused']}: {reasons}"
    return text


def show_run(run: dict[str, Any]) -> None:
    print(f"run {run['run_id']} · project {run['project']} · {run['state'].upper()}")
    print(f"  dataset   {run['dataset_uri']}")
    if run.get("parent_run_id"):
        print(f"  parent    {run['parent_run_id']}")
    if run.get("awaiting"):
        print(f"  waiting   on {run['awaiting']}")
    print("  history")
    for entry in run["history"]:
        commands = f"  → {', '.join(entry['commands'])}" if entry["commands"] else ""
        by = f" (by {entry['actor']})" if entry.get("actor") else ""
        print(f"    {entry['time']}  {entry['from']:>16} → {entry['to']:<16} {entry['reason']}{by}{commands}")
    for item in run["pending_commands"]:
        print(f"  pending   {item['type']} {item.get('job_name', '')}: {item['note']}")
    hyperparameters = (run.get("config") or {}).get("training", {}).get("hyperparameters") or {}
    if hyperparameters:
        print("  hyperparameters  " + " ".join(f"{k}={v}" for k, v in sorted(hyperparameters.items())))
    for group, values in sorted(run.get("metrics", {}).items()):
        if group == "comparison":
            print(f"  champion  {describe_comparison(values)}")
            continue
        if group == "baseline":
            print(f"  baseline  {describe_comparison({**values, 'champion': values.get('baseline')})}")
            continue
        for name, value in sorted(values.items()):
            shown = f"{value:.6g}" if isinstance(value, (int, float)) else str(value)
            print(f"  metric    {group}.{name} = {shown}")
    tuning = run.get("tuning")
    if tuning:
        objective = tuning["objective"]
        print(f"  tuning    {tuning['job_name']}: {objective.get('type', '')} {objective.get('metric')}")
        for trial in tuning["trials"]:
            objective = f"{trial['objective']:.4f}" if trial.get("objective") is not None else "-"
            best = " ← chosen" if trial.get("chosen") else ""
            values = " ".join(f"{k}={v}" for k, v in sorted(trial["hyperparameters"].items()))
            print(f"    {trial['training_job']}  {trial['status']:<10} {objective:>8}  {values}{best}")
        if tuning.get("trials_error"):
            print(f"    (trials unavailable: {tuning['trials_error']})")
    production = run.get("production") or {}
    if production.get("data"):
        data, window = production["data"], production["data"].get("window") or {}
        when = f"{window.get('first')} to {window.get('last')}"
        known = data.get("duplicates", 0)
        print(f"  learned   {data['rows']} labelled production examples, {when} "
              f"(train/validation/test {data.get('splits')}; {known} already in the data)")  # fmt: skip
    held = production.get("held_out") or {}
    for who in ("challenger", "champion"):
        if held.get(who):
            # A classifier's accuracy and macro-F1; a language model's scorers.
            scores = ", ".join(f"{k} {v:.4f}" for k, v in held[who].items() if isinstance(v, (int, float)))
            print(f"  held-out  production ({held['examples']} rows), {who}: {scores}")
    if run["links"].get("prepare_report"):
        print(f"  data      every dropped or flagged row: {run['links']['prepare_report']}")
    if run["links"].get("transform_output"):
        print(f"  output    {run['links']['transform_output']}")
    if run["links"].get("report"):
        print(f"  report    tuneloop report {run['run_id']}")
    cost = run.get("cost")
    if cost and cost["lines"]:
        print(f"  cost      ${cost['total_usd']:.4f}{'' if cost['complete'] else ' (some lines unpriced)'} "
              f"at list prices of {cost['prices_as_of']}")  # fmt: skip
        for line in cost["lines"]:
            usd = f"${line['usd']:.4f}" if line.get("usd") is not None else "unpriced"
            amount = (
                f"{line['hours']:.3f} h" if "hours" in line else f"{line.get('billable_seconds', 0):.0f} s billable"
            )
            spot = f", spot saved {line['spot_savings_pct']:.0f}%" if "spot_savings_pct" in line else ""
            spot = spot or (", spot: no saving reported" if line.get("spot") else "")
            name = line.get("job") or line.get("endpoint")
            print(f"    {name:<40} {line.get('instance_type', ''):<15} {amount:>16}{spot}  {usd}")
    step = next_step(run)
    if step:
        print(f"  next      {step}")


def describe_comparison(c: dict[str, Any]) -> str:
    """``macro_f1 0.8120 vs 0.9110 (run X) on 265 rows: -0.0990, 95% interval -0.14 to -0.06``."""
    try:
        against = f"run {c.get('champion_run_id')}" if c.get("champion_run_id") else c.get("against", "?")
        differing = f"; {c['differing_rows']} answered differently" if c.get("differing_rows") is not None else ""
        return (
            f"{c['metric']} {c['challenger']:.4f} vs {c['champion']:.4f} ({against}) "
            f"on {c['rows']} test rows: {c['challenger'] - c['champion']:+.4f}, "
            f"{c['confidence']:.0%} interval {c['low']:+.4f} to {c['high']:+.4f}{differing}"
        )
    except (KeyError, TypeError, ValueError):
        return str(c)


NEXT_STEP = {
    "pending_approval": "waits for a person: tuneloop run approve {id} (or reject {id}) [--reason TEXT]",
    "deployed": "serves its endpoint; tuneloop run retrain {id} starts a retraining run",
    "rejected": "was rejected; see the last history entry for why",
}


def next_step(run: dict[str, Any]) -> str | None:
    text = NEXT_STEP.get(run.get("state", ""))
    return f"run {run['run_id']} {text.format(id=run['run_id'])}" if text else None


def wait_for_run(api: Api, project: str, after: set[str], timeout: float) -> dict[str, Any]:
    """Poll the API until a run of ``project`` that is not in ``after`` exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.call("GET", f"/runs?project={q(project)}&limit=100")["runs"]
        fresh = [r for r in runs if r["run_id"] not in after]
        if fresh:
            return dict(api.call("GET", f"/runs/{fresh[0]['run_id']}"))
        time.sleep(0.25)
    raise CliError(f"no run of {project} appeared within {timeout:.0f}s; see {cloud.home() / 'logs' / 'host.log'}")


ACTIVE_STEPS = (
    "received", "preparing", "training", "tuning", "evaluating", "gating", "registering", "deploying", "transforming",
)  # fmt: skip


def watch(
    target: Target, run_id: str, until: tuple[str, ...] = (), timeout: float = 3600, quiet: bool = False
) -> dict[str, Any]:
    """Follow a run: its state; while it trains, the job's status, epoch, step and loss, and
    each finished epoch's validation metrics; while it tunes, the same for every running
    trial. Says what to do next when the run waits for a person.

    Returns the run once it reaches a state in ``until`` (or any state past training when
    ``until`` is empty), leaves the active states, or the timeout passes. ``quiet``: the
    progress goes to stderr (stdout is for the result).
    """
    shown_to = sys.stderr if quiet else sys.stdout
    api = target.api
    sagemaker = target.sagemaker() if target.sagemaker else None
    deadline = time.monotonic() + timeout
    shown: set[str] = set()
    last = ""
    while True:
        run = api.call("GET", f"/runs/{q(run_id)}")
        line = f"{run['state']:<12}"
        awaiting = run.get("awaiting") or ""
        extra: list[str] = []
        if sagemaker and run["state"] == "training" and awaiting:
            progress, validation = training_progress(sagemaker, awaiting)
            line += f" {awaiting} {progress}"
            extra += validation
        elif sagemaker and run["state"] == "tuning" and awaiting:
            line += f" {awaiting} {tuning_progress(sagemaker, awaiting)}"
            for trial in running_trials(sagemaker, awaiting):
                progress, validation = training_progress(sagemaker, trial)
                extra += [f"  trial {trial} {progress}", *validation]
        elif awaiting:
            line += f" waiting on {awaiting}"
        stamp = time.strftime("%H:%M:%S")
        if line != last:
            print(f"  {stamp}  {line}", flush=True, file=shown_to)
            last = line
        for text in extra:
            if text not in shown:  # each epoch's validation line, each trial's progress, once
                shown.add(text)
                print(f"  {stamp}    {text}", flush=True, file=shown_to)
        finished = run["state"] in until if until else run["state"] not in ACTIVE_STEPS
        if finished or (until and run["state"] not in ACTIVE_STEPS and run["state"] not in until):
            step = next_step(run)
            if step and not until:
                print(f"  {stamp}  {step}", flush=True, file=shown_to)
            return dict(run)
        if time.monotonic() > deadline:
            raise CliError(f"run {run_id} is still {run['state']} after {timeout:.0f}s")
        time.sleep(1)


def training_progress(sagemaker: Any, job_name: str) -> tuple[str, list[str]]:
    """(``Training epoch 1.20 step 40 loss 0.4123``, the finished epochs' validation lines)."""
    try:
        job = sagemaker.describe_training_job(TrainingJobName=job_name)
    except Exception:  # not created yet, or not a job the local server knows
        return "starting", []
    metrics = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
    text = f"{job['SecondaryStatus']:<12}"
    if "step" in metrics:
        text += f" epoch {metrics.get('epoch', 0):.2f} step {int(metrics['step'])}"
    if "train_loss" in metrics:
        text += f" loss {metrics['train_loss']:.4f}"
    scores = {k: v for k, v in sorted(metrics.items()) if k.startswith("validation_")}
    validation = []
    if scores:
        # FinalMetricDataList holds the last value: one line per epoch it has reached.
        epoch = int(metrics.get("epoch", 0))  # the last finished epoch: validation runs at its end
        values = " ".join(f"{k.removeprefix('validation_')} {v:.4f}" for k, v in scores.items())
        validation.append(f"{job_name} epoch {epoch} validation: {values}")
    return text, validation


def running_trials(sagemaker: Any, tuning_job: str) -> list[str]:
    try:
        page = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=tuning_job, StatusEquals="InProgress", MaxResults=10
        )
    except Exception:  # not created yet
        return []
    return sorted(t["TrainingJobName"] for t in page.get("TrainingJobSummaries", []))


def tuning_progress(sagemaker: Any, job_name: str) -> str:
    """``trials 2/4 done (1 running, 1 stopped early) · best 0.8123``, from Describe."""
    try:
        job = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
    except Exception:  # not created yet
        return "starting"
    counters = job.get("TrainingJobStatusCounters", {})
    total = job["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"]
    failed = counters.get("NonRetryableError", 0) + counters.get("RetryableError", 0)
    done = counters.get("Completed", 0) + counters.get("Stopped", 0) + failed
    text = f"trials {done}/{total} done ({counters.get('InProgress', 0)} running"
    text += f", {counters.get('Stopped', 0)} stopped early" if counters.get("Stopped") else ""
    text += f", {failed} failed" if failed else ""
    text += ")"
    best = (job.get("BestTrainingJob") or {}).get("FinalHyperParameterTuningJobObjectiveMetric")
    if best:
        text += f" · best {best['MetricName']} {best['Value']:.4f}"
    return text


def save_report(run: dict[str, Any], out: Path | None = None) -> Path:
    """Download the run's report.html (self-contained: its plots are inside) and return where."""
    link = run["links"].get("report")
    if not link:
        raise CliError(f"run {run['run_id']} has no evaluation report yet (it is {run['state']})")
    if not str(link).startswith(("https://", "http://127.0.0.1:", "http://localhost:")):
        raise CliError(f"run {run['run_id']}'s report link {str(link)[:80]!r} is not an https or loopback URL")
    target = out or cloud.home() / "reports" / run["run_id"] / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(link, timeout=30) as response:  # nosec B310  # https or loopback, checked above
        target.write_bytes(response.read())
    return target
