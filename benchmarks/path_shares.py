"""How much of each circuit's logit difference its top paths carry, for every circuit of a demo.

    python benchmarks/path_shares.py DEMO_DIR [--model sparse] [--show TASK]

For each circuit in DEMO_DIR/circuits/MODEL (node circuit, and its edge circuit when it has one):
Δ (the logit difference its nodes add over their means, test records), what all its paths carry
together (Δ to first order), the number of paths, and the share of Δ its top 1 and top 3 paths
carry (circuits/paths.py); last, on how many circuits the top 3 carry at least half. `--show TASK`
prints that circuit's top paths with its nodes' labels (labels.json, when `label` or `view` wrote it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparsecircuits.circuits.circuit import Circuit
from sparsecircuits.circuits.paths import circuit_paths, format_paths
from sparsecircuits.circuits.workbench import Workbench


def labels_of(directory: Path) -> dict[str, str]:
    path = directory / "labels.json"
    if not path.is_file():
        return {}
    nodes = json.loads(path.read_text())["nodes"]
    return {f"{n['site']}:{n['index']}": n["labels"][0]["concept"]
            + ("" if n["labels"][0].get("beats_baseline", True) else ", not above baseline") for n in nodes if n["labels"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir")
    parser.add_argument("--model", default="sparse")
    parser.add_argument("--show", action="append", default=[], help="a task whose top paths to print (repeatable)")
    args = parser.parse_args()
    bench = Workbench(Path(args.demo_dir) / args.model)
    shown, halves, total = [], 0, 0
    print(f"{'task':22s} {'circuit':8s} {'nodes':>5s} {'Δ':>7s} {'paths carry':>11s} {'paths':>6s} {'top 1':>6s} {'top 3':>6s}")
    for directory in sorted((Path(args.demo_dir) / "circuits" / args.model).iterdir()):
        if not (directory / "circuit.json").is_file():
            continue
        circuit = Circuit.load(directory)
        model = bench.model
        result = circuit_paths(model, bench.splits(circuit.task_source()).test,
                               bench.means(circuit.data["ablation"], circuit.means_data, False), circuit.data)
        for which in ("node", "edge"):
            r = result[which]
            if r is None:
                continue
            nodes = len(circuit.nodes if which == "node" else circuit.data["edge_circuit"]["nodes"])
            top1 = r["paths"][0]["share"] if r["paths"] else 0.0
            print(f"{circuit.task:22s} {which:8s} {nodes:5d} {r['delta']:7.3f} {r['paths_sum']:11.3f} {r['n_paths']:6d}"
                  f" {top1:6.0%} {r['top3_share']:6.0%}")
            halves += r["top3_share"] >= 0.5
            total += 1
            if circuit.task in args.show:
                shown.append(f"{circuit.task} ({which} circuit): " + format_paths(r, labels_of(directory)))
    print(f"the top 3 paths carry at least half of Δ on {halves} of {total} circuits")
    for text in shown:
        print("\n" + text)


if __name__ == "__main__":
    main()
