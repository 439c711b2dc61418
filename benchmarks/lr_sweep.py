"""Learning-rate sweep: train one config at several LRs (optionally shortened) and print a table.

    python benchmarks/lr_sweep.py --config small --data DATA_DIR --out runs/lr-sweep \
        --lr 0.03 0.1 0.3 [--set train.steps=600] [--set optim.grad_clip=normalize]

Each run is an ordinary run directory under --out; finished ones are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sparsecircuits.config import load_config
from sparsecircuits.train.evaluation import evaluate_run
from sparsecircuits.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lr", type=float, nargs="+", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    rows = []
    for lr in args.lr:
        overrides = args.set + [f"optim.lr={lr}"]
        config = load_config(args.config, overrides)
        tag = "_".join(o.replace("=", "-") for o in overrides).replace("/", "_")
        run_dir = Path(args.out) / tag
        start = time.perf_counter()
        if not (run_dir / "model.safetensors").is_file():
            train(config, args.data, run_dir, resume=(run_dir / "checkpoint").is_dir())
        seconds = time.perf_counter() - start
        result = evaluate_run(run_dir)
        rows.append({"lr": lr, "settings": " ".join(args.set), "seconds": round(seconds), **result})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| lr | settings | val loss | bigram baseline | dead neurons | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lr']} | {r['settings']} | {r['val_loss']:.4f} | {r['bigram_loss']:.4f} | {r['dead_neurons']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
