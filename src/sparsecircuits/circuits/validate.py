"""`sparsecircuits validate`: is the circuit sufficient, necessary, and better than controls?

- sufficiency: everything outside the circuit ablated, the held-out task loss (before the logit
  scale is calibrated, as the bisection targets it) stays at or under the target;
- necessity: only the circuit ablated, the task loss rises to near chance (ln 2);
- random node sets with the same count per site do much worse than the circuit;
- the same pruning on the task with shuffled labels needs a far larger circuit (or cannot fit);
- the effect of ablating each circuit node alone, inside the circuit and in the full model.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..model.sparse_kernels import sparse_weight_kernels
from ..tasks.records import TaskSplits, TokenizedTask, task_loss
from ..io import atomic_write_text, check_writable, directory_lock
from .circuit import Circuit, ablation_values, circuit_metrics, load_task_splits
from .graph import circuit_edges
from .prune import CircuitEvaluator, PruneSettings, find_circuit

MAX_PER_NODE = 1000  # circuits larger than this skip the per-node ablations
NECESSITY_THRESHOLD = 0.5  # "near chance": ln 2 is 0.69


def shuffled_labels(task: TokenizedTask, seed: int) -> TokenizedTask:
    """The same prompts with correct and incorrect swapped on a random half of the records."""
    rng = random.Random(seed)
    swap = torch.tensor([rng.random() < 0.5 for _ in range(len(task))])
    correct = torch.where(swap, task.incorrect, task.correct)
    incorrect = torch.where(swap, task.correct, task.incorrect)
    return dataclasses.replace(task, name=f"{task.name} (shuffled labels)", correct=correct, incorrect=incorrect)


def validate(circuit_dir: str | Path, run_dir: str | Path | None = None, control: bool = True,
             show_progress: bool = True, max_per_node: int = MAX_PER_NODE) -> dict:
    """Sufficiency, necessity, random and shuffled-label controls, and each node's ablation effect
    (skipped above `max_per_node` nodes: such a circuit is not one to read node by node)."""
    circuit = Circuit.load(circuit_dir)
    check_writable(Path(circuit_dir) / "validation.json", "CIRCUIT_DIR")
    model = circuit.load_model(run_dir)
    with directory_lock(Path(circuit_dir)):
        return _validate(circuit, model, Path(run_dir) if run_dir else circuit.run_dir, control, show_progress, max_per_node)


def _validate(circuit: Circuit, model, model_run_dir: Path, control: bool, show_progress: bool, max_per_node: int) -> dict:
    circuit_dir = circuit.directory
    settings = PruneSettings(**circuit.data["settings"])
    with sparse_weight_kernels(model, settings.csr_max_density):
        splits = load_task_splits(model, circuit.data["task_source"])
        means = ablation_values(model, model_run_dir, circuit.data["ablation"], show_progress)
        evaluator = CircuitEvaluator(model, splits, means, settings.calibration_steps)
        keep = circuit.keep(model)
        scale = circuit.logit_scale
        metrics = circuit_metrics(evaluator, keep, scale, seed=settings.seed + 1)
        target = circuit.data["target_loss"]
        result = {
            "task": circuit.task,
            "target_loss": target,
            "n_nodes": len(circuit.nodes),
            "n_edges": len(circuit.edges),
            **metrics,
            "sufficient": metrics["loss_circuit"] <= target,  # on test records, which no choice has seen
            "necessary": metrics["loss_circuit_ablated"] >= NECESSITY_THRESHOLD,
            "necessity_threshold": NECESSITY_THRESHOLD,
        }
        if control:
            shuffled = shuffled_labels(splits.train, seed=settings.seed)
            # Shuffled labels cannot be predicted on other records, only fitted: the control's node
            # count is chosen on its own training records (how small a "circuit" can fit nonsense),
            # and its loss on shuffled test records is shown beside (expected near chance).
            control_splits = TaskSplits(shuffled, shuffled, shuffled_labels(splits.test, seed=settings.seed + 1))
            found = find_circuit(model, control_splits, means, settings, show_progress, require_target=False)
            result["control_shuffled"] = {
                "n_nodes": int(sum(k.sum() for k in found["keep"].values())),
                "n_edges": len(circuit_edges(model, found["keep"])),
                "reached_target": found["reached"],
                "loss_fitted": found["loss_choose"],
                "loss_test": found["loss"],
                "full_model_loss_fitted": found["full_loss"],
            }
        per_node = []
        too_many = len(circuit.nodes) > max_per_node
        if too_many:
            result["per_node_skipped"] = f"{len(circuit.nodes)} nodes, more than {max_per_node}"
        ablate_each = [] if too_many else circuit.nodes
        full_keep = {site: torch.ones_like(k) for site, k in keep.items()}
        for node in tqdm(ablate_each, desc="per-node ablation", unit="node", disable=not show_progress, file=sys.stderr):
            without = {site: k.clone() for site, k in keep.items()}
            without[node["site"]][node["index"]] = False
            alone = {site: k.clone() for site, k in full_keep.items()}
            alone[node["site"]][node["index"]] = False
            per_node.append({**node,
                             "loss_circuit_without_node": float(task_loss(evaluator.logits(without) * scale)),
                             "loss_full_model_without_node": float(task_loss(evaluator.logits(alone)))})
        result["per_node"] = per_node
    atomic_write_text(Path(circuit_dir) / "validation.json", json.dumps(result, indent=1))
    return result


def format_validation(result: dict) -> str:
    lines = [f"circuit for {result['task']}: {result['n_nodes']} nodes, {result['n_edges']} edges (target loss {result['target_loss']})",
             f"{'check':34s} {'loss':>8s}  verdict"]
    rows = [
        ("full model", result["loss_full_model"], ""),
        ("circuit only (sufficiency)", result["loss_circuit"], "pass" if result["sufficient"] else "FAIL"),
        ("circuit only, logit scale calibrated", result["loss_circuit_calibrated"], ""),
        ("circuit ablated (necessity)", result["loss_circuit_ablated"], "pass" if result["necessary"] else "FAIL"),
        ("random nodes, same size per site", result["loss_random_same_size"], ""),
        ("empty circuit (every node ablated)", result["loss_empty_circuit"], ""),
    ]
    lines += [f"{name:34s} {loss:8.4f}  {verdict}" for name, loss, verdict in rows]
    if "control_shuffled" in result:
        c = result["control_shuffled"]
        reached = "reached the target" if c["reached_target"] else "could not reach the target"
        lines.append(f"shuffled-label control: {c['n_nodes']} nodes, {c['n_edges']} edges, {reached} on the records it was"
                     f" fitted to (loss {c['loss_fitted']:.4f}; {c['loss_test']:.4f} on other records) vs"
                     f" {result['n_nodes']} nodes, {result['n_edges']} edges")
    if "per_node_skipped" in result:
        lines.append(f"per-node ablations skipped: {result['per_node_skipped']}")
    worst = sorted(result["per_node"], key=lambda r: -r["loss_circuit_without_node"])[:10]
    if worst:
        lines.append("nodes whose ablation hurts the circuit most:")
        lines += [f"  {r['site']}:{r['index']:<5d} circuit without it {r['loss_circuit_without_node']:.4f},"
                  f" full model without it {r['loss_full_model_without_node']:.4f}" for r in worst]
    return "\n".join(lines)
