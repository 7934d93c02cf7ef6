"""What the local cloud's IAM check costs per call: gateway GetItem with and without it.

One DynamoDB Local behind one gateway, which enforces the template's policies on every
request a principal signs. Two clients read the same item from the same table in
alternating rounds: one signs as the ``api_handler`` function's role (the gateway places
the request, builds its ARN and decides it under the function's policy), the other with
the local cloud's own key, which the gateway verifies but does not evaluate (the
baseline: the same signature check, relay and DynamoDB Local). The ratio is the enforced
rate over the baseline's.

Checks (any run, quick too): every read answers the item, and a read of a table outside
the function's policy is refused with AccessDenied naming the action and the table.
Goal: enforced >= 0.8x the baseline. ``--quick`` reads a few hundred times and checks,
without the goal; the test suite runs it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from tuneloop.local import sigv4  # noqa: E402
from tuneloop.local.enforce import function_principal  # noqa: E402
from tuneloop.local.services import start_dynamodb_local  # noqa: E402

TABLE = "tuneloop-local-runs"  # the api_handler's policy reaches it
OUTSIDE = "tuneloop-dev-runs"  # another stage's: outside the policy
GOAL = 0.8


def client(endpoint: str, keys: sigv4.Credentials) -> Any:
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key)  # fmt: skip


def reads(db: Any, table: str, n: int) -> float:
    """Seconds for ``n`` GetItems, each checked."""
    started = time.perf_counter()
    for _ in range(n):
        item = db.get_item(TableName=table, Key={"run_id": {"S": "bench"}}).get("Item")
        if item is None or item["status"]["S"] != "serving":
            raise SystemExit(f"FAILED: a read answered {item!r}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred reads; check, don't measure")
    parser.add_argument("--calls", type=int, default=2000, help="GetItems per client per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    calls, rounds = (100, 2) if args.quick else (args.calls, args.rounds)
    cloud = sigv4.generate()
    os.environ.pop("TUNELOOP_LOCAL_IAM", None)  # enforced, as the local cloud runs
    dynamodb = start_dynamodb_local(cloud)
    try:
        own = client(dynamodb.endpoint, cloud)
        function = client(dynamodb.endpoint, cloud.principal(function_principal("api_handler")))
        for table in (TABLE, OUTSIDE):
            own.create_table(TableName=table, KeySchema=[{"AttributeName": "run_id", "KeyType": "HASH"}],
                             AttributeDefinitions=[{"AttributeName": "run_id", "AttributeType": "S"}],
                             BillingMode="PAY_PER_REQUEST")  # fmt: skip
            own.put_item(TableName=table, Item={"run_id": {"S": "bench"}, "status": {"S": "serving"}})
        try:
            function.get_item(TableName=OUTSIDE, Key={"run_id": {"S": "bench"}})
        except ClientError as exc:
            message = exc.response["Error"].get("Message", "")
            code = exc.response["Error"]["Code"]
            named = "dynamodb:GetItem on resource: " in message and OUTSIDE in message
            if code != "AccessDeniedException" or not named:
                print(f"FAILED: the read outside the policy was refused as {code}: {message}")
                return 1
        else:
            print("FAILED: a read of a table outside the function's policy was answered")
            return 1
        reads(own, TABLE, 20)  # both connections open, both paths warm
        reads(function, TABLE, 20)
        baseline, enforced = [], []
        for _ in range(rounds):
            baseline.append(calls / reads(own, TABLE, calls))
            enforced.append(calls / reads(function, TABLE, calls))
    finally:
        dynamodb.stop()
    base, mine = statistics.median(baseline), statistics.median(enforced)
    ratio = mine / base
    print(f"GetItem through the gateway, {calls} calls x {rounds} rounds (median calls/s)")
    print(f"  baseline (the cloud's own key, no evaluation): {base:8.0f}/s")
    print(f"  enforced (api_handler's role, decided):        {mine:8.0f}/s")
    print(f"  ratio enforced/baseline: {ratio:.2f}x (goal >= {GOAL}x)")
    print("  the read outside the policy: AccessDenied, naming dynamodb:GetItem and the table")
    if not args.quick and ratio < GOAL:
        print("FAILED: enforcement costs more than the goal allows")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
