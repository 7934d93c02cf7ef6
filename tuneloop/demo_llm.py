"""`tuneloop demo --llm`: a real language model through the loop on the local cloud, on CPU.

drop (examples/orders: customers' messages and the order each holds, as JSON) → LoRA
fine-tune of SmolLM2-135M-Instruct → evaluated against its untuned base and gated on
exact match → deployed → a streamed answer → production changes (orders now come from a
web form that writes names "Last, First", which the model copies as written) → corrections
for its answers come back as feedback → the monitoring job measures the correction rate
past its ceiling → alarm → a retraining run that learns from the corrections (SFT) and
from preferences between two answers to the same request (DPO after SFT), gated
against its base and the deployed champion → redeployed → base, tuned and retrained side
by side on held-out prompts of both kinds.

``--quick`` (the test suite's): fewer training steps, corrections and held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from chalicelib.domain import names

from . import client, synthetic
from .client import CliError
from .demo import Timeline, drift_check, first_deployed, wait_alarms, wait_captured, wait_child
from .local import cloud

# What the demo changes in the example's config, for a loop that fits in minutes: a drift
# check every 5 minutes (the alarms' period), a quick canary, and an alarm once a tenth of
# the answers need a correction (the held-out prompts it sends count as answers). Not
# values to copy.
DEMO_CONFIG: dict[str, dict[str, Any]] = {
    "drift": {"schedule_minutes": 5},
    "deployment": {"wait_s": 5, "baking_s": 10},
    "quality": {"thresholds": {"production_correction_rate": 0.1}},
}
FULL = {"steps": 16, "corrections": 24, "held_out": 8, "compared": 12}
QUICK = {"steps": 8, "corrections": 12, "held_out": 4, "compared": 6}


def ask(text: str, temperature: float = 0.0) -> dict[str, Any]:
    sampled = {"temperature": temperature} if temperature else {}
    return {"messages": [{"role": "user", "content": synthetic.EXTRACTION_INSTRUCTION + text}],
            "parameters": {"max_new_tokens": 40, **sampled}}  # fmt: skip


def answer(
    state: cloud.CloudState, endpoint: str, text: str, inference_id: str | None = None, temperature: float = 0.0
) -> str:
    runtime = state.client("sagemaker-runtime")
    extra = {"InferenceId": inference_id} if inference_id else {}
    body = json.dumps(ask(text, temperature))
    out = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Body=body, **extra)
    return str(json.loads(out["Body"].read())["generated_text"])


def fields_right(said: str, order: dict[str, Any]) -> int:
    """How many of the order's fields an answer got right (what a person comparing two
    answers would look at)."""
    try:
        given = json.loads(said)
    except ValueError:
        return 0
    return sum(given.get(k) == v for k, v in order.items()) if isinstance(given, dict) else 0


def preferences(
    state: cloud.CloudState,
    endpoint: str,
    production: list[tuple[str, dict[str, Any]]],
    ids: list[str],
    given: list[str],
) -> list[dict[str, str]]:
    """A second, sampled answer to each request (an A/B of two answers), and which of the
    two the person preferred: the one with more fields right (no preference on a tie)."""
    chosen = []
    for (text, order), first, said in zip(production, ids, given, strict=True):
        second = f"{first}-b"
        other = answer(state, endpoint, text, second, temperature=1.0)
        a, b = fields_right(said, order), fields_right(other, order)
        if a != b:
            chosen.append({"inference_id": first if a > b else second, "preferred_over": second if a > b else first})
    return chosen


def exact(state: cloud.CloudState, endpoint: str, cases: list[tuple[str, dict[str, Any]]]) -> float:
    """The deployed model's exact match on ``cases`` (message, order)."""
    right = sum(answer(state, endpoint, text).strip() == json.dumps(order) for text, order in cases)
    return right / len(cases)


def streamed(state: cloud.CloudState, endpoint: str, text: str) -> list[str]:
    runtime = state.client("sagemaker-runtime")
    body = {**ask(text), "stream": True}
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json", Body=json.dumps(body)
    )
    return [event["PayloadPart"]["Bytes"].decode() for event in response["Body"] if "PayloadPart" in event]


def side_by_side(run: dict[str, Any]) -> str:
    """Base → this model (→ champion) on the run's test prompts, from its evaluation."""
    models = (run.get("evaluation") or {}).get("models") or {}
    shown = {"base": "untuned base", "challenger": "this model", "champion": "champion"}
    parts = []
    for metric in ("exact_match", "json_schema"):
        values = [f"{shown[k]} {m['metrics'][metric]:.2f}" for k, m in models.items() if metric in m.get("metrics", {})]
        if values:
            parts.append(f"{metric}: {' → '.join(values)}")
    return "; ".join(parts) or "no side-by-side in the evaluation"


