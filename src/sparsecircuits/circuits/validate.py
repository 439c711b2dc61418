"""`sparsecircuits validate`: is the circuit sufficient, necessary, and better than controls?

- sufficiency: everything outside the circuit ablated, the held-out task loss (before the logit
  scale is calibrated, as the node count targets it) stays at or under the target;
- necessity: only the circuit ablated, the task loss rises to near chance (ln 2);
- four controls (`validation.json` "controls"), each with `passed`:
  - `nonsense_rule`: the same prompts with the answer set by a consistent but meaningless rule
    (the parity of a name's length), pruned exactly like the task and judged by its own circuit:
    it fails when that circuit meets the target on its test records with at most
    COMPARABLE_FACTOR times the real circuit's nodes (pruning would find such a circuit for anything);
  - `shuffled_labels`: the labels shuffled per record, pruned on the same footing as the real labels
    (node counts chosen on the records the mask was trained on, since shuffled labels can only be
    fitted); it fails when it fits the target with a comparable count;
  - `random_nodes`: random node sets with the circuit's count per site must stay at least halfway
    from the target to chance;
  - `empty_circuit`: every node ablated (bigram table and means alone) must miss the target;
- a circuit is evidence when it is sufficient, necessary and passes every control that was run;
- the effect of ablating each circuit node alone, inside the circuit and in the full model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import schemas
from ..errors import SparseCircuitsError
from ..model.sparse_kernels import sparse_weight_kernels
from ..rundir import Run
from ..schemas import read_json
from ..tasks.nonsense import nonsense_rule
from ..tasks.records import SPLITS, TaskSplits, TokenizedTask, task_loss, task_loss_interval, task_records, tokenize_records
from ..io import atomic_write_text, check_writable, directory_lock
from .circuit import Circuit, records_sha256
from .graph import circuit_edges, weight_edge_count
from .find import CircuitEvaluator, PruneSettings, find_circuit
from .prune import circuit_metrics
from .workbench import Workbench, circuit_workbench

MAX_PER_NODE = 1000  # circuits larger than this skip the per-node ablations
NECESSITY_THRESHOLD = 0.5  # "near chance": ln 2 is 0.69
# A control pruning that fits the target with at most this many times the real task's nodes
# (both chosen on the same footing) makes the circuit "not evidence".
COMPARABLE_FACTOR = 2.0


def shuffled_labels(task: TokenizedTask, seed: int) -> TokenizedTask:
    """The same prompts with correct and incorrect swapped on a random half of the records."""
    rng = random.Random(seed)
    swap = torch.tensor([rng.random() < 0.5 for _ in range(len(task))])
    correct = torch.where(swap, task.incorrect, task.correct)
    incorrect = torch.where(swap, task.correct, task.incorrect)
    return dataclasses.replace(task, name=f"{task.name} (shuffled labels)", correct=correct, incorrect=incorrect)


def random_nodes_threshold(target: float) -> float:
    """Random node sets must stay at least halfway from the target to chance."""
    return target + (math.log(2) - target) / 2


def _fitted(model, splits: TaskSplits, means, settings: PruneSettings, show_progress: bool,
            scores: dict[str, torch.Tensor] | None = None) -> dict:
    found = find_circuit(model, splits, means, settings, show_progress, require_target=False, scores=scores)
    test_logits = found["evaluator"].logits(found["keep"], "test")
    return {"n_nodes": int(sum(k.sum() for k in found["keep"].values())),
            "n_edges": weight_edge_count(circuit_edges(model, found["keep"])),
            "reached_target": found["reached"],
            "loss_fitted": found["loss_choose"],
            "loss_test": found["loss"],
            "loss_test_interval": task_loss_interval(test_logits, settings.seed),
            "full_model_loss_fitted": found["full_loss"]}


def fitting_controls(model, splits: TaskSplits, means, settings: PruneSettings, show_progress: bool = True,
                     scores: dict[str, torch.Tensor] | None = None) -> dict:
    """The task and its shuffled-label twin pruned on the same footing.

    Shuffled labels cannot be predicted on other records, only fitted, so both node counts are
    chosen on the records the mask was trained on (how small a set of nodes can fit the labels),
    and both losses on their test records are shown beside (the shuffled one expected near chance).
    The scan of the ranking does not assume the full model reaches the target. `scores`: the real
    labels' ranking as `prune` learned it (the same training records and settings), so only the
    shuffled labels train a mask."""
    shuffled = shuffled_labels(splits.train, seed=settings.seed)
    return {
        "control_real_fitted": _fitted(model, TaskSplits(splits.train, splits.train, splits.test), means, settings,
                                       show_progress, scores),
        "control_shuffled": _fitted(model, TaskSplits(shuffled, shuffled, shuffled_labels(splits.test, seed=settings.seed + 1)),
                                    means, settings, show_progress),
    }


def nonsense_control(model, task_source: str, means, settings: PruneSettings, show_progress: bool = True) -> dict:
    """The task's prompts under a meaningless rule, pruned with the task's own splits and settings."""
    name, records = task_records(task_source, warn=False)
    try:
        relabelled, rule = nonsense_rule(records)
        splits = TaskSplits(*(tokenize_records(f"{name} (nonsense rule)", split, relabelled[split], model.tokenizer,
                                               model.config.ctx_len, warn=False) for split in SPLITS))
    except (ValueError, SparseCircuitsError) as err:
        return {"rule": None, "skipped": str(err)}
    return {"rule": rule, **_fitted(model, splits, means, settings, show_progress)}


def pruning_controls(model, splits: TaskSplits, task_source: str, means, settings: PruneSettings,
                     show_progress: bool = True, scores: dict[str, torch.Tensor] | None = None) -> dict:
    """The three pruning controls' figures: real and shuffled labels on the same footing, and the
    nonsense rule pruned like the task."""
    return {**fitting_controls(model, splits, means, settings, show_progress, scores),
            "control_nonsense": nonsense_control(model, task_source, means, settings, show_progress)}


def controls(result: dict) -> dict[str, dict]:
    """Each control that was run, with `passed` and a one-line reason. A control fails when it does
    what only a real mechanism should."""
    target, nodes = result["target_loss"], result["n_nodes"]
    random_floor = random_nodes_threshold(target)
    out = {}
    if "control_nonsense" in result:
        fake = result["control_nonsense"]
        if fake.get("rule") is not None:  # else not applicable to these prompts: said by format_validation
            fitted = fake["reached_target"] and fake["loss_test"] <= target
            comparable = fitted and fake["n_nodes"] <= COMPARABLE_FACTOR * max(nodes, 1)
            out["nonsense_rule"] = {
                "passed": not comparable, "n_nodes": fake["n_nodes"], "n_edges": fake["n_edges"],
                "loss_test": fake["loss_test"], "loss_test_interval": fake["loss_test_interval"], "rule": fake["rule"],
                "why": (f"nonsense rule ({fake['rule']}): " + (
                    f"fitted with {fake['n_nodes']} nodes (test loss {fake['loss_test']:.4f}) against {nodes} for the task"
                    + (": pruning fits nonsense as easily" if comparable else "") if fitted
                    else f"not fitted: its best circuit ({fake['n_nodes']} nodes) has test loss {fake['loss_test']:.4f}"))}
    if "control_shuffled" in result:
        fake, real = result["control_shuffled"], result["control_real_fitted"]
        comparable = fake["reached_target"] and fake["n_nodes"] <= COMPARABLE_FACTOR * max(real["n_nodes"], 1)
        out["shuffled_labels"] = {
            "passed": not comparable, "n_nodes": fake["n_nodes"], "n_edges": fake["n_edges"],
            "n_nodes_real_labels": real["n_nodes"], "loss_fitted": fake["loss_fitted"], "loss_test": fake["loss_test"],
            "why": ("shuffled labels: no node count fits the target" if not fake["reached_target"] else
                    f"shuffled labels fitted to the target with {fake['n_nodes']} nodes against {real['n_nodes']}"
                    " for the real labels on the same footing" + (" (comparable: pruning fits noise as easily)"
                                                                     if comparable else ""))}
    loss = result["loss_random_same_size"]
    out["random_nodes"] = {
        "passed": loss >= random_floor, "n_nodes": nodes, "loss": loss, "threshold": round(random_floor, 5),
        "why": f"random nodes, same count per site: loss {loss:.4f} {'at or above' if loss >= random_floor else 'below'}"
               f" {random_floor:.4f}, halfway from the target to chance"}
    loss = result["loss_empty_circuit"]
    out["empty_circuit"] = {
        "passed": loss > target, "n_nodes": 0, "n_edges": 0, "loss": loss,
        "why": f"empty circuit (bigram table and means alone): loss {loss:.4f}"
               + (" above the target" if loss > target else " at or under the target: the task needs no nodes")}
    return out


VALIDATION_FILE = "validation.json"


def stored_ranking(circuit: Circuit, task_source: str) -> dict[str, torch.Tensor] | None:
    """The ranking `prune` learned, when it was learned on these very records (else the controls learn it again)."""
    if circuit.data.get("records_sha256") != records_sha256(task_source):
        return None
    return circuit.scores() if (circuit.directory / "scores.safetensors").is_file() else None


def read_validation(circuit_dir: str | Path) -> dict | None:
    """A circuit's validation.json (None before `validate` ran), checked before use."""
    path = Path(circuit_dir) / VALIDATION_FILE
    return read_json(path, schemas.VALIDATION, "validate the circuit again") if path.is_file() else None


