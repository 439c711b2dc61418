"""Wall time of `prune` on one task or several (no --search), by stage, on a trained run.

    python benchmarks/prune_time.py RUN_DIR [--task for_while[,if_equals,...]] [--target-loss 0.15]

With several tasks, the median over them is printed last (tasks the model does not do are skipped).

Node means are computed once and cached in the run directory; pass --fresh-means to time that too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sparsecircuits.circuits.circuit import load_task_splits
from sparsecircuits.circuits.find import NoCircuitToFind
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
    times = []
    for task in args.task.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            try:
                circuit = prune(args.run_dir, task, Path(tmp) / "circuit", PruneSettings(target_loss=args.target_loss),
                                show_progress=False)
            except NoCircuitToFind as e:
                print(f"task {task}: skipped ({e})")
                continue
            times.append(time.perf_counter() - start)
        m = circuit.metrics
        widest = max(len(p) for p in load_task_splits(circuit.load_model(), task).train.prompts)
        print(f"task {circuit.task} (widest prompt {widest} tokens): {m['n_nodes']} nodes, {m['n_edges']} edges, "
              f"circuit loss {m['loss_circuit']:.4f} (test, uncalibrated); "
              + ", ".join(f"{k} {v:.1f} s" for k, v in m["seconds_by_stage"].items()) + f"; prune_seconds={times[-1]:.1f}")
    if len(times) > 1:
        print(f"median prune_seconds={statistics.median(times):.1f} over {len(times)} tasks")


if __name__ == "__main__":
    main()
