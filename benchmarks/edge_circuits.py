"""Node circuits against the edge circuits `prune --edges` would find from them, for every circuit of a demo.

    python benchmarks/edge_circuits.py DEMO_DIR [--model sparse]

For each circuit in DEMO_DIR/circuits/MODEL: its nodes and weight edges, then edge pruning with the
circuit's own settings (circuits/edges.py) and the edge circuit's nodes, weight edges and test loss;
last, the median of (node circuit's weight edges / edge circuit's) over the circuits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from sparsecircuits.circuits.circuit import Circuit
from sparsecircuits.circuits.edges import find_edge_circuit
from sparsecircuits.circuits.find import PruneSettings
from sparsecircuits.circuits.workbench import Workbench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir")
    parser.add_argument("--model", default="sparse")
    args = parser.parse_args()
    bench = Workbench(Path(args.demo_dir) / args.model)
    ratios = []
    print(f"{'task':24s} {'nodes':>6s} {'edges':>6s} {'loss':>7s} | {'nodes':>6s} {'edges':>6s} {'loss':>7s} {'dropped':>20s} {'s':>5s}")
    for directory in sorted((Path(args.demo_dir) / "circuits" / args.model).iterdir()):
        if not (directory / "circuit.json").is_file():
            continue
        circuit = Circuit.load(directory)
        settings = PruneSettings(**circuit.data["settings"])
        model = bench.model
        start = time.perf_counter()
        found = find_edge_circuit(model, bench.splits(circuit.task_source()), bench.means(settings.ablation, circuit.means_data, False),
                                  circuit.keep(model), settings, show_progress=False)
        m = circuit.metrics
        n_nodes = int(sum(k.sum() for k in found["keep"].values()))
        ratios.append(m["n_edges"] / max(1, len(found["edges"])))
        print(f"{circuit.task:24s} {m['n_nodes']:6d} {m['n_edges']:6d} {m['loss_circuit']:7.4f} | {n_nodes:6d} {len(found['edges']):6d}"
              f" {found['loss']:7.4f} {found['dropped_nodes'][:20]:>20s} {time.perf_counter() - start:5.0f}"
              + ("" if found["reached"] else "  (no edge count met the goal)"))
    if ratios:
        print(f"median node-circuit / edge-circuit weight edges: {statistics.median(ratios):.2f} over {len(ratios)} circuits"
              f" (each: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
