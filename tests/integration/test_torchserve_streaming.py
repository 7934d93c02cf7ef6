"""A causal LM's answer streamed through SageMaker's PyTorch serving stack, the one its
inference image runs on AWS: the sagemaker-pytorch-inference toolkit starts TorchServe
with the model's code/inference.py, and a request with ``"stream": true`` comes back as
an HTTP chunk per piece (what SageMaker forwards as InvokeEndpointWithResponseStream's
PayloadParts), the pieces making the answer the same request gets unstreamed."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop.local.services import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def tiny_decoder(folder: Path) -> None:
    """A randomly initialised decoder as train.py writes one (weights, tokenizer with its
    chat template, tuneloop.json, code/inference.py)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from training import inference, spec
    from training.train import load_tokenizer, packaged_model

    tokenizer = load_tokenizer(packaged_model(spec.PACKAGED_MODELS["sentence-transformers/all-MiniLM-L6-v2"]))
    inference.ensure_chat_template(tokenizer)
    shape = spec.RANDOM_DECODERS["llama-tiny"]
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, num_key_value_heads=shape["num_attention_heads"],
                         **shape)  # fmt: skip
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "tuneloop.json").write_text(json.dumps({"task": "causal-lm", "max_length": 64, "artifact": "merged"}))
    (folder / "code").mkdir()
    shutil.copy(REPO / "training" / "inference.py", folder / "code" / "inference.py")


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("opt-ml")
    tiny_decoder(root / "model")
    work = tmp_path_factory.mktemp("torchserve")
    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(root),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "torchserve" / "launch.py")], cwd=work,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (work / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (work / "serve.log").read_text()[-3000:]
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/ping")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the toolkit, TorchServe and its Java frontend
        process.wait(30)
        log.close()


def post(port: int, body: dict[str, object]) -> tuple[int, str, list[bytes]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/invocations", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    chunks = []
    while chunk := response.read1(65536):
        chunks.append(chunk)
    return response.status, response.getheader("Transfer-Encoding", ""), chunks


def test_a_streamed_answer_comes_in_pieces_that_make_the_whole_answer(torchserve: int) -> None:
    question = {"messages": [{"role": "user", "content": "reverse: apple river stone"}],
                "parameters": {"max_new_tokens": 24}}  # fmt: skip
    status, _, chunks = post(torchserve, question)
    assert status == 200
    whole = json.loads(b"".join(chunks))["generated_text"]
    status, encoding, pieces = post(torchserve, {**question, "stream": True})
    assert status == 200 and encoding == "chunked"
    print(f"\n{len(pieces)} pieces through TorchServe: {pieces[:6]}")
    assert len(pieces) >= 3 and b"".join(pieces).decode() == whole
    # Refused input is still a 4xx naming the field, streamed or not.
    status, _, body = post(torchserve, {**question, "stream": "yes"})
    assert status == 400 and b'"stream" must be true or false' in b"".join(body)
