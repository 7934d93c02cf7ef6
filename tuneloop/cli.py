"""The `tuneloop` command line: the local cloud, projects, datasets, runs and events."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from chalicelib.events import json_type
from chalicelib.spec import TuneloopError

from .client import (
    REPO_ROOT,
    CliError,
    confirmed,
    describe_receipt,
    drop,
    local_state,
    q,
    save_report,
    send_feedback,
    show_run,
    watch,
)
from .local import cloud
from .stages import target

DOCS = REPO_ROOT / "docs" / "state-machine.md"


def version() -> str:
    """The installed distribution's version; from a checkout, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("tuneloop")
    except metadata.PackageNotFoundError:
        import tomllib

        return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])


# --- commands ---------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    cloud.up(clean=args.clean, api_port=args.port)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cloud.down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.stage or os.environ.get("TUNELOOP_STAGE"):
        return stage_status(args)
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
        print(f'  AWS credentials in {info["credentials_file"]} (`eval "$(tuneloop env)"` for a shell)')
    return 0 if info.get("up") else 1


def stage_status(args: argparse.Namespace) -> int:
    reached = target(args)
    info: dict[str, Any] = {"stage": reached.name.removeprefix("stage "), "api": reached.api.base,
                            "region": reached.api.region, "bucket": reached.bucket}  # fmt: skip
    try:
        reached.api.call("GET", "/projects?limit=1")
        info["reachable"] = True
    except CliError as exc:
        info["reachable"], info["error"] = False, str(exc)
    if info["reachable"]:
        try:
            info["spend"] = reached.api.call("GET", "/spend")
        except CliError as exc:  # SageMaker not configured there: nothing spent to read
            info["spend_error"] = str(exc)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{reached.name} ({info['region']}): {'reachable' if info['reachable'] else 'NOT REACHABLE'}")
        print(f"  api       {info['api']}")
        print(f"  bucket    s3://{info['bucket']}")
        if not info["reachable"]:
            print(f"  error     {info['error']}")
        spend = info.get("spend")
        if spend and spend.get("usd") is not None:
            budget = f" of its ${spend['budget_usd']} budget" if spend.get("budget_usd") else " (no budget set)"
            gaps = "" if spend["complete"] and not spend["partial"] else "; some lines unpriced or runs unread"
            print(f"  spend     ${spend['usd']:.2f}{budget} in {spend['month']}, at list prices of "
                  f"{spend['prices_as_of']}{gaps}")  # fmt: skip
        elif spend and spend.get("unavailable"):
            print(f"  spend     not read: {spend['unavailable']}")
        elif info.get("spend_error"):
            print(f"  spend     not read: {info['spend_error']}")
    return 0 if info["reachable"] else 1


def listing(args: argparse.Namespace, path: str, key: str, line: Any, empty: str) -> int:
    """A GET listing of the target's API: as JSON with --json, else a line per item."""
    items = paged(args, path, key)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for item in items:
        print(line(item))
    if not items:
        print(empty)
    return 0


def cmd_drops(args: argparse.Namespace) -> int:
    """Uploads that started nothing (an unknown project, an invalid config, a limit), with why."""
    return listing(args, "/drops", "refused", lambda r: f"{r['refused_at']}  {r['uri']}: {r['reason']}",
                   "no refused uploads")  # fmt: skip


def cmd_events(args: argparse.Namespace) -> int:
    """The stage's notices: runs waiting for approval, failed, rolled back; retraining an
    alarm started; the budget spent. Each with what to do next."""
    return listing(args, "/notices", "notices", lambda n: f"{n['time']}  {n['message']}\n{'':22}next: {n['next']}",
                   "no notices")  # fmt: skip


def cmd_env(args: argparse.Namespace) -> int:
    """The local cloud's endpoints and credentials as shell exports."""
    state = cloud.load_state()
    if state is None:
        raise CliError("the local cloud is not up: run `tuneloop up`")
    env = {
        **state.env,
        "AWS_ENDPOINT_URL_SAGEMAKER": f"http://127.0.0.1:{state.sagemaker_port}",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": f"http://127.0.0.1:{state.sagemaker_port}",
    }
    for key in sorted(env):
        print(f"export {key}={shlex.quote(env[key])}")
    return 0