def validate(circuit_dir: str | Path, run: Workbench | Run | str | Path | None = None, control: bool = True,
             show_progress: bool = True, max_per_node: int = MAX_PER_NODE, task: str | Path | None = None,
             device: str = "cpu") -> dict:
    """Sufficiency, necessity, random and shuffled-label controls, and each node's ablation effect
    (skipped above `max_per_node` nodes: such a circuit is not one to read node by node). `device`: where
    the model runs ('cpu', 'cuda' or 'auto'), unless `run` is a workbench."""
    circuit = Circuit.load(circuit_dir)
    check_writable(Path(circuit_dir) / VALIDATION_FILE, "CIRCUIT_DIR")
    bench = circuit_workbench(circuit, run, device)
    task_source = circuit.task_source(task)
    with directory_lock(Path(circuit_dir)):
        return _validate(circuit, bench, task_source, control, show_progress, max_per_node)


def _validate(circuit: Circuit, bench: Workbench, task_source: str, control: bool, show_progress: bool,
              max_per_node: int) -> dict:
    circuit_dir = circuit.directory
    settings = PruneSettings.from_record(circuit.data["settings"], str(circuit.directory / "circuit.json"))
    model = bench.model
    with sparse_weight_kernels(model, settings.csr_max_density):
        splits = bench.splits(task_source)
        means = bench.means(circuit.data["ablation"], circuit.means_data, show_progress)
        evaluator = CircuitEvaluator(model, splits, means, settings.calibration_steps)
        keep = circuit.keep(model)
        scale = circuit.logit_scale
        metrics = circuit_metrics(evaluator, keep, scale, seed=settings.seed + 1)
        target = circuit.data["target_loss"]
        result = {
            "task": circuit.task,
            "target_loss": target,
            "n_nodes": len(circuit.nodes),
            "n_edges": weight_edge_count(circuit.edges),
            **metrics,
            "sufficient": metrics["loss_circuit"] <= target,  # on test records, which no choice has seen
            "necessary": metrics["loss_circuit_ablated"] >= NECESSITY_THRESHOLD,
            "necessity_threshold": NECESSITY_THRESHOLD,
        }
        if control:
            result.update(pruning_controls(model, splits, task_source, means, settings, show_progress,
                                           stored_ranking(circuit, task_source)))
        result["controls"] = controls(result)
        result["evidence"] = result["sufficient"] and result["necessary"] and all(
            c["passed"] for c in result["controls"].values())
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
    atomic_write_text(Path(circuit_dir) / VALIDATION_FILE, json.dumps(result, indent=1))
    return result


