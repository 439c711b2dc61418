"""Where a mask-training step of `prune` spends its time: torch.profiler over a short mask training.

    python benchmarks/profile_mask.py RUN_DIR --task var_if [--steps 20] [--rows 25]

Trains the node mask for `--steps` steps once to warm up (printing seconds per step), then again under
the profiler, with the frozen sparse layers on CSR kernels as `prune` runs them, and prints the ops
by self CPU time.
"""

from __future__ import annotations

import argparse
import time

from torch.profiler import ProfilerActivity, profile

from sparsecircuits.circuits.find import train_mask
from sparsecircuits.circuits.settings import PruneSettings
from sparsecircuits.circuits.workbench import Workbench
from sparsecircuits.model.sparse_kernels import sparse_weight_kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--task", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    bench = Workbench(args.run_dir)
    settings = PruneSettings(steps=args.steps)
    with sparse_weight_kernels(bench.model, settings.csr_max_density):
        splits, means = bench.splits(args.task), bench.means(settings.ablation, None, False)
        start = time.perf_counter()
        train_mask(bench.model, splits.train, means, settings, False)
        print(f"{(time.perf_counter() - start) / args.steps:.3f} s per mask step ({args.task}, {args.steps} steps, warm-up run)")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_mask(bench.model, splits.train, means, settings, False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
