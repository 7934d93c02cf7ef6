"""A training script with a known optimum, for the local tuner's tests.

Quality peaks at knob = 0.3; each "epoch" prints the objective as train.py does, rising
towards that quality, so a bad trial is visibly bad from its first epochs.
"""

import argparse
import time

parser = argparse.ArgumentParser()
parser.add_argument("--knob", type=float, required=True)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--epoch-seconds", type=float, default=0.4)
args, _ = parser.parse_known_args()
quality = 1.0 - 4.0 * (args.knob - 0.3) ** 2
for epoch in range(1, args.epochs + 1):
    time.sleep(args.epoch_seconds)  # the work an epoch would do
    print(f"[metric] epoch={epoch} validation_macro_f1={quality * epoch / args.epochs:.6f}", flush=True)
