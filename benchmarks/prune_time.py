"""Wall time of `prune` on one task (no --search), by stage, on a trained run.

    python benchmarks/prune_time.py RUN_DIR [--task for_while] [--target-loss 0.15]

Node means are computed once and cached in the run directory; pass --fresh-means to time that too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sparsecircuits.circuits.prune import PruneSettings, prune
from sparsecircuits.rundir import MEANS_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--task", default="for_while")
    parser.add_argument("--target-loss", type=float, default=0.15)
    parser.add_argument("--fresh-means", action="store_true")
    args = parser.parse_args()
    if args.fresh_means:
        (Path(args.run_dir) / MEANS_FILE).unlink(missing_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        circuit = prune(args.run_dir, args.task, Path(tmp) / "circuit", PruneSettings(target_loss=args.target_loss))
        seconds = time.perf_counter() - start
    m = circuit.metrics
    print(f"task {circuit.task}: {m['n_nodes']} nodes, {m['n_edges']} edges, circuit loss {m['loss_circuit']:.4f} (test, uncalibrated)")
    print("stages:", ", ".join(f"{k} {v:.1f} s" for k, v in m["seconds_by_stage"].items()))
    print(f"prune_seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