def run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    timeline = Timeline()
    cloud.up(clean=True)
    try:
        api = client.local_api()
        spec = json.loads((client.REPO_ROOT / "examples" / "llm-project.json").read_text())
        config = spec["config"]
        for section, values in DEMO_CONFIG.items():
            config[section] = {**config.get(section, {}), **values}
        config["training"]["hyperparameters"]["max_steps"] = sizes["steps"]
        # Half the web-form orders corrected are enough to measure the rate and to retrain on.
        config["quality"]["min_labels"] = config["retrain"]["min_new_labels"] = sizes["corrections"] // 2
        project = spec["name"]
        endpoint = names.endpoint_name(project, stage=cloud.STAGE)
        api.call("POST", "/projects", spec)
        timeline.mark(f"project {project} created (LoRA on {config['base_model']}, {sizes['steps']} steps)")
        dataset = client.REPO_ROOT / "examples" / "orders" / "orders.jsonl"
        first, loop_began = first_deployed(timeline, dataset, project, "orders-1")
        first_id = first["run_id"]
        timeline.mark(f"run {first_id} tuned, evaluated against its untuned base and deployed: {side_by_side(first)}")
        print(f"evaluation report: {client.save_report(first)}")
        state = client.local_state()

        rng = random.Random(7)
        sentence = [synthetic.order(rng) for _ in range(sizes["held_out"])]
        forms = [synthetic.form_order(rng) for _ in range(sizes["held_out"])]
        pieces = streamed(state, endpoint, sentence[0][0])
        timeline.mark(f"a streamed answer in {len(pieces)} pieces: {''.join(pieces)}")
        tuned = (exact(state, endpoint, sentence), exact(state, endpoint, forms))
        timeline.mark(f"held-out prompts, exact match: customers' messages {tuned[0]:.2f}, web-form orders "
                      f"{tuned[1]:.2f}")  # fmt: skip

        production = [synthetic.form_order(rng) for _ in range(sizes["corrections"])]
        ids = [f"form-{n:04d}" for n in range(len(production))]
        given = [answer(state, endpoint, text, i) for (text, _), i in zip(production, ids, strict=True)]
        compared = sizes["compared"]
        preferred = preferences(state, endpoint, production[:compared], ids[:compared], given[:compared])
        wait_captured(state, project, 2 * sizes["held_out"] + 1 + len(production) + compared)
        corrections = [{"inference_id": i, "completion": json.dumps(order)}
                       for i, (_, order), said in zip(ids, production, given, strict=True)
                       if said.strip() != json.dumps(order)]  # fmt: skip
        receipt = api.call("POST", f"/projects/{project}/feedback", {"labels": corrections + preferred})
        timeline.mark(f"production changed: {len(production)} orders from the web form; {len(corrections)} answers "
                      f"were wrong and their corrections came back; of {compared} requests answered twice (a "
                      f"sampled second answer), {len(preferred)} got a preference ({receipt['accepted']} rows "
                      "accepted)")  # fmt: skip
        result = drift_check(api, state, project, first_id)
        quality = result.get("quality") or {}
        rate = (quality.get("metrics") or {}).get("production_correction_rate")
        measured = f"{rate['value']:.2f} (noise {rate['noise']:.2f})" if rate else quality.get("note", "not measured")
        past = ", ".join(quality.get("below", [])) or "nothing"
        timeline.mark(f"monitoring: correction rate {measured}; past its limit: {past}")
        child = wait_child(api, project, first_id, timeout=180)
        alarms = wait_alarms(api, first_id, result, timeout=90)
        started = next((h["reason"] for h in alarms if "StartChildRun" in h["commands"]), "")
        timeline.mark(f"alarm → retraining run {child['run_id']} ({started})")
        child = client.watch(client.local_target(state), child["run_id"], timeout=900)
        print()
        client.show_run(child)
        gate = next((h["reason"] for h in child["history"] if h["event_kind"] == "evaluation.loaded"), "")
        timeline.mark(f"retraining run {child['run_id']} is {child['state'].upper()}: {gate}")
        print(f"  its test prompts: {side_by_side(child)}")
        learned = (api.call("GET", f"/runs/{child['run_id']}").get("production") or {}).get("data") or {}
        if learned:
            pairs = learned.get("preferences") or {}
            print(f"  learned from {learned.get('rows')} corrected production requests "
                  f"(train/validation/test {learned.get('splits')}) and, with DPO after SFT, "
                  f"{pairs.get('pairs', 0)} preference pairs ({pairs.get('in_test', 0)} left out: a test row asks "
                  "the same)")  # fmt: skip
            trained = (child.get("metrics") or {}).get("training") or {}
            if "dpo_reward_accuracy" in trained:
                timeline.mark(f"DPO: the preferred answer gained on the other in {trained['dpo_reward_accuracy']:.0%} "
                              f"of {int(trained['dpo_pairs'])} pairs (reward margin "
                              f"{trained['dpo_reward_margin']:.2f})")  # fmt: skip
        base = ((first.get("evaluation") or {}).get("models") or {}).get("base", {}).get("metrics", {})
        if child["state"] == "deployed":
            retrained = (exact(state, endpoint, sentence), exact(state, endpoint, forms))
            timeline.mark(
                f"held-out prompts, exact match (customers' messages, web-form orders): untuned base "
                f"{base.get('exact_match', float('nan')):.2f} on the test split, tuned {tuned[0]:.2f}, {tuned[1]:.2f} "
                f"→ retrained {retrained[0]:.2f}, {retrained[1]:.2f}"
            )
        loop_s = time.monotonic() - loop_began
        timeline.show()
        print(f"\nthe loop (drop → tuned → deployed → corrections → retrained → redeployed): {loop_s:.1f}s")
        print(f"demo finished in {time.monotonic() - timeline.started:.1f}s")
        if args.keep:
            print(f"the demo's cloud is still up: TUNELOOP_HOME={cloud.home()} tuneloop status")
        if child["state"] in ("failed", "stopped"):
            raise CliError(f"the retraining run ended {child['state']}: {child['history'][-1]['reason']}")
    finally:
        if not args.keep:
            cloud.down()
    return 0
