"""`make demo`: the whole loop on the local cloud, with a timeline.

drop → tune → evaluate → register → deploy → traffic → drift check (none) → production
changes: off-topic traffic, and service reviews whose wording turns the training data's
cues around (labels for them come back as feedback) → drift check: drift, and production
macro-F1 measured below the project's floor → alarms → retraining run that learns from the
labelled production traffic (warm-started tuning, gated against the deployed champion) →
deployed blue/green, or rejected with the reason → both models on held-out production
traffic.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from chalicelib.domain import names

from . import client
from .client import CliError
from .local import cloud

# Off-topic traffic: nothing like the product reviews the model was trained on.
DRIFTED = [
    "The quarterly earnings call covered supply chain logistics in depth",
    "Fold the butter into the flour and rest the dough overnight",
    "The striker volleyed home in extra time to settle the final",
    "Parliament debated the fisheries amendment until midnight",
    "Mount the telescope on a tripod before aligning it with the pole star",
    "Migratory geese follow the river valley south after the first frosts",
    "The committee postponed the vote on the municipal budget",
    "Photosynthesis converts light energy into chemical energy in chloroplasts",
    "The orchestra rehearsed the second movement twice before the concert",
    "Sediment layers record millions of years of the valley's history",
]


# Production that changed: reviews of services, not products, whose wording turns the
# training data's cues around (praise words in complaints, complaint words in praise).
# A model that learned the words misreads them; the outcomes they describe are learnable.
_THINGS = ("hotel room", "delivery", "flight", "dinner", "haircut", "repair visit", "taxi ride", "concert",
           "train journey", "pharmacy order", "spa day", "cooking class", "guided tour", "moving crew",
           "dental check-up")  # fmt: skip
_PRAISE = ("superb", "sturdy", "reliable", "lovely", "delightful", "great", "quiet")
_POOR = ("faulty", "noisy", "cheap", "useless", "clumsy", "disappointing", "terrible", "broken")
_BAD = ("we waited two hours and nobody apologised", "the staff lost our booking", "it arrived cold and late",
        "they charged us twice", "the room smelled of smoke", "nobody answered the phone for days",
        "half of it was missing", "we left hungry and angry", "the manager shrugged at our complaint",
        "it was cancelled without a word")  # fmt: skip
_GOOD = ("the staff went out of their way for us", "everything arrived on time", "we will certainly come back",
         "the price was fair and the service quick", "they remembered every little request",
         "it was the highlight of our week", "the team fixed everything in minutes", "we left smiling",
         "I have already recommended them to friends", "they even followed up to check on us")  # fmt: skip
_COMPLAINTS = ("The {thing} was anything but {word}; {outcome}.", "I expected a {word} {thing}, but {outcome}.",
               "Far from {word}, the {thing} was a mess: {outcome}.", "{Word} {thing}? Hardly. {Outcome}.")  # fmt: skip
_PRAISES = ("Nothing {word} about the {thing}; {outcome}.", "I feared the {thing} would be {word}, yet {outcome}.",
            "Not {word} at all, the {thing}: {outcome}.",
            "No {word} surprises with the {thing}, and {outcome}.")  # fmt: skip


def shifted_reviews(count: int, seed: int = 0) -> list[dict[str, str]]:
    """``count`` distinct labelled texts of the changed production traffic, half each label."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < count:
        negative = len(rows) % 2 == 1
        template = rng.choice(_COMPLAINTS if negative else _PRAISES)
        word = rng.choice(_PRAISE if negative else _POOR)
        outcome = rng.choice(_BAD if negative else _GOOD)
        text = template.format(thing=rng.choice(_THINGS), word=word, Word=word.capitalize(), outcome=outcome,
                               Outcome=outcome[0].upper() + outcome[1:])  # fmt: skip
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": "negative" if negative else "positive"})
    return rows


SHIFTED = 200  # labelled requests of the changed production traffic


