"""Preferences between a language model's captured answers become DPO pairs: the prepare
job joins them with the capture (the same request, two different answers), keeps every pair
whose request a test row asks out of training, and writes them where the training job finds
them and nothing else reads them as rows; DPO's loss is the paper's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from chalicelib.domain.project import ConfigError, normalise_config
from tests.unit.test_llm_feedback import conversation, exchange
from tests.unit.test_prepare import run, write_jsonl
from training import train
from tuneloop import synthetic


def test_preferences_become_pairs_of_answers_to_the_same_request(tmp_path: Path) -> None:
    dataset = synthetic.extraction_rows(60)
    write_jsonl(tmp_path / "dry" / "in" / "orders.jsonl", dataset)
    assert run(tmp_path / "dry", "--task", "causal-lm")[0] == 0  # which rows the split makes test rows
    test_row = json.loads((tmp_path / "dry" / "out" / "test" / "test.jsonl").read_text().splitlines()[0])
    write_jsonl(tmp_path / "in" / "orders.jsonl", dataset)
    asked = conversation("Order 7: two kettles for Ada Lovelace")
    tested = test_row["messages"][:-1]
    lines = [
        exchange(asked, '{"customer": "Ada Lovelace"}', "good", "2026-12-01T10:00:00Z"),
        exchange(asked, '{"customer": "Lovelace"}', "bad", "2026-12-01T10:01:00Z"),
        exchange(asked, '{"customer": "Lovelace"}', "same", "2026-12-01T10:02:00Z"),
        exchange(conversation("another order"), "{}", "other", "2026-12-01T10:03:00Z"),
        exchange({"inputs": "Name a colour."}, "Blue", "plain-a", "2026-12-01T10:04:00Z"),
        exchange({"inputs": "Name a colour."}, "Green", "plain-b", "2026-12-01T10:05:00Z"),
        exchange({"messages": tested}, "x", "tested-a", "2026-12-01T10:06:00Z"),
        exchange({"messages": tested}, "y", "tested-b", "2026-12-01T10:07:00Z"),
    ]
    write_jsonl(tmp_path / "production" / "capture" / "tl-orders" / "AllTraffic" / "00.jsonl", lines)
    feedback = [
        {"inference_id": "bad", "preferred_over": "good"},  # changed its mind: the latest wins
        {"inference_id": "good", "preferred_over": "bad"},
        {"inference_id": "bad", "preferred_over": "same"},  # the same answer twice: nothing to learn
        {"inference_id": "good", "preferred_over": "other"},  # another request
        {"inference_id": "plain-b", "preferred_over": "plain-a"},
        {"inference_id": "good", "preferred_over": "ghost"},
        {"inference_id": "tested-a", "preferred_over": "tested-b"},  # a test row's request
    ]
    write_jsonl(tmp_path / "production" / "labels" / "d1.jsonl", feedback)
    code, report = run(tmp_path, "--task", "causal-lm", "--production-dir", str(tmp_path / "production"))
    assert code == 0, report
    assert test_row in [
        json.loads(line) for line in (tmp_path / "out" / "test" / "test.jsonl").read_text().splitlines()
    ]
    made = report["production"]["preferences"]
    assert made == {"preferences_read": 6, "unknown_ids": 1, "different_requests": 1, "same_answers": 1,
                    "invalid_rows": 0, "unjoinable_requests": 0, "in_test": 1, "pairs": 2}, made  # fmt: skip
    train_folder = tmp_path / "out" / "train"
    pairs = train.read_preferences(str(train_folder))
    assert pairs == [
        {**asked_only(asked), "chosen": '{"customer": "Ada Lovelace"}', "rejected": '{"customer": "Lovelace"}',
         "inference_id": "good", "preferred_over": "bad", "inference_time": "2026-12-01T10:00:00Z",
         "source": "production"},
        {"prompt": "Name a colour.", "chosen": "Green", "rejected": "Blue", "inference_id": "plain-b",
         "preferred_over": "plain-a", "inference_time": "2026-12-01T10:05:00Z", "source": "production"},
    ]  # fmt: skip
    # The pairs are no SFT rows: the training job reads its rows from the folder's top.
    assert not any("chosen" in row for row in train.read_jsonl(str(train_folder)))


def asked_only(asked: dict[str, object]) -> dict[str, object]:
    return {"messages": asked["messages"]}


def test_the_dpo_loss_is_the_papers_and_favours_the_preferred_answer() -> None:
    chosen = torch.tensor([-5.0, -3.0], requires_grad=True)
    rejected = torch.tensor([-5.0, -9.0], requires_grad=True)
    reference = torch.tensor([-5.0, -5.0])
    losses, margins = train.dpo_loss(chosen, rejected, reference, reference, beta=0.1)
    # The policy is the reference: log 2 and no margin; it favours the preferred by 6 nats: 0.6.
    assert losses[0].item() == pytest.approx(math.log(2))
    assert margins.tolist() == pytest.approx([0.0, 0.6])
    assert losses[1].item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.6))))
    losses.sum().backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descending raises the preferred answer


def test_dpo_is_for_language_models() -> None:
    with pytest.raises(ConfigError) as info:
        normalise_config(
            {
                "base_model": "sentence-transformers/all-MiniLM-L6-v2",
                "task": "text-classification",
                "training": {"hyperparameters": {"dpo_steps": 8}},
            }
        )
    assert info.value.field == "training.hyperparameters.dpo_steps"
    config = normalise_config({"base_model": "random:llama-tiny", "task": "causal-lm",
                               "training": {"hyperparameters": {"dpo_steps": 8, "dpo_beta": 0.5}}})  # fmt: skip
    assert config["training"]["hyperparameters"]["dpo_steps"] == 8


def test_train_py_refuses_dpo_for_a_classifier_before_training(tmp_path: Path) -> None:
    code = train.main(["--task", "text-classification", "--dpo-steps", "4", "--train", str(tmp_path / "nowhere"),
                       "--failure-dir", str(tmp_path / "fail")])  # fmt: skip
    assert code == 1
    assert "needs --task causal-lm" in (tmp_path / "fail" / "failure").read_text()
