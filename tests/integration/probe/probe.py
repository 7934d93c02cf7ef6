"""A training script that reports what it was started with: the toolkit contract a warm
instance must keep exactly as a cold start does (environment, /opt/ml, arguments, metrics,
checkpoints, SIGTERM)."""

import json
import os
import signal
import sys
import time

base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
checkpoints = os.path.join(base, "checkpoints")


def on_term(signum, frame):
    with open(os.path.join(checkpoints, "sigterm.txt"), "w") as out:
        out.write("checkpointed on SIGTERM")
    print("probe: SIGTERM, checkpoint written", flush=True)
    sys.exit(143)


signal.signal(signal.SIGTERM, on_term)
seen = {
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "sm": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
    "layout": sorted(
        os.path.relpath(os.path.join(root, d), base)
        for root, dirs, _ in os.walk(base)
        for d in dirs
        if "/code" not in root and not d.startswith("__")
    ),
    "path": sys.path,
    "main": __name__,
    "stdin_isatty": sys.stdin.isatty() if sys.stdin else None,
    "torch_already_imported": "torch" in sys.modules,
    "omp": os.environ.get("OMP_NUM_THREADS"),
    "rank": os.environ.get("RANK"),
    "world": os.environ.get("WORLD_SIZE"),
}
if "torch" in sys.modules:  # a warm instance's: its thread count follows the job's environment
    seen["torch_threads"] = sys.modules["torch"].get_num_threads()
print("probe: " + json.dumps(seen, sort_keys=True), flush=True)
with open(os.path.join(checkpoints, "step.txt"), "w") as out:
    out.write("1")
model_dir = os.environ["SM_MODEL_DIR"]
with open(os.path.join(model_dir, "weights.bin"), "w") as out:
    out.write("w")
epochs = int(sys.argv[sys.argv.index("--epochs") + 1]) if "--epochs" in sys.argv else 2
for epoch in range(1, epochs + 1):
    print(f"[metric] epoch={epoch} validation_macro_f1={0.5 + epoch / 100:.6f}", flush=True)
if "--hold" in sys.argv:
    time.sleep(float(sys.argv[sys.argv.index("--hold") + 1]))
