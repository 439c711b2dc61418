"""`sparsecircuits validate`: is the circuit sufficient, necessary, and better than controls?

- sufficiency: everything outside the circuit ablated, the held-out task loss (before the logit
  scale is calibrated, as the bisection targets it) stays at or under the target;
- necessity: only the circuit ablated, the task loss rises to near chance (ln 2);
- controls that fail when they reach the target: random node sets with the same count per site,
  the empty circuit, and the same pruning on the task with shuffled labels, compared with the real
  labels on the same footing (node counts chosen on the training records for both);
- a circuit is evidence when it is sufficient, necessary and passes every control that was run;
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
# A shuffled-label twin that fits the target with at most this many times the real task's nodes
# (both chosen on their training records) makes the circuit "not evidence".
COMPARABLE_FACTOR = 2.0


def shuffled_labels(task: TokenizedTask, seed: int) -> TokenizedTask:
    """The same prompts with correct and incorrect swapped on a random half of the records."""
    rng = random.Random(seed)
    swap = torch.tensor([rng.random() < 0.5 for _ in range(len(task))])
    correct = torch.where(swap, task.incorrect, task.correct)
    incorrect = torch.where(swap, task.correct, task.incorrect)
    return dataclasses.replace(task, name=f"{task.name} (shuffled labels)", correct=correct, incorrect=incorrect)


def _fitted(model, splits: TaskSplits, means, settings: PruneSettings, show_progress: bool) -> dict:
    found = find_circuit(model, splits, means, settings, show_progress, require_target=False)
    return {"n_nodes": int(sum(k.sum() for k in found["keep"].values())),
            "n_edges": len(circuit_edges(model, found["keep"])),
            "reached_target": found["reached"],
            "loss_fitted": found["loss_choose"],
            "loss_test": found["loss"],
            "full_model_loss_fitted": found["full_loss"]}


def fitting_controls(model, splits: TaskSplits, means, settings: PruneSettings, show_progress: bool = True) -> dict:
    """The task and its shuffled-label twin pruned on the same footing.

    Shuffled labels cannot be predicted on other records, only fitted, so both node counts are
    chosen on the records the mask was trained on (how small a set of nodes can fit the labels),
    and both losses on their test records are shown beside (the shuffled one expected near chance).
    The scan of the ranking does not assume the full model reaches the target."""
    shuffled = shuffled_labels(splits.train, seed=settings.seed)
    return {
        "control_real_fitted": _fitted(model, TaskSplits(splits.train, splits.train, splits.test), means, settings,
                                       show_progress),
        "control_shuffled": _fitted(model, TaskSplits(shuffled, shuffled, shuffled_labels(splits.test, seed=settings.seed + 1)),
                                    means, settings, show_progress),
    }


def control_verdicts(result: dict) -> dict[str, dict]:
    """Pass or fail, with the reason, for each control that was run. A control fails when it does
    what only a real mechanism should: reach the target."""
    target = result["target_loss"]
    verdicts = {
        "random": {"pass": result["loss_random_same_size"] > target,
                   "why": f"random nodes, same size per site: loss {result['loss_random_same_size']:.4f}"
                          f" {'above' if result['loss_random_same_size'] > target else 'at or under'} the target"},
        "empty": {"pass": result["loss_empty_circuit"] > target,
                  "why": f"empty circuit (bigram table and means alone): loss {result['loss_empty_circuit']:.4f}"
                         + (" above the target" if result["loss_empty_circuit"] > target
                            else " at or under the target: the task needs no nodes")},
    }
    if "control_shuffled" in result:
        fake, real = result["control_shuffled"], result["control_real_fitted"]
        comparable = fake["reached_target"] and fake["n_nodes"] <= COMPARABLE_FACTOR * max(real["n_nodes"], 1)
        if not fake["reached_target"]:
            why = "shuffled labels: no node count fits the target"
        else:
            why = (f"shuffled labels fitted to the target with {fake['n_nodes']} nodes against {real['n_nodes']}"
                   f" for the real labels on the same footing"
                   + (" (comparable: pruning fits nonsense as easily)" if comparable else ""))
        verdicts["shuffled"] = {"pass": not comparable, "why": why}
    return verdicts


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
        means = ablation_values(model, model_run_dir, circuit.data["ablation"], show_progress, circuit.means_data)
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
            result.update(fitting_controls(model, splits, means, settings, show_progress))
        result["verdicts"] = control_verdicts(result)
        result["evidence"] = result["sufficient"] and result["necessary"] and all(
            v["pass"] for v in result["verdicts"].values())
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


def not_evidence_reasons(result: dict) -> list[str]:
    reasons = [] if result["sufficient"] else ["not sufficient"]
    reasons += [] if result["necessary"] else ["not necessary"]
    return reasons + [f"{name} control failed" for name, v in result["verdicts"].items() if not v["pass"]]


def format_validation(result: dict) -> str:
    lines = [f"circuit for {result['task']}: {result['n_nodes']} nodes, {result['n_edges']} edges (target loss {result['target_loss']})",
             f"{'check':38s} {'loss':>8s}  verdict"]
    rows = [
        ("full model", result["loss_full_model"], ""),
        ("circuit only (sufficiency)", result["loss_circuit"], "pass" if result["sufficient"] else "FAIL"),
        ("circuit only, logit scale calibrated", result["loss_circuit_calibrated"], ""),
        ("circuit ablated (necessity)", result["loss_circuit_ablated"], "pass" if result["necessary"] else "FAIL"),
        ("random nodes, same size per site", result["loss_random_same_size"], ""),
        ("empty circuit (every node ablated)", result["loss_empty_circuit"], ""),
    ]
    lines += [f"{name:38s} {loss:8.4f}  {verdict}" for name, loss, verdict in rows]
    if "control_shuffled" in result:
        lines.append("same footing (node count chosen on the records the mask was trained on):")
        for name, key in (("real labels", "control_real_fitted"), ("shuffled labels", "control_shuffled")):
            c = result[key]
            lines.append(f"  {name:16s} {c['n_nodes']:6d} nodes {c['n_edges']:7d} edges,"
                         f" {'reached' if c['reached_target'] else 'missed'} the target: loss {c['loss_fitted']:.4f}"
                         f" fitted, {c['loss_test']:.4f} on test records")
    for name, verdict in result["verdicts"].items():
        lines.append(f"control {name:9s} {'pass' if verdict['pass'] else 'FAIL'}  {verdict['why']}")
    skipped = "" if "control_shuffled" in result else " (shuffled-label control not run)"
    lines.append("verdict: " + ("evidence (sufficient, necessary, every control passed)" if result["evidence"]
                                else "NOT EVIDENCE: " + ", ".join(not_evidence_reasons(result))) + skipped)
    if "per_node_skipped" in result:
        lines.append(f"per-node ablations skipped: {result['per_node_skipped']}")
    worst = sorted(result["per_node"], key=lambda r: -r["loss_circuit_without_node"])[:10]
    if worst:
        lines.append("nodes whose ablation hurts the circuit most:")
        lines += [f"  {r['site']}:{r['index']:<5d} circuit without it {r['loss_circuit_without_node']:.4f},"
                  f" full model without it {r['loss_full_model_without_node']:.4f}" for r in worst]
    return "\n".join(lines)
