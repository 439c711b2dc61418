"""Where the sparse step's time goes: per-op self CPU time of the sparse and dense reference steps
(torch.profiler, the NumPy selection wrapped so it shows as one row) and their difference, then the
time inside `topk_mask` by caller and row width (unprofiled).

    python benchmarks/profile_step.py [--steps 4]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch
from torch.profiler import profile, record_function

import sparsecircuits.model.sparsity as sparsity
from train_step import TimedStep, reference_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    select_rows, topk_mask = sparsity._topk_mask_cpu, sparsity.topk_mask

    def recorded_select(*a, **k):
        with record_function("NumPy selection (AbsTopK and weight top-k)"):
            return select_rows(*a, **k)
    sparsity._topk_mask_cpu = recorded_select
    steps = {"sparse": TimedStep(reference_config(), torch.device("cpu")),
             "dense": TimedStep(reference_config(False, False), torch.device("cpu"))}
    for step in steps.values():
        step.run(2)
    self_ms, wall = {}, {}
    for name, step in steps.items():
        with profile() as prof:
            step.run(args.steps)
        wall[name] = step.seconds[-1] * 1000
        self_ms[name] = {e.key: e.self_cpu_time_total / 1000 / args.steps for e in prof.key_averages()}
    print(f"profiled ms/step: sparse {wall['sparse']:.0f}, dense {wall['dense']:.0f}")
    print("| op | sparse ms/step | dense ms/step | difference |\n|---|---|---|---|")
    ops = set(self_ms["sparse"]) | set(self_ms["dense"])
    for op in sorted(ops, key=lambda o: self_ms["dense"].get(o, 0) - self_ms["sparse"].get(o, 0))[:12]:
        a, b = self_ms["sparse"].get(op, 0.0), self_ms["dense"].get(op, 0.0)
        print(f"| {op} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")

    seconds, calls = collections.defaultdict(float), collections.Counter()

    def timed_topk_mask(scores, k, dtype=torch.bool):
        key = f"{sys._getframe(1).f_code.co_name}, rows {scores.shape[-1]} wide, k {k}"
        start = time.perf_counter()
        out = topk_mask(scores, k, dtype)
        seconds[key] += time.perf_counter() - start
        calls[key] += 1
        return out
    sparsity._topk_mask_cpu = select_rows
    sparsity.topk_mask = timed_topk_mask
    steps["sparse"].run(args.steps)
    print("\ntime inside topk_mask, by caller (ms/step, calls/step):")
    for key, total in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {1000 * total / args.steps:7.1f}  {calls[key] // args.steps:3d}  {key}")
    print(f"  {1000 * sum(seconds.values()) / args.steps:7.1f}  in all")


if __name__ == "__main__":
    main()