def not_evidence_reasons(result: dict) -> list[str]:
    reasons = [] if result["sufficient"] else ["not sufficient"]
    reasons += [] if result["necessary"] else ["not necessary"]
    return reasons + [f"{name} control failed" for name, c in result["controls"].items() if not c["passed"]]


def _interval(interval) -> str:
    return f" (95% interval {interval[0]:.4f}-{interval[1]:.4f})" if interval else ""


def format_validation(result: dict) -> str:
    lines = [f"circuit for {result['task']}: {result['n_nodes']} nodes, {result['n_edges']} weight edges (target loss {result['target_loss']})",
             f"{'check':38s} {'loss':>8s}  verdict"]
    rows = [
        ("full model", result["loss_full_model"], ""),
        ("circuit only (sufficiency)", result["loss_circuit"], ("pass" if result["sufficient"] else "FAIL")
         + _interval(result.get("loss_circuit_interval"))),
        ("circuit only, logit scale calibrated", result["loss_circuit_calibrated"], ""),
        ("circuit ablated (necessity)", result["loss_circuit_ablated"], ("pass" if result["necessary"] else "FAIL")
         + _interval(result.get("loss_circuit_ablated_interval"))),
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
    if result.get("control_nonsense", {}).get("skipped"):
        lines.append(f"  nonsense-rule control not applicable: {result['control_nonsense']['skipped']}")
    elif result.get("control_nonsense", {}).get("rule"):
        c = result["control_nonsense"]
        lines.append(f"  {'nonsense rule':16s} {c['n_nodes']:6d} nodes {c['n_edges']:7d} edges (count chosen on its own"
                     f" choose records), {'reached' if c['reached_target'] else 'missed'} the target: loss"
                     f" {c['loss_test']:.4f} on its test records{_interval(c['loss_test_interval'])}")
    for name, control in result["controls"].items():
        lines.append(f"control {name:15s} {'pass' if control['passed'] else 'FAIL'}  {control['why']}")
    skipped = "" if "control_shuffled" in result else " (nonsense-rule and shuffled-label controls not run)"
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
