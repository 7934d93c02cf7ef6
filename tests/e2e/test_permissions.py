"""A permission the loop needs, taken from a function's policy: the run fails as it would on
AWS, its reason naming the action and the resource."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DEMO_CONFIG
from tests.e2e.conftest import REPO, http, local_cloud, s3, wait_for

pytestmark = pytest.mark.e2e
TAKEN = "sagemaker:CreateProcessingJob"
POLICY = "policy-dev-starter.json"  # the starter functions' (a dataset drop's handler among them)


def test_a_run_fails_naming_the_action_and_resource_its_role_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    document = json.loads((REPO / ".chalice" / POLICY).read_text())
    statements = [s for s in document["Statement"] if TAKEN in s["Action"]]
    assert statements, f"{POLICY} no longer grants {TAKEN}: update this test"
    for statement in statements:
        statement["Action"] = [a for a in statement["Action"] if a != TAKEN] or ["sagemaker:ListTags"]
    (policies / POLICY).write_text(json.dumps(document))
    monkeypatch.setenv("TUNELOOP_LOCAL_POLICY_DIR", str(policies))

    with local_cloud(tmp_path / "home", refusals=True) as (home, state):
        assert http(state, "POST", "/projects", {"name": "demo", "config": DEMO_CONFIG})[0] == 201
        data = (REPO / "examples" / "data" / "reviews.jsonl").read_bytes()
        s3(state).put_object(Bucket=state["bucket"], Key="datasets/demo/nope/reviews.jsonl", Body=data)
        run_id = wait_for(lambda: http(state, "GET", "/runs?project=demo")[1]["runs"], 60)[0]["run_id"]
        run = wait_for(lambda: (r := http(state, "GET", f"/runs/{run_id}")[1])["state"] == "failed" and r, 120)
        reason = json.dumps(run)
        print("the run's failure:", run.get("failure_reason") or reason[:2000])
        assert "AccessDeniedException" in reason and TAKEN in reason, reason
        assert f"processing-job/tl-local-{run_id}" in reason, reason
        assert "assumed-role/tuneloop-local-on_dataset_uploaded/" in reason, reason
        refused = (home / "logs" / "host.log").read_text()
        assert f"AccessDenied: function/on_dataset_uploaded: {TAKEN}" in refused


def test_a_batch_run_reads_and_writes_as_the_execution_role(tmp_path: Path) -> None:
    """SageMaker lists a transform's input prefix, reads it and writes the output with the
    execution role; the local SageMaker does the same, under the role's policy."""
    config = {
        **DEMO_CONFIG,
        "training": {**DEMO_CONFIG["training"], "hyperparameters": {"max_steps": 4, "batch_size": 8}},
        "gates": {"metrics": {}, "compare_baseline": False},  # this run is about permissions, not quality
    }
    with local_cloud(tmp_path / "home") as (home, state):
        bucket = state["bucket"]
        config["deployment"] = {"mode": "batch", "batch_input_uri": f"s3://{bucket}/batch/demo/in/"}
        assert http(state, "POST", "/projects", {"name": "demo", "config": config})[0] == 201
        lines = [json.dumps({"inputs": t}) for t in ("great value", "broke in a day", "does the job")]
        s3(state).put_object(Bucket=bucket, Key="batch/demo/in/part-1.jsonl", Body="\n".join(lines).encode())
        data = (REPO / "examples" / "data" / "reviews.jsonl").read_bytes()
        s3(state).put_object(Bucket=bucket, Key="datasets/demo/batch/reviews.jsonl", Body=data)
        run_id = wait_for(lambda: http(state, "GET", "/runs?project=demo")[1]["runs"], 60)[0]["run_id"]
        done = ("completed", "failed")
        run = wait_for(lambda: (r := http(state, "GET", f"/runs/{run_id}")[1])["state"] in done and r, 400)
        assert run["state"] == "completed", json.dumps(run["history"])[-3000:]
        out = s3(state).list_objects_v2(Bucket=bucket, Prefix=f"runs/{run_id}/transform/")
        assert [o["Key"] for o in out.get("Contents", [])] == [f"runs/{run_id}/transform/part-1.jsonl.out"]
        logs = "".join(p.read_text() for p in (home / "logs").glob("*.log"))
        assert "IAM: role/sagemaker-execution's calls are decided" in logs
