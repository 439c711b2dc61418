"""Can one trained mask serve every target of claim (a)?

A demo's claim (a) trains one mask per (model, task, target, seed). For every (model, task, seed) that
has circuits at two targets, take the ranking (scores.safetensors) the mask trained for one target and
choose the node count for the other target on the choose records, exactly as `prune` chooses it
(`find_circuit` with stored scores): no mask is trained. Print its weight edges beside the circuit
pruned for that target, per case and as the best of the seeds (what claim (a) keeps), with the
geometric-mean ratio and how many are within 10%.

    python benchmarks/one_mask_targets.py DEMO [--targets 0.15,0.075] [--seeds 3] [--models sparse,dense] [--csv FILE]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from sparsecircuits.circuits.circuit import Circuit, ablation_values, load_task_splits
from sparsecircuits.circuits.find import PruneSettings, find_circuit
from sparsecircuits.circuits.graph import circuit_edges, weight_edge_count
from sparsecircuits.rundir import Run

TARGET_LOSS = 0.15  # the demo's own target: its circuits' folders carry no -target suffix


def folder(model: str, target: float, seed: int) -> str:
    return (model if math.isclose(target, TARGET_LOSS) else f"{model}-target{target:g}") + (f"-seed{seed}" if seed else "")


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path)
    parser.add_argument("--targets", default="0.15,0.075", help="two targets the demo pruned at")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", help="a comma list of the demo's models (default: every one pruned at both targets)")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    circuits = args.demo / "circuits"
    models = args.models.split(",") if args.models else sorted({p.name.split("-")[0] for p in circuits.iterdir() if p.is_dir()})
    rows = []
    for model in models:
        run = Run.open(args.demo / model)
        net = run.model()
        means = ablation_values(net, run, "mean", show_progress=False)
        tasks = sorted({p.name for p in (circuits / folder(model, targets[0], 0)).iterdir()}
                       & {p.name for p in (circuits / folder(model, targets[1], 0)).iterdir()}) \
            if (circuits / folder(model, targets[1], 0)).is_dir() else []
        for task in tasks:
            splits = load_task_splits(net, task)
            for source, dest in ((targets[0], targets[1]), (targets[1], targets[0])):
                for seed in range(args.seeds):
                    mask_dir, own_dir = circuits / folder(model, source, seed) / task, circuits / folder(model, dest, seed) / task
                    if not (mask_dir / "circuit.json").is_file() or not (own_dir / "circuit.json").is_file():
                        continue
                    own = Circuit.load(own_dir).metrics
                    found = find_circuit(net, splits, means, PruneSettings(target_loss=dest, seed=seed), show_progress=False,
                                         require_target=False, scores=Circuit.load(mask_dir).scores())
                    rows.append({"model": model, "task": task, "seed": seed, "mask_target": source, "target": dest,
                                 "one_mask_edges": weight_edge_count(circuit_edges(net, found["keep"])),
                                 "one_mask_reached": found["reached"], "own_edges": own["n_edges"], "own_reached": own["reached"]})
                    r = rows[-1]
                    print(f"{model:16s} {task:22s} seed {seed} mask for {source:g} at {dest:g}: {r['one_mask_edges']:6d}"
                          f" edges ({'reached' if r['one_mask_reached'] else 'missed'}) against {r['own_edges']:6d}"
                          f" ({'reached' if r['own_reached'] else 'missed'})", flush=True)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print("\nbest of the seeds that reached the target (what claim (a) keeps), one mask against a mask per target:")
    for source, dest in ((targets[0], targets[1]), (targets[1], targets[0])):
        ratios = []
        for model in models:
            for task in sorted({r["task"] for r in rows if r["model"] == model}):
                case = [r for r in rows if (r["model"], r["task"], r["mask_target"]) == (model, task, source)]
                one = [r["one_mask_edges"] for r in case if r["one_mask_reached"]]
                own = [r["own_edges"] for r in case if r["own_reached"]]
                if one and own:
                    ratios.append(min(one) / max(min(own), 1))
        within = sum(abs(x - 1) <= 0.10 for x in ratios)
        print(f"  mask trained for {source:g}, count chosen for {dest:g}: {len(ratios)} (model, task) pairs, edges ratio"
              f" geometric mean {geomean(ratios) or float('nan'):.3f}, range {min(ratios, default=float('nan')):.2f}-"
              f"{max(ratios, default=float('nan')):.2f}, within 10%: {within} of {len(ratios)}")


if __name__ == "__main__":
    main()
