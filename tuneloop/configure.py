"""A stage's settings: the region's SageMaker images (pinned by digest), the execution role
and the training code's location, as `tuneloop deploy` gives them to the stage's functions
(and `tuneloop configure` prints them).

Images are resolved at deploy time, with the sagemaker SDK's ``image_uris``
(offline: the SDK ships its image tables); the Lambda functions only read the result
from their environment and never import the SDK.
"""

from __future__ import annotations

from typing import Any

# Which of AWS's images to run: the newest the SageMaker SDK's tables know. The versions
# the code is tested with are training/requirements.txt's; each job and endpoint installs
# them at start where its image carries others (training/pins.py).
TRANSFORMERS_VERSION = "4.56.2"
PYTORCH_VERSION = "2.8.0"
PY_VERSION = "py312"
# The newest Hugging Face inference image the SDK's tables know; the served model only
# needs transformers' stable loading API.
INFERENCE_TRANSFORMERS_VERSION = "4.51.3"
INFERENCE_PYTORCH_VERSION = "2.6.0"
# The settings that name an image: pinned by digest, and the execution role pulls from their repositories.
IMAGE_SUFFIXES = ("_IMAGE", "_IMAGE_CPU", "_IMAGE_GPU")


def images(region: str) -> dict[str, str]:
    from sagemaker.core import image_uris

    def hugging_face(instance_type: str, scope: str = "training") -> str:
        """The Hugging Face image for the instance type: training's versions, or inference's."""
        transformers, torch = (
            (TRANSFORMERS_VERSION, PYTORCH_VERSION)
            if scope == "training"
            else (INFERENCE_TRANSFORMERS_VERSION, INFERENCE_PYTORCH_VERSION)
        )
        return str(
            image_uris.retrieve(
                "huggingface",
                region=region,
                version=transformers,
                base_framework_version=f"pytorch{torch}",
                py_version=PY_VERSION,
                instance_type=instance_type,
                image_scope=scope,
            )
        )

    processing = image_uris.retrieve(
        "pytorch",
        region=region,
        version=PYTORCH_VERSION,
        py_version=PY_VERSION,
        instance_type="ml.m5.large",
        image_scope="training",
    )
    try:
        cpu = hugging_face("ml.m5.xlarge")
    except ValueError:  # no CPU build of the Hugging Face image: the PyTorch one serves
        cpu = str(processing)
    inference = hugging_face("ml.m5.large", "inference")
    # A model evaluated on a GPU instance (a causal LM trained on one) runs in its GPU build.
    inference_gpu = hugging_face("ml.g5.xlarge", "inference")
    # A causal LM streams its answers through TorchServe, which this image runs.
    streaming = image_uris.retrieve(
        "pytorch",
        region=region,
        version=INFERENCE_PYTORCH_VERSION,
        py_version=PY_VERSION,
        instance_type="ml.m5.large",
        image_scope="inference",
    )
    return {
        "TUNELOOP_INFERENCE_IMAGE": str(inference),
        "TUNELOOP_INFERENCE_IMAGE_GPU": str(inference_gpu),
        "TUNELOOP_STREAMING_IMAGE": str(streaming),
        "TUNELOOP_TRAINING_IMAGE": hugging_face("ml.g5.xlarge"),
        "TUNELOOP_TRAINING_IMAGE_CPU": cpu,
        "TUNELOOP_PROCESSING_IMAGE": str(processing),
    }


def stage_settings(stage: str, region: str, account_id: str, role_arn: str | None, code_version: str) -> dict[str, str]:
    bucket = f"tuneloop-{stage}-{account_id}-{region}"  # infra/resources.json names it so
    return {
        **images(region),
        "TUNELOOP_SAGEMAKER_ROLE_ARN": role_arn
        or f"arn:aws:iam::{account_id}:role/tuneloop-{stage}-sagemaker-execution",
        "TUNELOOP_CODE_URI": f"s3://{bucket}/code/{code_version}",
    }


def _image_parts(uri: str) -> tuple[str, str, str, str]:
    """(registry account, region, repository, tag) of ``<account>.dkr.ecr.<region>.…/<repo>:<tag>``."""
    host, _, path = uri.partition("/")
    account, _, rest = host.partition(".dkr.ecr.")
    named = path.partition("@")[0]  # by digest: no tag
    repository, _, tag = named.rpartition(":") if ":" in named else (named, "", "")
    return account, rest.split(".", 1)[0], repository, tag


def pin_digests(values: dict[str, str], ecr: Any) -> dict[str, str]:
    """Each image by digest (``…/<repo>@sha256:…``), read from ECR: a tag can be moved to
    another image; what a model package names must be what was tested and approved."""
    pinned = dict(values)
    for name, uri in values.items():
        if not name.endswith(IMAGE_SUFFIXES) or "@sha256:" in uri:
            continue
        account, _, repository, tag = _image_parts(uri)
        answer = ecr.batch_get_image(registryId=account, repositoryName=repository, imageIds=[{"imageTag": tag}])
        images = answer.get("images") or []
        if not images:
            reasons = "; ".join(f.get("failureReason", "") for f in answer.get("failures", []))
            raise ValueError(f"{name}: ECR has no image {uri} ({reasons or 'not found'})")
        digest = images[0]["imageId"]["imageDigest"]
        pinned[name] = f"{uri.rsplit(':', 1)[0]}@{digest}"
    return pinned


def repository_arns(values: dict[str, str]) -> list[str]:
    """The ECR repositories of the resolved images, for the stack's ImageRepositoryArns:
    the execution role pulls from these and no other."""
    arns = set()
    for name, uri in values.items():
        if name.endswith(IMAGE_SUFFIXES):
            account, region, repository, _ = _image_parts(uri)
            arns.add(f"arn:aws:ecr:{region}:{account}:repository/{repository}")
    return sorted(arns)
