"""The `tuneloop` command line: the local cloud, projects, datasets, runs and events."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .local import cloud

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs" / "state-machine.md"


class CliError(Exception):
    pass


# --- API client -------------------------------------------------------------------------


class Api:
    def __init__(self, state: cloud.CloudState) -> None:
        self.base = state.api_url
        self.token = state.token

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            payload, status = exc.read(), exc.code
        except OSError as exc:
            raise CliError(f"cannot reach the local API at {self.base}: {exc}; is `tuneloop up` running?") from exc
        parsed = json.loads(payload) if payload else None
        if status not in ok:
            message = parsed.get("Message") if isinstance(parsed, dict) else payload.decode(errors="replace")
            raise CliError(f"{method} {path} → {status}: {message}")
        return parsed


def _state() -> cloud.CloudState:
    state = cloud.load_state()
    if state is None:
        raise CliError("the local cloud is not up: run `tuneloop up` first")
    return state


def _api() -> Api:
    return Api(_state())


# --- commands ---------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    cloud.up(clean=args.clean, api_port=args.port)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cloud.down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    info = cloud.status()
    if args.json:
        print(json.dumps(info, indent=2))
    elif not info.get("up") and "api" not in info:
        print(f"local cloud is down (home {info['home']})")
    else:
        print(f"local cloud is {'up' if info['up'] else 'partly down'} (home {info['home']})")
        for name in ("api", "dynamodb", "moto", "sagemaker"):
            part = info[name]
            print(f"  {name:<9} {part['url']:<28} pid {part['pid']:<7} {'running' if part['alive'] else 'STOPPED'}")
        print(f"  bucket    s3://{info['bucket']}")
        print(f"  token     in {info['token_file']}")
    return 0 if info.get("up") else 1


def cmd_project_create(args: argparse.Namespace) -> int:
    spec = json.loads(Path(args.file).read_text())
    if args.name:
        spec["name"] = args.name
    project = _api().call("POST", "/projects", spec)
    print(f"project {project['name']} created")
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    for project in _api().call("GET", "/projects?limit=100")["projects"]:
        print(f"{project['name']:<24} {project['config']['task']:<20} {project['config']['base_model']}")
    return 0


def cmd_project_show(args: argparse.Namespace) -> int:
    print(json.dumps(_api().call("GET", f"/projects/{args.name}"), indent=2))
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    state = _state()
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path} is not a file")
    dataset_id = args.dataset_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"datasets/{args.project}/{dataset_id}/{path.name}"
    state.client("s3").upload_file(str(path), state.bucket, key)
    print(f"uploaded s3://{state.bucket}/{key}")
    return 0


def _print_runs(runs: list[dict[str, Any]]) -> None:
    print(f"{'RUN':<14}{'PROJECT':<18}{'STATE':<18}CREATED")
    for run in runs:
        print(f"{run['run_id']:<14}{run['project']:<18}{run['state']:<18}{run['created_at']}")


def cmd_runs(args: argparse.Namespace) -> int:
    query = ["limit=100"]
    if args.project:
        query.append(f"project={args.project}")
    if args.state:
        query.append(f"state={args.state}")
    _print_runs(_api().call("GET", "/runs?" + "&".join(query))["runs"])
    return 0


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
        print(f"    {entry['time']}  {entry['from']:>16} → {entry['to']:<16} {entry['reason']}{commands}")
    for item in run["pending_commands"]:
        print(f"  pending   {item['type']} {item.get('job_name', '')}: {item['note']}")
    for group, values in sorted(run.get("metrics", {}).items()):
        for name, value in sorted(values.items()):
            print(f"  metric    {group}.{name} = {value:.6g}")
    tuning = run.get("tuning")
    if tuning:
        objective = tuning["objective"]
        print(f"  tuning    {tuning['job_name']}: {objective.get('type', '')} {objective.get('metric')}")
        for trial in tuning["trials"]:
            objective = f"{trial['objective']:.4f}" if trial.get("objective") is not None else "-"
            best = " ← best" if trial["training_job"] == tuning.get("best_training_job") else ""
            values = " ".join(f"{k}={v}" for k, v in sorted(trial["hyperparameters"].items()))
            print(f"    {trial['training_job']}  {trial['status']:<10} {objective:>8}  {values}{best}")
        if tuning.get("trials_error"):
            print(f"    (trials unavailable: {tuning['trials_error']})")
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
            name = line.get("job") or line.get("endpoint")
            print(f"    {name:<40} {line.get('instance_type', ''):<15} {amount:>16}{spot}  {usd}")


def cmd_run_show(args: argparse.Namespace) -> int:
    run = _api().call("GET", f"/runs/{args.run_id}")
    print(json.dumps(run, indent=2)) if args.json else show_run(run)
    return 0


def cmd_run_stop(args: argparse.Namespace) -> int:
    result = _api().call("POST", f"/runs/{args.run_id}/stop")
    print(f"run {result['run_id']} is {result['state']}")
    return 0


def wait_for_run(api: Api, project: str, after: set[str], timeout: float) -> dict[str, Any]:
    """Poll the API until a run of ``project`` that is not in ``after`` exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.call("GET", f"/runs?project={project}&limit=100")["runs"]
        fresh = [r for r in runs if r["run_id"] not in after]
        if fresh:
            return dict(api.call("GET", f"/runs/{fresh[0]['run_id']}"))
        time.sleep(0.25)
    raise CliError(f"no run of {project} appeared within {timeout:.0f}s; see {cloud.home() / 'logs' / 'host.log'}")