class Timeline:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.marks: list[tuple[float, str]] = []

    def mark(self, text: str) -> None:
        at = time.monotonic() - self.started
        self.marks.append((at, text))
        print(f"\n▶ [{at:6.1f}s] {text}", flush=True)

    def show(self) -> None:
        print("\ntimeline")
        for at, text in self.marks:
            print(f"  {at:7.1f}s  {text}")


def send(
    state: cloud.CloudState, endpoint: str, texts: list[str], count: int, ids: list[str] | None = None, clients: int = 4
) -> list[float]:
    """``count`` requests, one text each, from ``clients`` callers at once (a service's
    traffic comes from many); with ``ids``, each carries its InferenceId (what feedback
    labels join on). Each request's latency, in ms."""
    runtime = state.client("sagemaker-runtime")

    def one(n: int) -> float:
        began = time.perf_counter()
        extra = {"InferenceId": ids[n]} if ids else {}
        runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Body=json.dumps(texts[n % len(texts)]), **extra
        )
        return (time.perf_counter() - began) * 1000

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(count)))


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"


def wait_captured(state: cloud.CloudState, project: str, total: int, timeout: float = 60) -> int:
    """Until the endpoint's capture in S3 holds ``total`` records (it is flushed in batches;
    each model's under its own run's prefix)."""
    s3 = state.client("s3")
    prefix = f"capture/{project}/"
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=state.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                count += len(s3.get_object(Bucket=state.bucket, Key=obj["Key"])["Body"].read().splitlines())
        if count >= total:
            return count
        time.sleep(0.5)
    raise CliError(f"only {count} of {total} requests were captured within {timeout:.0f}s")


def drift_check(api: client.Api, state: cloud.CloudState, project: str, run_id: str) -> dict[str, Any]:
    """Run the project's drift check now and return the job's drift.json."""
    sagemaker, s3 = state.client("sagemaker"), state.client("s3")
    before = {j["ProcessingJobName"] for j in sagemaker.list_processing_jobs(NameContains=f"{run_id}-drift-")[
        "ProcessingJobSummaries"]}  # fmt: skip
    api.call("POST", f"/projects/{project}/drift-check")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = [j for j in sagemaker.list_processing_jobs(NameContains=f"{run_id}-drift-")["ProcessingJobSummaries"]
                if j["ProcessingJobName"] not in before]  # fmt: skip
        if jobs and jobs[0]["ProcessingJobStatus"] != "InProgress":
            job = jobs[0]["ProcessingJobName"]
            if jobs[0]["ProcessingJobStatus"] != "Completed":
                reason = sagemaker.describe_processing_job(ProcessingJobName=job).get("FailureReason", "")
                raise CliError(f"drift check {job} {jobs[0]['ProcessingJobStatus']}: {reason}")
            body = s3.get_object(Bucket=state.bucket, Key=f"runs/{run_id}/drift/{job}/drift.json")["Body"].read()
            return dict(json.loads(body))
        time.sleep(1)
    raise CliError("the drift check did not finish in 300 s")


def describe_drift(result: dict[str, Any]) -> str:
    parts = [
        f"{name} {m['value']:.3f}{' > ' + format(m['threshold'], 'g') if m['drifted'] else ''}"
        for name, m in sorted(result["metrics"].items())
    ]
    verdict = f"DRIFT in {', '.join(result['drifted'])}" if result["drifted"] else "no drift"
    return f"{verdict} ({result['samples']['live']} texts: {'; '.join(parts)})"


