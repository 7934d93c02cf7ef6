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