ACTIVE_STEPS = ("received", "preparing", "training", "tuning", "evaluating", "gating", "registering", "deploying")


def watch(state: cloud.CloudState, run_id: str, until: tuple[str, ...] = (), timeout: float = 3600) -> dict[str, Any]:
    """Follow a run: its state, and while it trains, the job's status, epoch, step and loss.

    Returns the run once it reaches a state in ``until`` (or any state past training when
    ``until`` is empty), leaves the active states, or the timeout passes.
    """
    api = Api(state)
    sagemaker = state.client("sagemaker") if state.sagemaker_port else None
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        run = api.call("GET", f"/runs/{run_id}")
        line = f"{run['state']:<12}"
        awaiting = run.get("awaiting") or ""
        if sagemaker and run["state"] == "training" and awaiting:
            try:
                job = sagemaker.describe_training_job(TrainingJobName=awaiting)
            except Exception:  # not created yet, or not a job the local server knows
                job = None
            if job:
                metrics = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
                line += f" {awaiting} {job['SecondaryStatus']:<12}"
                if "step" in metrics:
                    line += f" epoch {metrics.get('epoch', 0):.2f} step {int(metrics['step'])}"
                if "train_loss" in metrics:
                    line += f" loss {metrics['train_loss']:.4f}"
        elif sagemaker and run["state"] == "tuning" and awaiting:
            line += f" {awaiting} {tuning_progress(sagemaker, awaiting)}"
        elif awaiting:
            line += f" waiting on {awaiting}"
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')}  {line}", flush=True)
            last = line
        finished = run["state"] in until if until else run["state"] not in ACTIVE_STEPS
        if finished or (until and run["state"] not in ACTIVE_STEPS and run["state"] not in until):
            return dict(run)
        if time.monotonic() > deadline:
            raise CliError(f"run {run_id} is still {run['state']} after {timeout:.0f}s")
        time.sleep(1)


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


def cmd_watch(args: argparse.Namespace) -> int:
    run = watch(_state(), args.run_id, timeout=args.timeout)
    show_run(run)
    return 0 if run["state"] not in ("failed", "stopped", "rejected") else 1


def save_report(run: dict[str, Any], out: Path | None = None) -> Path:
    """Download the run's report.html (self-contained: its plots are inside) and return where."""
    link = run["links"].get("report")
    if not link:
        raise CliError(f"run {run['run_id']} has no evaluation report yet (it is {run['state']})")
    target = out or cloud.home() / "reports" / run["run_id"] / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(link, timeout=30) as response:
        target.write_bytes(response.read())
    return target


def cmd_report(args: argparse.Namespace) -> int:
    run = _api().call("GET", f"/runs/{args.run_id}")
    target = save_report(run, Path(args.out) if args.out else None)
    print(f"report of run {run['run_id']} saved to {target}")
    for name, link in sorted(run["links"].items()):
        if name.startswith("plot:"):
            print(f"  {name[5:]:<22} {link}")
    if args.open:
        import webbrowser

        webbrowser.open(target.as_uri())
    return 0


def cmd_event_send(args: argparse.Namespace) -> int:
    from .local.host import build_router, load_app

    state = _state()
    event = json.loads(Path(args.file).read_text())
    os.environ.update(state.env)
    router = build_router(load_app(), None)
    delivered = router.send(event)
    if not delivered:
        print("no handler's pattern matches this event; nothing delivered")
        return 1
    print(f"delivered event {event.get('id')} to {', '.join(delivered)}")
    return 0