def describe_quality(result: dict[str, Any]) -> str:
    """Production quality from the same check: measured where labels came, estimated (CBPE)."""
    production = result.get("quality") or {}
    metrics, feedback = production.get("metrics", {}), production.get("feedback", {})
    parts = []
    for name in ("production_macro_f1", "production_accuracy", "estimated_accuracy"):
        if name in metrics:
            m = metrics[name]
            floor = f" < floor {m['threshold']:g}" if m.get("below") else ""
            parts.append(f"{name} {m['value']:.3f}{floor}")
    verdict = f"BELOW FLOOR in {', '.join(production['below'])}" if production.get("below") else "within floors"
    labelled = f"{feedback.get('labelled', 0)} labelled predictions ({feedback.get('coverage', 0):.0%} coverage)"
    return f"{verdict}: {'; '.join(parts) or 'nothing measured'}; {labelled}"


def explain_drift(result: dict[str, Any]) -> str:
    """What the drift report names: the terms that mark live traffic and the label that moved."""
    explanation = result.get("explanation") or {}
    terms = ", ".join(t["term"] for t in explanation.get("terms", {}).get("live", [])[:5])
    moved = (explanation.get("labels") or [{}])[0]
    label = (
        f"; {moved['label']} {moved['training_share']:.0%} → {moved['live_share']:.0%} of predictions" if moved else ""
    )
    return f"live traffic is marked by: {terms or 'nothing'}{label}"


def send_feedback(api: client.Api, project: str, rows: list[dict[str, str]], ids: list[str]) -> dict[str, Any]:
    labels = [{"inference_id": i, "label": r["label"]} for i, r in zip(ids, rows, strict=True)]
    receipt: dict[str, Any] = api.call("POST", f"/projects/{project}/feedback", {"labels": labels})
    return receipt


def trial_overheads(state: cloud.CloudState, run: dict[str, Any]) -> str:
    """Each tuning trial's time beyond its training loop (train.py's ``train_seconds``),
    and whether it started on a warm pool's instance or a new one."""
    trials = (run.get("tuning") or {}).get("trials", [])
    sagemaker = state.client("sagemaker")
    parts = []
    for trial in sorted(trials, key=lambda t: str(t.get("training_job", ""))):
        described = sagemaker.describe_training_job(TrainingJobName=trial["training_job"])
        metrics = {m["MetricName"]: m["Value"] for m in described.get("FinalMetricDataList", [])}
        if "TrainingEndTime" not in described or "train_seconds" not in metrics:
            parts.append(f"{trial['training_job'][-12:]}: {described['TrainingJobStatus'].lower()}")
            continue
        wall = (described["TrainingEndTime"] - described["CreationTime"]).total_seconds()
        messages = " ".join(t.get("StatusMessage", "") for t in described.get("SecondaryStatusTransitions", []))
        how = "warm" if "Reusing the warm pool" in messages else "new instance"
        parts.append(f"{how} {wall - metrics['train_seconds']:.1f} s + training {metrics['train_seconds']:.1f} s")
    return "; ".join(parts) or "no trials"


