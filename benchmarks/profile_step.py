"""Where the sparse step's time goes: per-op self CPU time of the sparse and dense reference steps
(torch.profiler, each compiled top-k kernel shown as one row) and their difference, then the time
in each kernel by the shape it ran on (unprofiled).

    python benchmarks/profile_step.py [--steps 4]
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from torch.profiler import profile, record_function

import sparsecircuits.model.topk_kernels as topk_kernels
from sparsecircuits.train.runtime import keep_freed_memory
from train_step import TimedStep, reference_config

KERNELS = {"abs_topk_rows": 3, "bias_abs_topk_rows": 3, "masked_rows": None, "masked_rows_with_column_sums": None,
           "topk_rows": 2, "weight_keep_mask": 2}  # name: position of k (None: no k)


# A linear layer fused with its AbsTopK multiplies by mm, then adds its bias itself; F.linear uses addmm.
MERGED = {"aten::mm": "aten::mm + aten::addmm", "aten::addmm": "aten::mm + aten::addmm"}


def wrap_kernels(wrapper) -> None:
    """Replace each kernel in `topk_kernels` (looked up there at every call) by wrapper(name, kernel)."""
    for name in KERNELS:
        setattr(topk_kernels, name, wrapper(name, getattr(topk_kernels, name)))


def print_profile(sparse: TimedStep, dense: TimedStep, steps: int, rows: int = 12) -> None:
    """The per-op table of `steps` profiled steps of each (ops sorted by how much more time the
    sparse step spends in them), then the top-k kernels' unprofiled time in the sparse step."""
    kernels = {name: getattr(topk_kernels, name) for name in KERNELS}

    def recorded(name, kernel):
        def run(*arrays):
            with record_function(f"topk_kernels.{name}"):
                return kernel(*arrays)
        return run

    def timed(name, kernel):
        def run(*arrays):
            start = time.perf_counter()
            result = kernel(*arrays)
            k = "" if KERNELS[name] is None else f", k {arrays[KERNELS[name]]}"
            key = f"{name}, {arrays[0].shape[0]} rows x {arrays[0].shape[1]}{k}"
            seconds[key] += time.perf_counter() - start
            calls[key] += 1
            return result
        return run

    wrap_kernels(recorded)
    self_ms, wall = {}, {}
    for name, step in (("sparse", sparse), ("dense", dense)):
        with profile() as prof:
            step.run(steps)
        wall[name] = step.seconds.pop() * 1000
        self_ms[name] = collections.Counter()
        for e in prof.key_averages():
            self_ms[name][MERGED.get(e.key, e.key)] += e.self_cpu_time_total / 1000 / steps
    print(f"profiled ms/step: sparse {wall['sparse']:.0f}, dense {wall['dense']:.0f}")
    print("| op | sparse ms/step | dense ms/step | difference |\n|---|---|---|---|")
    ops = set(self_ms["sparse"]) | set(self_ms["dense"])
    for op in sorted(ops, key=lambda o: self_ms["dense"].get(o, 0) - self_ms["sparse"].get(o, 0))[:rows]:
        a, b = self_ms["sparse"].get(op, 0.0), self_ms["dense"].get(op, 0.0)
        print(f"| {op} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")

    seconds, calls = collections.defaultdict(float), collections.Counter()
    wrap_kernels(lambda name, _: timed(name, kernels[name]))
    try:
        sparse.run(steps)
    finally:
        sparse.seconds.pop()
        wrap_kernels(lambda name, _: kernels[name])
    print("\ntime in the top-k kernels of the sparse step (ms/step, calls/step):")
    for key, total in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {1000 * total / steps:7.1f}  {calls[key] // steps:3d}  {key}")
    print(f"  {1000 * sum(seconds.values()) / steps:7.1f}  in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    keep_freed_memory()  # as training does (train.keep_freed_memory)
    sparse = TimedStep(reference_config(), torch.device("cpu"))
    dense = TimedStep(reference_config(False, False), torch.device("cpu"))
    for step in (sparse, dense):
        step.run(2)
    print_profile(sparse, dense, args.steps)


if __name__ == "__main__":
    main()