def cmd_configure(args: argparse.Namespace) -> int:
    from . import configure
    from .local.sagemaker_server import code_version, upload_code

    source = REPO_ROOT / "training"
    values = configure.stage_settings(args.stage, args.region, args.account_id, args.role_arn, code_version(source))
    for name, value in sorted(values.items()):
        print(f"{name}={value}")
    if args.upload_code:
        import boto3

        bucket = values["TUNELOOP_CODE_URI"][5:].split("/", 1)[0]
        print(
            f"uploaded the training code to {upload_code(boto3.client('s3', region_name=args.region), source, bucket)}"
        )
    if not args.dry_run:
        configure.write_stage(Path(args.config_file), args.stage, values)
        print(f"wrote stage {args.stage} of {args.config_file}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from chalicelib.domain.diagram import BEGIN, END, document

    text = DOCS.read_text() if DOCS.is_file() else f"# Run state machine\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    updated = head + document() + tail
    if args.check:
        if updated != text:
            print(f"{DOCS} is out of date: run `tuneloop docs`", file=sys.stderr)
            return 1
        return 0
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text(updated)
    print(f"wrote {DOCS}")
    return 0


def serve_traffic(state: cloud.CloudState, endpoint: str, requests: int = 50) -> list[float]:
    """Invoke the endpoint with short texts through SageMaker Runtime; print an answer and
    the latency percentiles (milliseconds, as the client sees them)."""
    runtime = state.client("sagemaker-runtime")
    texts = ["A sturdy kettle, works perfectly.", "Broke after two days; avoid.", "Lovely chair, great value."]
    latencies = []
    answer: Any = None
    for n in range(requests):
        started = time.perf_counter()
        reply = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Body=json.dumps(texts[n % len(texts)])
        )
        answer = json.loads(reply["Body"].read())
        latencies.append((time.perf_counter() - started) * 1000)
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"endpoint {endpoint}: {texts[(requests - 1) % len(texts)]!r} → {answer['label']} "
          f"({max(answer['scores'].values()):.3f})")  # fmt: skip
    print(f"  {requests} requests of one short text: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    return latencies


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    # The demo starts from nothing in a home of its own: a cloud you use stays as it is.
    os.environ["TUNELOOP_HOME"] = str(cloud.home() / "demo")
    return demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the local cloud (state persists unless --clean)")
    p.add_argument("--clean", action="store_true", help="start from empty tables and bucket")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local cloud, saving the bucket").set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="what runs where")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    project = sub.add_parser("project", help="projects").add_subparsers(dest="project_command", required=True)
    p = project.add_parser("create", help="create a project from a JSON file {name, config}")
    p.add_argument("--file", required=True)
    p.add_argument("--name", help="override the name in the file")
    p.set_defaults(func=cmd_project_create)
    project.add_parser("list").set_defaults(func=cmd_project_list)
    p = project.add_parser("show")
    p.add_argument("name")
    p.set_defaults(func=cmd_project_show)

    p = sub.add_parser("drop", help="upload a dataset file to the project's dataset prefix")
    p.add_argument("file")
    p.add_argument("--project", required=True)
    p.add_argument("--dataset-id", help="default: a UTC timestamp")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--project")
    p.add_argument("--state")
    p.set_defaults(func=cmd_runs)

    run = sub.add_parser("run", help="one run").add_subparsers(dest="run_command", required=True)
    p = run.add_parser("show")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run_show)
    p = run.add_parser("stop")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_run_stop)

    p = sub.add_parser("report", help="save a run's evaluation report (report.html) and list its plots")
    p.add_argument("run_id")
    p.add_argument("--out", help="where to save it (default: $TUNELOOP_HOME/reports/RUN/report.html)")
    p.add_argument("--open", action="store_true", help="open it in the browser")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("watch", help="follow a run: state, job status, epoch, step, loss, tuning trials")
    p.add_argument("run_id")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=cmd_watch)

    event = sub.add_parser("event", help="events").add_subparsers(dest="event_command", required=True)
    p = event.add_parser("send", help="deliver an AWS-shaped event (EventBridge envelope) through the router")
    p.add_argument("file")
    p.set_defaults(func=cmd_event_send)

    p = sub.add_parser("configure", help="resolve the region's SageMaker images and write a stage's settings")
    p.add_argument("--stage", default="dev")
    p.add_argument("--region", required=True)
    p.add_argument("--account-id", required=True)
    p.add_argument("--role-arn", help="default: the role infra/resources.json creates")
    p.add_argument("--config-file", default=str(REPO_ROOT / ".chalice" / "config.json"))
    p.add_argument("--upload-code", action="store_true", help="upload this version of training/ to the stage's bucket")
    p.add_argument("--dry-run", action="store_true", help="print the settings, write nothing")
    p.set_defaults(func=cmd_configure)

    p = sub.add_parser("docs", help="regenerate docs/state-machine.md from the transition table")
    p.add_argument("--check", action="store_true", help="fail if the file is out of date")
    p.set_defaults(func=cmd_docs)

    p = sub.add_parser("demo", help="the whole local loop, start to end")
    p.add_argument("--keep", action="store_true", help="leave the local cloud up afterwards")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, cloud.ServiceError) as exc:
        print(f"tuneloop: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
