"""Node circuits against the edge circuits `prune --edges` would find from them, for every circuit of a demo.

    python benchmarks/edge_circuits.py DEMO_DIR [--model sparse] [--tasks A,B] [--trim]

For each circuit in DEMO_DIR/circuits/MODEL: its nodes and weight edges, then edge pruning with the
circuit's own settings (circuits/edges.py) and the edge circuit's nodes, weight edges and test loss;
last, the median of (node circuit's weight edges / edge circuit's) over the circuits.

`--trim`: then a greedy pass of what a person cleaning the circuit by hand would try: each kept edge
(smallest weight first), then each node, removed for good when the circuit without it still meets the
goal on the choose records; prints what is left and its test loss. Whether such a pass finds much
that edge pruning's ranking missed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from sparsecircuits.circuits.circuit import Circuit
from sparsecircuits.circuits.edges import edges_only, find_edge_circuit
from sparsecircuits.circuits.find import CircuitEvaluator, PruneSettings
from sparsecircuits.circuits.workbench import Workbench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir")
    parser.add_argument("--model", default="sparse")
    parser.add_argument("--tasks", help="only these circuits (comma list; default every one)")
    parser.add_argument("--trim", action="store_true", help="a greedy pass over edges, then nodes, after edge pruning")
    args = parser.parse_args()
    bench = Workbench(Path(args.demo_dir) / args.model)
    ratios = []
    print(f"{'task':24s} {'nodes':>6s} {'edges':>6s} {'loss':>7s} | {'nodes':>6s} {'edges':>6s} {'loss':>7s} {'dropped':>20s} {'s':>5s}")
    for directory in sorted((Path(args.demo_dir) / "circuits" / args.model).iterdir()):
        if not (directory / "circuit.json").is_file() or (args.tasks and directory.name not in args.tasks.split(",")):
            continue
        circuit = Circuit.load(directory)
        settings = PruneSettings(**circuit.data["settings"])
        model = bench.model
        start = time.perf_counter()
        found = find_edge_circuit(model, bench.splits(circuit.task_source()), bench.means(settings.ablation, circuit.means_data, False),
                                  circuit.keep(model), settings, show_progress=False)
        m = circuit.metrics
        n_nodes = count(found["keep"])
        ratios.append(m["n_edges"] / max(1, len(found["edges"])))
        print(f"{circuit.task:24s} {m['n_nodes']:6d} {m['n_edges']:6d} {m['loss_circuit']:7.4f} | {n_nodes:6d} {len(found['edges']):6d}"
              f" {found['loss']:7.4f} {found['dropped_nodes'][:20]:>20s} {time.perf_counter() - start:5.0f}"
              + ("" if found["reached"] else "  (no edge count met the goal)"))
        if args.trim and found["reached"]:
            start = time.perf_counter()
            nodes, kept, loss, evaluations = greedy_trim(model, bench.splits(circuit.task_source()),
                                                   bench.means(settings.ablation, circuit.means_data, False), found, settings.goal)
            print(f"{'  greedy trim':24s} {'':6s} {'':6s} {'':7s} | {count(nodes):6d} {count(kept):6d} {loss:7.4f}"
                  f" {f'{evaluations} evaluations':>20s} {time.perf_counter() - start:5.0f}")
    if ratios:
        print(f"median node-circuit / edge-circuit weight edges: {statistics.median(ratios):.2f} over {len(ratios)} circuits"
              f" (each: {', '.join(f'{r:.2f}' for r in ratios)})")


def count(masks) -> int:
    return int(sum(m.sum() for m in masks.values()))


def greedy_trim(model, splits, means, found: dict, goal: float):
    """Each kept edge (smallest |weight| first), then each node, removed when the choose loss still meets `goal`:
    (nodes, edges, test loss, evaluations)."""
    edge_set, evaluator = found["edge_set"], CircuitEvaluator(model, splits, means)
    nodes = {site: k.clone() for site, k in found["keep"].items()}
    kept = {name: m.clone() for name, m in found["kept"].items()}

    def loss(nodes, split="choose"):
        with edges_only(model, edge_set, edge_set.between(kept, nodes), means):
            return evaluator.loss(nodes, split)

    evaluations = 0
    order = sorted((abs(float(edge_set.linear[name].weight[d, s])), name, d, s)
                   for name, m in kept.items() for d, s in m.nonzero().tolist())
    for _, name, d, s in order:
        kept[name][d, s] = False
        evaluations += 1
        if loss(nodes) > goal:
            kept[name][d, s] = True
    for site in nodes:
        for i in nodes[site].nonzero().flatten().tolist():
            nodes[site][i] = False
            evaluations += 1
            if loss(nodes) > goal:
                nodes[site][i] = True
    return nodes, edge_set.between(kept, nodes), loss(nodes, "test"), evaluations


if __name__ == "__main__":
    main()