def wait_alarms(api: client.Api, run_id: str, result: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """The run's alarm.alarm history entries, once every alarm the check's results should
    fire has reached the run (the evaluator takes each alarm in its own time): each drifted
    metric and each production metric below its floor."""
    names = [f"-drift-{m.replace('_', '-')}" for m in result.get("drifted", [])]
    names += [f"-quality-{m.replace('_', '-')}" for m in (result.get("quality") or {}).get("below", [])]
    deadline = time.monotonic() + timeout
    while True:
        history = api.call("GET", f"/runs/{run_id}")["history"]
        alarms = [h for h in history if h["event_kind"] == "alarm.alarm"]
        missing = [n for n in names if not any(n in h["reason"] for h in alarms)]
        if not missing:
            return alarms
        if time.monotonic() > deadline:
            print(f"  not yet arrived after {timeout:.0f}s: the alarms ending {', '.join(missing)}")
            return alarms
        time.sleep(1)


def wait_child(api: client.Api, project: str, parent: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.call("GET", f"/runs?project={project}&limit=100")["runs"]
        children = [r for r in runs if r.get("parent_run_id") == parent]
        if children:
            return dict(api.call("GET", f"/runs/{children[0]['run_id']}"))
        time.sleep(1)
    history = api.call("GET", f"/runs/{parent}")["history"]
    raise CliError(f"no retraining run within {timeout:.0f}s; the parent's last decision: {history[-1]['reason']}")


def new_model_alarms(api: client.Api, project: str, run_id: str) -> str:
    """The retrained model's alarms as the endpoint page shows them: on its own series, so
    none is in ALARM on its predecessor's numbers before a check of its own traffic."""
    view = api.call("GET", f"/projects/{project}/endpoint?hours=1")
    alarms = [
        a
        for a in view.get("alarms", [])
        if names.run_id_from_name(a["name"]) == run_id and "-rollback-" not in a["name"]
    ]
    states = ", ".join(f"{a['metric']} {a['state']}" for a in alarms) or "none yet"
    switched = next((w["time"] for w in view.get("switches", []) if w["run_id"] == run_id), "?")
    return f"run {run_id} serves since {switched}; its own monitoring alarms: {states}"


def first_deployed(timeline: Timeline, dataset: Path, project: str, dataset_id: str) -> tuple[dict[str, Any], float]:
    """Drop the dataset, follow the run it starts until it is deployed (shown, then
    returned with when the loop began); CliError when it ends otherwise."""
    _, first_id = client.drop(client.local_target(), dataset, project, dataset_id=dataset_id)
    timeline.mark(f"dataset dropped: run {first_id} started")
    loop_began = time.monotonic()
    first = client.watch(client.local_target(), first_id, timeout=900)
    print()
    client.show_run(first)
    if first["state"] != "deployed":
        raise CliError(f"the first run ended {first['state']}: {first['history'][-1]['reason']}")
    return first, loop_began


def run(args: argparse.Namespace) -> int:
    from .local.httpserve import one_line_on
    from .ui.server import LINK_TTL_S, LocalBackend, UiServer

    one_line_on(sys.stderr)
    timeline = Timeline()
    cloud.up(clean=True)
    dashboard = UiServer(LocalBackend(cloud.load_state))
    dashboard.serve_in_background()
    try:
        print(f"\nwatch it in the dashboard while it runs: {dashboard.link()}")
        print(f"(the link opens it once, within {LINK_TTL_S / 60:.0f} minutes; Enter prints a new one)")
        dashboard.offer_links()
        api = client.local_api()
        spec = json.loads((client.REPO_ROOT / "examples" / "demo-project.json").read_text())
        project = spec["name"]
        endpoint = names.endpoint_name(project, stage=cloud.STAGE)
        api.call("POST", "/projects", spec)
        timeline.mark(f"project {project} created ({spec['config']['task']} on {spec['config']['base_model']})")
        dataset = client.REPO_ROOT / "examples" / "data" / "reviews.jsonl"
        first, loop_began = first_deployed(timeline, dataset, project, "sample-1")
        evaluation = first["metrics"].get("evaluation", {})
        timeline.mark(
            f"run {first['run_id']} tuned ({len((first.get('tuning') or {}).get('trials', []))} trials), evaluated "
            f"(macro_f1 {evaluation.get('macro_f1', float('nan')):.3f}), registered and deployed to {endpoint}"
        )
        state = client.local_state()
        print(f"  trials, overhead beyond the training loop: {trial_overheads(state, first)}")
        print(f"evaluation report: {client.save_report(first)}")
        rows = [json.loads(line) for line in dataset.read_text().splitlines()]
        held_out = [row["text"] for row in rows[-60:]]
        latencies = send(state, endpoint, held_out, 60)
        wait_captured(state, project, 60)
        timeline.mark(f"60 requests like the training data, captured: {percentiles(latencies)}")
        timeline.mark(f"drift check: {describe_drift(drift_check(api, state, project, first['run_id']))}")
        latencies = send(state, endpoint, DRIFTED, 60)
        changed = shifted_reviews(SHIFTED)
        ids = [f"shifted-{n:04d}" for n in range(len(changed))]
        latencies += send(state, endpoint, [r["text"] for r in changed], len(changed), ids)
        wait_captured(state, project, 120 + len(changed))
        receipt = send_feedback(api, project, changed, ids)
        timeline.mark(
            f"production changed: 60 off-topic requests and {len(changed)} service reviews, captured "
            f"({percentiles(latencies)}); labels for the reviews came back: {receipt['accepted']} accepted"
        )
        result = drift_check(api, state, project, first["run_id"])
        timeline.mark(f"drift check: {describe_drift(result)}")
        print(f"  {explain_drift(result)}")
        timeline.mark(f"production quality: {describe_quality(result)}")
        child = wait_child(api, project, first["run_id"], timeout=120)
        alarms = wait_alarms(api, first["run_id"], result, timeout=90)
        started = next((h["reason"] for h in alarms if "StartChildRun" in h["commands"]), "")
        held = [h["reason"] for h in alarms if "StartChildRun" not in h["commands"]]
        kind = "quality" if "-quality-" in started else "drift"
        timeline.mark(f"{kind} alarm → retraining run {child['run_id']} ({started})")
        for reason in held:
            print(f"  also recorded: {reason}")
        child = client.watch(client.local_target(state), child["run_id"], timeout=900)
        print()
        client.show_run(child)
        gate = next((h["reason"] for h in child["history"] if h["event_kind"] == "evaluation.loaded"), "")
        timeline.mark(
            f"retraining run {child['run_id']} is {child['state'].upper()}: {gate or child['history'][-1]['reason']}"
        )
        print(f"  trials, overhead beyond the training loop: {trial_overheads(state, child)}")
        production = api.call("GET", f"/runs/{child['run_id']}").get("production") or {}
        data, measured = production.get("data") or {}, production.get("held_out") or {}
        if data:
            window = data.get("window") or {}
            print(f"  learned from {data['rows']} labelled production examples ({window.get('first')} to "
                  f"{window.get('last')}; train/validation/test {data.get('splits')})")  # fmt: skip
        if measured.get("champion"):
            timeline.mark(
                f"held-out production traffic ({measured['examples']} requests): macro-F1 first model "
                f"{measured['champion']['macro_f1']:.3f} → retrained {measured['challenger']['macro_f1']:.3f}"
            )
        loop_s = time.monotonic() - loop_began
        serving = state.client("sagemaker").describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        parent_state = api.call("GET", f"/runs/{first['run_id']}")["state"]
        timeline.mark(f"{endpoint} serves {serving}; run {first['run_id']} is {parent_state}")
        if child["state"] == "deployed":
            timeline.mark(f"after the switch: {percentiles(send(state, endpoint, held_out, 60))}")
            print(f"  {new_model_alarms(api, project, child['run_id'])}")
        for shown in (first["run_id"], child["run_id"]):
            cost = api.call("GET", f"/runs/{shown}").get("cost") or {}
            if cost:
                print(f"run {shown} cost ${cost['total_usd']:.4f} at the list prices of {cost['prices_as_of']} "
                      f"({len(cost['lines'])} lines; tuneloop run show {shown})")  # fmt: skip
        timeline.show()
        print(f"\nthe loop (drop → tuned → deployed → drift → retrained → redeployed): {loop_s:.1f}s")
        print(f"demo finished in {time.monotonic() - timeline.started:.1f}s")
        if args.keep:
            print(f"the demo's cloud is still up: TUNELOOP_HOME={cloud.home()} tuneloop status; "
                  f"TUNELOOP_HOME={cloud.home()} tuneloop ui opens its dashboard")  # fmt: skip
        if child["state"] in ("failed", "stopped"):
            raise CliError(f"the retraining run ended {child['state']}: {child['history'][-1]['reason']}")
    finally:
        dashboard.shutdown()
        dashboard.server_close()
        if not args.keep:
            cloud.down()
    return 0
