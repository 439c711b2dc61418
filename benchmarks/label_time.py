"""Wall time of `sparsecircuits label` on every node of a run (the goal: a whole `small` model in
under 2 minutes on 2 cores), by stage, with how many nodes got a label and how many beat the
shuffled-weights baseline.

    python benchmarks/label_time.py RUN_DIR [--tokens 16384] [--data DATA_DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sparsecircuits.circuits import labels
from sparsecircuits.concepts import PYTHON_CONCEPTS
from sparsecircuits.rundir import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--data")
    args = parser.parse_args()
    run = Run.open(args.run_dir)
    model, data = run.model(), run.data(args.data)
    nodes = [(site, i) for site, width in model.node_sites.items() for i in range(width)]
    seconds = {}
    started = time.perf_counter()
    table = labels.concept_table(data, model.tokenizer, model.config.ctx_len, args.tokens, PYTHON_CONCEPTS, False)
    seconds["concepts"] = time.perf_counter() - started
    started = time.perf_counter()
    acts = labels.node_activations(model, table.inputs, nodes)
    seconds["activations"] = time.perf_counter() - started
    started = time.perf_counter()
    labels.score_nodes(acts, table)
    seconds["scores"] = time.perf_counter() - started
    started = time.perf_counter()
    result = labels.label_nodes(model, data, run.config.sparsity, nodes, args.tokens, show_progress=False)
    seconds["label_nodes (all of it, with the baseline)"] = time.perf_counter() - started
    labelled = [n for n in result["nodes"] if n["labels"]]
    above = [n for n in labelled if n["labels"][0]["beats_baseline"]]
    print(f"{len(nodes)} nodes, {result['tokens_read']} tokens, {len(PYTHON_CONCEPTS)} concepts")
    for stage, s in seconds.items():
        print(f"  {stage:45s} {s:7.1f} s")
    print(f"labelled above threshold: {len(labelled)} ({len(labelled) / len(nodes):.1%}); top label above the"
          f" shuffled-weights baseline: {len(above)}")
    best = np.array([n["labels"][0]["strength"] for n in labelled]) if labelled else np.zeros(1)
    print(f"median strength of the top label: {np.median(best):.3f}")


if __name__ == "__main__":
    main()
