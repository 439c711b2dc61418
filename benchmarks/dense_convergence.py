"""Are the largest dense circuits of a demo's claim (a) converged, or would more pruning shrink them?

For the N tasks whose dense circuits (the stronger `dense` baseline, at one target) have the most weight
edges, prune the dense model again with more mask steps and with more seeds than the demo did, and print
the weight edges beside the demo's best of its seeds. Circuits go to DEMO/convergence/.

    python benchmarks/dense_convergence.py DEMO --target 0.15 --tasks 2 --steps 900 --seeds 3,4,5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from sparsecircuits.circuits.prune import PruneSettings, prune_or_reuse
from sparsecircuits.rundir import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path)
    parser.add_argument("--model", default="dense", help="the demo's model to prune again (default dense)")
    parser.add_argument("--target", type=float, default=0.15)
    parser.add_argument("--tasks", type=int, default=2, help="how many of the largest circuits")
    parser.add_argument("--steps", type=int, default=900, help="mask steps of the longer pruning (demo: 300)")
    parser.add_argument("--seeds", default="3,4,5", help="further pruning seeds (the demo used 0, 1, 2)")
    args = parser.parse_args()
    summary = json.loads((args.demo / "summary.json").read_text())
    per_target = [c for c in summary["claim"]["dense"] if math.isclose(c["target_loss"], args.target)][0]
    largest = sorted(per_target["tasks"].items(), key=lambda item: -item[1]["dense_edges"])[: args.tasks]
    run = Run.open(args.demo / args.model)
    base = PruneSettings(target_loss=args.target)
    print(f"{'task':24s} {'demo best':>9s} {'demo seeds':>20s} {f'{args.steps} steps':>10s} {'more seeds':>20s}")
    for task, row in largest:
        def edges(settings: PruneSettings, tag: str) -> int | None:
            m = prune_or_reuse(run, task, args.demo / "convergence" / f"{args.model}-{tag}" / task, settings,
                               show_progress=False).metrics
            return m["n_edges"] if m["loss_choose"] <= args.target else None
        longer = edges(dataclasses.replace(base, steps=args.steps), f"steps{args.steps}")
        more = [edges(dataclasses.replace(base, seed=int(s)), f"seed{s}") for s in args.seeds.split(",")]
        print(f"{task:24s} {row['dense_edges']:9.0f} {str(row['edges_over_seeds'][args.model]):>20s}"
              f" {str(longer):>10s} {str(more):>20s}")


if __name__ == "__main__":
    main()
