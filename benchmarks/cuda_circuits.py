"""Every circuit command on CPU and on CUDA, side by side: the --device path checked on a GPU.

Prunes TASK of RUN_DIR (node and edge circuit), then validates, cleans up, splits into paths, labels
and draws it, once with the model on the CPU and once on CUDA, and prints each figure from both.
The circuit commands run in float32 on both devices (no autocast), so the node rankings agree to
summation order; a node count chosen on a loss within rounding of the goal may still differ by one.

    python benchmarks/cuda_circuits.py RUN_DIR --task single_double_quote [--steps 300] [--target-loss 0.15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sparsecircuits import PruneSettings, cleanup, label, paths, prune, validate, view
from sparsecircuits.circuits.workbench import Workbench


def run_on(device: str, run_dir: str, task: str, folder: Path, steps: int, target_loss: float = 0.15) -> dict:
    bench = Workbench(run_dir, device)
    started = time.perf_counter()
    circuit = prune(bench, task, folder, PruneSettings(target_loss=target_loss, steps=steps, edges=True), show_progress=False)
    seconds = {"prune": time.perf_counter() - started}
    figures = {"nodes": circuit.metrics["n_nodes"], "weight_edges": circuit.metrics["n_edges"],
               "loss_circuit": circuit.metrics["loss_circuit"], "loss_full_model": circuit.metrics["loss_full_model"],
               "edge_circuit_edges": circuit.data["edge_circuit"]["metrics"]["n_edges"]}
    for name, command in (("validate", lambda: validate(folder, bench, show_progress=False)),
                          ("cleanup", lambda: cleanup(folder, bench, show_progress=False)),
                          ("paths", lambda: paths(folder, bench, show_progress=False)),
                          ("label", lambda: label(bench, circuit_dir=folder, show_progress=False)),
                          ("view", lambda: view(folder, run=bench, show_progress=False, force=True))):
        started = time.perf_counter()
        result = command()
        seconds[name] = time.perf_counter() - started
        if name == "validate":
            figures.update(evidence=result["evidence"], sufficient=result["sufficient"], necessary=result["necessary"])
        elif name == "paths":
            figures["paths_top_share"] = result["node"]["paths"][0]["share"] if result["node"]["paths"] else None
    figures["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--task", default="single_double_quote")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--target-loss", type=float, default=0.15)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark compares the CPU with CUDA")
    with tempfile.TemporaryDirectory() as tmp:
        results = {device: run_on(device, args.run_dir, args.task, Path(tmp) / device, args.steps,
                                   args.target_loss) for device in ("cpu", "cuda")}
    for key in results["cpu"]:
        print(f"{key:20s} cpu {json.dumps(results['cpu'][key])}   cuda {json.dumps(results['cuda'][key])}")


if __name__ == "__main__":
    main()