def read_json_file(path: str, what: str) -> Any:
    """A JSON file's value, or a one-line CliError saying why it is not one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not JSON ({what}): {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc


def project_file(path: str) -> dict[str, Any]:
    """A project file: {name, config}, as examples/*.json are."""
    spec = read_json_file(path, "a project is {name, config}")
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise CliError(f"{path} holds a JSON {json_type(spec)} without a config object; a project is {{name, config}}")
    return spec


def printed(args: argparse.Namespace, value: Any, text: str) -> None:
    """The command's result: JSON with --json, else its line."""
    print(json.dumps(value, indent=2) if getattr(args, "json", False) else text)


def cmd_project_create(args: argparse.Namespace) -> int:
    spec = project_file(args.file)
    if args.name:
        spec["name"] = args.name
    project = target(args).api.call("POST", "/projects", spec)
    printed(args, project, f"project {project['name']} created")
    return 0


def cmd_project_update(args: argparse.Namespace) -> int:
    """Replace a project's config with the file's (runs started from then on use it)."""
    spec = project_file(args.file)
    if spec.get("name") not in (None, args.name):
        raise CliError(f"{args.file} is project {spec['name']!r}, not {args.name!r}: a project keeps its name")
    project = target(args).api.call("PUT", f"/projects/{q(args.name)}", {"config": spec["config"]})
    printed(args, project, f"project {project['name']} updated (version {project.get('version', '?')}): runs "
            "started from now on use this config")  # fmt: skip
    return 0


# The most items the API answers in one page.
PAGE = 100


def paged(args: argparse.Namespace, path: str, key: str, query: list[str] | None = None) -> list[dict[str, Any]]:
    """Every item of a listing up to --limit, following its pages (next_token); a line on
    stderr says when more remain. (A newest-first listing without pages answers one page.)"""
    if args.limit < 1:
        raise CliError(f"--limit {args.limit}: give 1 or more")
    items: list[dict[str, Any]] = []
    token = None
    api = target(args).api
    while len(items) < args.limit:
        asked = min(PAGE, args.limit - len(items))
        parts = [*(query or []), f"limit={asked}"]
        if token:
            parts.append(f"next_token={q(token)}")
        page = api.call("GET", f"{path}?{'&'.join(parts)}")
        items += page[key]
        token = page.get("next_token")
        if not token:
            if "next_token" not in page and len(page[key]) == PAGE < args.limit:
                print(f"tuneloop: the API answers the newest {PAGE} {key} at most", file=sys.stderr)
            return items
    print(f"tuneloop: more {key} than --limit {args.limit}: raise it to see them", file=sys.stderr)
    return items


def cmd_project_list(args: argparse.Namespace) -> int:
    projects = paged(args, "/projects", "projects")
    if args.json:
        print(json.dumps(projects, indent=2))
        return 0
    for project in projects:
        print(f"{project['name']:<24} {project['config']['task']:<20} {project['config']['base_model']}")
    if not projects:
        print("no projects yet: tuneloop project create --file examples/demo-project.json")
    return 0


def cmd_project_show(args: argparse.Namespace) -> int:
    print(json.dumps(target(args).api.call("GET", f"/projects/{q(args.name)}"), indent=2))
    return 0


def cmd_project_delete(args: argparse.Namespace) -> int:
    """Stop serving and delete what the project's runs made, then the project."""
    what = "its endpoint, configs, models, alarms and scaling"
    what += ", and every registered version" if args.delete_models else " (registered versions are kept)"
    confirm(f"delete project {args.name}: {what}", args.yes)
    query = "?delete_models=true" if args.delete_models else ""
    result = target(args).api.call("DELETE", f"/projects/{q(args.name)}{query}")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"project {result['project']} deleted")
    for kind, listed in sorted(result.get("deleted", {}).items()):
        shown = ", ".join(listed[:4]) + (" …" if len(listed) > 4 else "")
        print(f"  deleted {len(listed):>3} {kind.replace('_', ' ')}: {shown}")
    for kind, listed in sorted(result.get("kept", {}).items()):
        if listed:
            print(f"  kept    {len(listed):>3} {kind.replace('_', ' ')}")
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    uri, run_id = drop(target(args), Path(args.file), args.project, args.dataset_id)
    printed(args, {"uri": uri, "run_id": run_id}, f"uploaded {uri}: run {run_id} started (tuneloop watch {run_id})")
    return 0


def cmd_feedback_send(args: argparse.Namespace) -> int:
    receipt = send_feedback(target(args), Path(args.file), args.project)
    printed(args, receipt, describe_receipt(receipt))
    return 0 if receipt["accepted"] else 1


def cmd_feedback_list(args: argparse.Namespace) -> int:
    receipts = paged(args, f"/projects/{q(args.project)}/feedback", "receipts")
    if args.json:
        print(json.dumps(receipts, indent=2))
        return 0
    for receipt in receipts:
        print(f"{receipt['delivery']}  {describe_receipt(receipt)}")
    if not receipts:
        print(f"no feedback for {args.project} yet")
    return 0


def _print_runs(runs: list[dict[str, Any]]) -> None:
    print(f"{'RUN':<14}{'PROJECT':<18}{'STATE':<18}CREATED")
    for run in runs:
        print(f"{run['run_id']:<14}{run['project']:<18}{run['state']:<18}{run['created_at']}")


def cmd_runs(args: argparse.Namespace) -> int:
    query = []
    if args.project:
        query.append(f"project={q(args.project)}")
    if args.state:
        query.append(f"state={q(args.state)}")
    runs = paged(args, "/runs", "runs", query)
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    _print_runs(runs)
    return 0


def cmd_run_show(args: argparse.Namespace) -> int:
    run = target(args).api.call("GET", f"/runs/{q(args.run_id)}")
    print(json.dumps(run, indent=2)) if args.json else show_run(run)
    return 0


def confirm(question: str, yes: bool) -> None:
    """Go on only with --yes, or a "yes" typed at a terminal."""
    if not confirmed(question, yes):
        raise CliError("not confirmed; nothing was changed")


def cmd_run_stop(args: argparse.Namespace) -> int:
    body = None
    if args.stop_serving:
        confirm(f"stop run {args.run_id} and delete the endpoint it serves", args.yes)
        body = {"stop_serving": True}
    result = target(args).api.call("POST", f"/runs/{q(args.run_id)}/stop", body)
    printed(args, result, f"run {result['run_id']} is {result['state']}")
    return 0


def cmd_run_decide(args: argparse.Namespace) -> int:
    """approve / reject a run waiting for a person; retrain a deployed run."""
    body = {"reason": args.reason} if args.reason else None
    result = target(args).api.call("POST", f"/runs/{q(args.run_id)}/{args.run_command}", body)
    if args.run_command == "retrain":
        printed(args, result, f"retraining run {result['child_run_id']} started from {args.run_id} "
                f"(tuneloop watch {result['child_run_id']})")  # fmt: skip
    else:
        printed(args, result, f"run {args.run_id} {result['decision']}; it is {result['state']}")
    return 0


# Where a run ended without what it was for: watch exits 1.
UNSUCCESSFUL = ("failed", "stopped", "rejected", "rolled_back")


def cmd_watch(args: argparse.Namespace) -> int:
    run = watch(target(args), args.run_id, timeout=args.timeout, quiet=args.json)
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        show_run(run)
    return 1 if run["state"] in UNSUCCESSFUL else 0


def cmd_report(args: argparse.Namespace) -> int:
    run = target(args).api.call("GET", f"/runs/{q(args.run_id)}")
    saved = save_report(run, Path(args.out) if args.out else None)
    plots = {name[5:]: link for name, link in sorted(run["links"].items()) if name.startswith("plot:")}
    if args.json:
        print(json.dumps({"run_id": run["run_id"], "report": str(saved), "plots": plots}, indent=2))
    else:
        print(f"report of run {run['run_id']} saved to {saved}")
        for name, link in plots.items():
            print(f"  {name:<22} {link}")
    if args.open:
        import webbrowser

        webbrowser.open(saved.as_uri())
    return 0


def read_event(path: Path) -> dict[str, Any]:
    """An EventBridge event from a file, or a one-line reason it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    if not isinstance(event, dict):
        raise CliError(f"{path} holds a JSON {json_type(event)}; an EventBridge event is a JSON object")
    for field in ("source", "detail-type"):
        if not isinstance(event.get(field), str):
            raise CliError(f"{path}: the event's {field!r} must be a string (EventBridge routes by it)")
    return event


def cmd_event_send(args: argparse.Namespace) -> int:
    from .local.host import build_router, load_app

    event = read_event(Path(args.file))
    state = local_state()
    os.environ.update(state.env)
    router = build_router(load_app(), None)
    delivered = router.send(event, by_hand=True)
    if not delivered:
        raise CliError("no handler's pattern matches this event; nothing delivered")
    print(f"delivered event {event.get('id')} to {', '.join(delivered)}")
    return 0


def ui_backend(args: argparse.Namespace) -> Any:
    """The API the dashboard forwards to: the local cloud's, or a stage's (signed with the
    caller's AWS credentials; its URL from --api-url, the stage profile or the stack)."""
    from .stages import stage_target
    from .ui.server import LocalBackend, StageBackend

    stage = args.stage or os.environ.get("TUNELOOP_STAGE")
    if not stage:
        return LocalBackend(cloud.load_state)
    api = stage_target(stage, args.region, args.profile).api
    return StageBackend(args.api_url or api.base, api.region, api.credentials, stage)


def cmd_ui(args: argparse.Namespace) -> int:
    from .local.httpserve import one_line_on
    from .ui.server import LINK_TTL_S, UiServer, open_privately

    one_line_on(sys.stderr)
    server = UiServer(ui_backend(args), args.port)
    link = server.link()
    print(f"dashboard ({server.backend.name}): {link}", flush=True)
    print(f"the link opens it once, within {LINK_TTL_S / 60:.0f} minutes; Enter prints a new one; Ctrl-C stops it",
          flush=True)  # fmt: skip
    server.offer_links()
    opened = open_privately(link) if not args.no_open else None
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if opened is not None:
            shutil.rmtree(opened, ignore_errors=True)
    return 0


def dead_letters(args: argparse.Namespace) -> Any:
    """A deployed stage's dead-letter queues (--stage), or the local router's file."""
    from .dlq import LocalDeadLetters, StackDeadLetters
    from .stages import LOCAL, StageProfile, check_stage_name, session

    stage = args.stage or os.environ.get("TUNELOOP_STAGE")
    if not stage or stage == LOCAL:
        return LocalDeadLetters(cloud.home() / "dead-letters.jsonl")
    profile = StageProfile.load(check_stage_name(stage))
    made = session(profile, args.region, args.profile)
    stack = args.stack or profile.stack_name
    return StackDeadLetters(made.client("cloudformation"), made.client("sqs"), made.client("lambda"), stack)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from .dlq import DeadLetterError

    try:
        letters = dead_letters(args).letters(args.handler)
    except DeadLetterError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps([{"handler": d.handler, "reason": d.reason, "event": d.event} for d in letters], indent=2))
        return 0
    stage = args.stage or os.environ.get("TUNELOOP_STAGE")
    where = f"stage {stage}" if stage and stage != "local" else str(cloud.home() / "dead-letters.jsonl")
    print(f"{len(letters)} dead letter{'' if len(letters) == 1 else 's'} ({where})")
    for letter in letters:
        print(f"  {letter.summary}")
    return 0


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from .dlq import DeadLetterError, LocalDeadLetters

    letters = dead_letters(args)
    try:
        if isinstance(letters, LocalDeadLetters):
            from .local.host import build_router, load_app

            os.environ.update(local_state().env)
            router = build_router(load_app(), None)
            delivered, failed = letters.redrive(lambda event: router.send(event, by_hand=True), args.handler)
        else:
            delivered, failed = letters.redrive(args.handler)
    except DeadLetterError as exc:
        raise CliError(str(exc)) from exc
    print(f"delivered {delivered} dead letter{'' if delivered == 1 else 's'} again")
    for reason in failed:
        print(f"  not delivered: {reason}")
    return 1 if failed else 0


def cmd_configure(args: argparse.Namespace) -> int:
    """Print the settings `deploy` would give a stage: the region's images (pinned), the
    execution role, the training code's version. Writes nothing."""
    from . import configure
    from .training_code import code_version

    values = configure.stage_settings(
        args.stage, args.region, args.account_id, args.role_arn, code_version(REPO_ROOT / "training")
    )
    if args.pin_digests:
        import boto3

        values = configure.pin_digests(values, boto3.client("ecr", region_name=args.region))
    else:
        print("images are by tag (--no-pin-digests): a moved tag changes what trains and serves", file=sys.stderr)
    for name, value in sorted(values.items()):
        print(f"{name}={value}")
    print(f"ImageRepositoryArns={','.join(configure.repository_arns(values))}")
    print(f"(`tuneloop deploy --stage {args.stage} --region {args.region}` resolves and applies these)")
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    from . import destroy
    from .stages import LOCAL, StageProfile, session

    stage = args.stage  # never from TUNELOOP_STAGE: what is destroyed is named on the command line
    if not stage:
        raise CliError("destroy needs --stage (a deployed stage, or local for the local cloud)")
    stack = None
    reached: Any = None
    if stage == LOCAL:
        reached = target(args)
    else:
        made = session(StageProfile.load(stage), args.region, args.profile)
        account = str(made.client("sts").get_caller_identity()["Account"])
        clients = {name: made.client(name) for name in ("s3", "dynamodb", "cloudformation", "logs")}
        stack = destroy.StackTeardown(stage, made.region_name, account, clients, print)
        try:
            reached = target(args)
        except CliError as exc:
            if "has no EndpointURL" not in str(exc) and "cannot read stack" not in str(exc):
                raise
    return destroy.run(reached, stage, args.yes, args.delete_data, stack)


def cmd_deploy(args: argparse.Namespace) -> int:
    from . import deploy

    stage = args.stage or os.environ.get("TUNELOOP_STAGE")
    if not stage or stage == "local":
        raise CliError("deploy needs --stage (dev, prod): the local cloud is `tuneloop up`")
    return deploy.run(stage, args.region, args.profile, args.yes, args.api_gateway_account)


def cmd_docs(args: argparse.Namespace) -> int:
    from chalicelib.domain.diagram import BEGIN, END, document

    from . import configdoc

    text = DOCS.read_text() if DOCS.is_file() else f"# Run state machine\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    generated = {DOCS: head + document() + tail, **configdoc.outputs(DOCS.parent)}
    stale = [path for path, content in generated.items() if not path.is_file() or path.read_text() != content]
    if args.check:
        for path in stale:
            print(f"tuneloop: {path} is out of date: run `tuneloop docs`", file=sys.stderr)
        return 1 if stale else 0
    DOCS.parent.mkdir(exist_ok=True)
    for path in stale:
        path.write_text(generated[path])
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    # The demo starts from nothing in a home of its own: a cloud you use stays as it is. One
    # a last `demo --keep` left up is stopped first, so this one starts empty too.
    os.environ["TUNELOOP_HOME"] = str(cloud.home() / "demo")
    if cloud.load_state() is not None:
        print("stopping the local cloud the last demo left up (--keep)…", file=sys.stderr)
        cloud.down()
    if args.llm:
        from . import demo_llm

        return demo_llm.run(args)
    return demo.run(args)


def stage_options() -> argparse.ArgumentParser:
    """--stage, --profile and --region, as the AWS CLI has them, on every command that
    reaches a cloud."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("where")
    group.add_argument(
        "--stage",
        help="a deployed stage, reached with your AWS credentials (default: $TUNELOOP_STAGE, else the local "
        "cloud; `local` is the local cloud reached as a stage is; deploy and destroy take it from here only)",
    )
    group.add_argument("--profile", help="the AWS profile to use for the stage (default: the AWS configuration's)")
    group.add_argument("--region", help="the stage's region (default: the stage profile's, then the AWS config's)")
    return options


def build_parser() -> argparse.ArgumentParser:
    where = stage_options()
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    parser = argparse.ArgumentParser(prog="tuneloop", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tuneloop {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the local cloud (state persists unless --clean)")
    p.add_argument("--clean", action="store_true", help="start from empty tables and bucket")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local cloud, saving the bucket").set_defaults(func=cmd_down)
    sub.add_parser("env", help='shell exports for the local cloud (eval "$(tuneloop env)")').set_defaults(func=cmd_env)
    p = sub.add_parser("status", help="what runs where (the local cloud, or a stage)", parents=[where],
                       description="The local cloud's services, or a stage's API and bucket and its spend this "
                       "month against its budget.")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    project = sub.add_parser("project", help="projects").add_subparsers(dest="project_command", required=True)
    p = project.add_parser("create", help="create a project from a JSON file {name, config}", parents=[where, out])
    p.add_argument("--file", required=True, help="the project: {name, config}, as examples/*.json")
    p.add_argument("--name", help="override the name in the file")
    p.set_defaults(func=cmd_project_create)
    p = project.add_parser("update", help="replace a project's config with a file's", parents=[where, out])
    p.add_argument("name")
    p.add_argument("--file", required=True, help="the project: {name, config}, as examples/*.json")
    p.set_defaults(func=cmd_project_update)
    p = project.add_parser("list", help="every project: name, task, base model", parents=[where, out])
    p.add_argument("--limit", type=int, default=1000, help="list at most this many (default 1000)")
    p.set_defaults(func=cmd_project_list)
    p = project.add_parser("show", help="a project and its config (JSON)", parents=[where, out])
    p.add_argument("name")
    p.set_defaults(func=cmd_project_show)
    p = project.add_parser(
        "delete", help="stop serving; delete the endpoint, configs, models, alarms, scaling; then the project",
        parents=[where],
    )  # fmt: skip
    p.add_argument("name")
    p.add_argument("--delete-models", action="store_true", help="also delete the registered model versions")
    p.add_argument("--yes", action="store_true", help="do not ask to confirm")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_project_delete)

    p = sub.add_parser("drop", help="upload a dataset file to the project's dataset prefix", parents=[where, out])
    p.add_argument("file")
    p.add_argument("--project", required=True)
    p.add_argument("--dataset-id", help="default: a UTC timestamp")
    p.set_defaults(func=cmd_drop)

    feedback = sub.add_parser("feedback", help="labels for captured requests").add_subparsers(
        dest="feedback_command", required=True
    )
    p = feedback.add_parser(
        "send",
        help="upload a JSONL/CSV of {inference_id, label} (a language model's: completion, rating or "
        "preferred_over instead of label) under feedback/<project>/",
        parents=[where, out],
    )
    p.add_argument("file")
    p.add_argument("--project", required=True)
    p.set_defaults(func=cmd_feedback_send)
    p = feedback.add_parser("list", help="the newest feedback receipts (both doors)", parents=[where, out])
    p.add_argument("--project", required=True)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_feedback_list)

    p = sub.add_parser(
        "events", help="notices: runs waiting for approval, failed, rolled back; retraining an alarm started",
        parents=[where],
    )  # fmt: skip
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("drops", help="uploads that started nothing, and why", parents=[where])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drops)

    p = sub.add_parser("runs", help="list runs, newest first", parents=[where, out])
    p.add_argument("--project")
    p.add_argument("--state")
    p.add_argument("--limit", type=int, default=1000, help="list at most this many (default 1000)")
    p.set_defaults(func=cmd_runs)

    run = sub.add_parser("run", help="one run").add_subparsers(dest="run_command", required=True)
    p = run.add_parser("show", parents=[where])
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run_show)
    p = run.add_parser("stop", help="stop a run's job (a deployed run: only with --stop-serving)", parents=[where, out])
    p.add_argument("run_id")
    p.add_argument("--stop-serving", action="store_true",
                   help="stop a deployed run: delete the endpoint it serves (asks to confirm)")  # fmt: skip
    p.add_argument("--yes", action="store_true", help="do not ask to confirm")
    p.set_defaults(func=cmd_run_stop)
    for name, text in (
        ("approve", "approve a run waiting for manual approval: it deploys"),
        ("reject", "reject a run waiting for manual approval"),
        ("retrain", "start a retraining run of a deployed run"),
    ):
        p = run.add_parser(name, help=text, parents=[where, out])
        p.add_argument("run_id")
        p.add_argument("--reason", help="recorded in the run's history")
        p.set_defaults(func=cmd_run_decide)

    p = sub.add_parser(
        "report", help="save a run's evaluation report (report.html) and list its plots", parents=[where, out]
    )
    p.add_argument("run_id")
    p.add_argument("--out", help="where to save it (default: $TUNELOOP_HOME/reports/RUN/report.html)")
    p.add_argument("--open", action="store_true", help="open it in the browser")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "watch",
        help="follow a run: state, job status, epoch, step, loss, tuning trials; exit 1 when it fails, stops, is "
        "rejected or rolled back",
        parents=[where, out],
    )
    p.add_argument("run_id")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=cmd_watch)

    event = sub.add_parser("event", help="events").add_subparsers(dest="event_command", required=True)
    p = event.add_parser("send", help="deliver an AWS-shaped event (EventBridge envelope) through the router")
    p.add_argument("file")
    p.set_defaults(func=cmd_event_send)

    dlq = sub.add_parser("dlq", help="events a handler failed on").add_subparsers(dest="dlq_command", required=True)
    for name, func, text in (
        ("list", cmd_dlq_list, "show the dead letters (they stay where they are)"),
        ("redrive", cmd_dlq_redrive, "deliver the dead letters to their handlers again"),
    ):
        p = dlq.add_parser(name, help=text, parents=[where])
        p.add_argument("--handler", help="only this handler's (on_dataset_uploaded, on_sagemaker_event, on_alarm)")
        p.add_argument("--stack", help="the stage's CloudFormation stack (default: the stage profile's)")
        if name == "list":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("deploy", help="deploy a stage to AWS: bootstrap, images, package, change set", parents=[where],
                       description="From an empty account to a working stage in one call (the stage from --stage "
                       "only, never the environment); run again with nothing changed: a no-op. See "
                       "docs/deploying.md.")  # fmt: skip
    p.add_argument("--yes", action="store_true", help="apply the change set without asking")
    p.add_argument("--api-gateway-account", action=argparse.BooleanOptionalAction, default=None,
                   help="manage API Gateway's account setting (one per account and region): --no-api-gateway-account "
                   "for a second stage there (default: as the last deploy of this stage)")  # fmt: skip
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser(
        "destroy",
        help="delete every run-time resource of a stage, then its stack (data kept)",
        parents=[where],
        description="Stops and rejects the stage's waiting runs, deletes its projects' endpoints, models, alarms "
        "and scaling, then its stack; the stage comes from --stage only. Prints what remains and its monthly cost.",
    )
    p.add_argument("--yes", action="store_true", help="do not ask to confirm (not with --delete-data)")
    p.add_argument("--delete-data", action="store_true",
                   help="also delete the buckets, tables and log groups the stack keeps (type the stage to "
                   "confirm)")  # fmt: skip
    p.set_defaults(func=cmd_destroy)

    p = sub.add_parser("configure", help="print the settings deploy would give a stage (writes nothing)")
    p.add_argument("--stage", default="dev")
    p.add_argument("--region", required=True)
    p.add_argument("--account-id", required=True)
    p.add_argument("--role-arn", help="default: the role infra/resources.json creates")
    p.add_argument(
        "--pin-digests",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="name each image by its digest, read from ECR (default; needs AWS credentials)",
    )
    p.set_defaults(func=cmd_configure)

    p = sub.add_parser(
        "docs", help="regenerate docs/state-machine.md (the transition table) and docs/config.md (the config schema)"
    )
    p.add_argument("--check", action="store_true", help="fail if the file is out of date")
    p.set_defaults(func=cmd_docs)

    p = sub.add_parser(
        "ui", help="the dashboard: projects, runs, tuning, evaluation, cost (127.0.0.1)", parents=[where]
    )
    p.add_argument("--port", type=int, default=0, help="default: a free one")
    p.add_argument("--api-url", help="the stage's API URL, instead of the stage profile's or the stack's")
    p.add_argument("--no-open", action="store_true", help="print the link; do not open a browser")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("demo", help="the whole local loop, start to end")
    p.add_argument("--keep", action="store_true", help="leave the local cloud up afterwards")
    p.add_argument("--llm", action="store_true", help="the loop with a real language model (SmolLM2, LoRA, on CPU)")
    p.add_argument("--quick", action="store_true", help="with --llm: fewer steps, corrections and prompts")
    p.set_defaults(func=cmd_demo)
    return parser


# Exit statuses: 0 done; 1 a failure the command reports (one line on stderr); 2 a usage
# error (argparse's); 130 interrupted (Ctrl-C).
FAILED, INTERRUPTED = 1, 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quick", False) and not getattr(args, "llm", False):
        parser.error("demo --quick is for --llm")
    from botocore.exceptions import BotoCoreError, ClientError

    def fail(message: str) -> int:
        print(f"tuneloop: {message}".splitlines()[0], file=sys.stderr)
        return FAILED

    try:
        return int(args.func(args))
    except TuneloopError as exc:  # a failure tuneloop reports: a CliError, a local service's, a config's
        return fail(str(exc))
    except (BotoCoreError, ClientError) as exc:  # AWS said no, or could not be reached: its one line
        return fail(str(exc))
    except KeyboardInterrupt:
        print("tuneloop: interrupted", file=sys.stderr)
        return INTERRUPTED
    except OSError as exc:  # a file, a socket, a process: what failed, in one line
        return fail(f"{exc.strerror or type(exc).__name__}{f': {exc.filename}' if exc.filename else ''}")
    except Exception as exc:  # a bug: one line, and the traceback when asked for
        if os.environ.get("TUNELOOP_DEBUG"):
            raise
        return fail(f"unexpected {type(exc).__name__}: {exc} (TUNELOOP_DEBUG=1 shows where)")


if __name__ == "__main__":
    sys.exit(main())
