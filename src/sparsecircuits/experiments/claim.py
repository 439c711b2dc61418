"""Claim (a) of the paper, drawn as its Fig. 2 draws it: circuit edges of a sparse and a dense model
at a sweep of target losses, each target over the tasks both models do with margin.

One margin rule serves the demo, `compare` and `sweep`: a model does a task with margin at a target
when its full-model loss on the choose records is at most MARGIN x the target; and all three leave
out the tasks `tasks audit` flags (a degenerate cue answers them). A model that only
just reaches the target needs nearly all of itself to keep doing so, which would make its circuit
large for a reason that has nothing to do with sparsity.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..circuits.validate import NECESSITY_THRESHOLD, not_evidence_reasons, random_nodes_threshold

MARGIN = 0.5
CLAIM_TARGETS = (0.15, 0.3, 0.5)  # the paper's Fig. 2 sweeps 0.002 to 0.5


def does_with_margin(loss: float | None, target: float, margin: float = MARGIN) -> bool:
    return loss is not None and math.isfinite(loss) and loss <= margin * target


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values)) if values else None


def claim_tasks(losses: dict[str, dict[str, float | None]], flagged: dict[str, list[str]], target: float,
                margin: float = MARGIN) -> tuple[list[str], dict[str, str]]:
    """The tasks of `losses` ({model: {task: loss}}) every model does with margin at `target` and no
    degenerate cue answers; every other task with the reason it is left out."""
    chosen, excluded = [], {}
    for task in next(iter(losses.values())):
        reasons = [f"{model} loss {'n/a' if by_task.get(task) is None else f'{by_task[task]:.3f}'} >"
                   f" {margin * target:g}" for model, by_task in losses.items()
                   if not does_with_margin(by_task.get(task), target, margin)]
        if flagged.get(task):
            reasons.append(f"flagged by `tasks audit` ({', '.join(flagged[task])})")
        if reasons:
            excluded[task] = "; ".join(reasons)
        else:
            chosen.append(task)
    return chosen, excluded


def flagged_by_audit(models: list, names: list[str]) -> dict[str, list[str]]:
    """{task: degenerate cues} for the tasks `tasks audit` flags under any of `models` (their tokenizers
    and bigram tables). A flagged task is left out of every claim: demo, compare and sweep alike."""
    from ..tasks.audit import audit_task

    flagged = {}
    for name in names:  # tasks the models have already been scored on, so each one loads
        cues = sorted({cue for model in models for cue in audit_task(name, model)["flagged"]})
        if cues:
            flagged[name] = cues
    return flagged


def circuit_is_evidence(metrics: dict, target: float, validation: dict | None = None) -> tuple[bool, list[str]]:
    """Evidence from `validate`'s verdict when there is one; else from the figures every circuit carries
    (sufficient, necessary, random nodes and the empty circuit beaten), without the pruning controls."""
    if validation is not None:
        return validation["evidence"], not_evidence_reasons(validation)
    reasons = []
    if metrics["loss_circuit"] > target:
        reasons.append("not sufficient")
    if metrics["loss_circuit_ablated"] < NECESSITY_THRESHOLD:
        reasons.append("not necessary")
    if metrics["loss_random_same_size"] < random_nodes_threshold(target):
        reasons.append("random_nodes control failed")
    if metrics["loss_empty_circuit"] <= target:
        reasons.append("empty_circuit control failed")
    return not reasons, reasons


def claim_rows(circuits: dict[str, dict[str, dict]], sparse: str, dense: str, target: float) -> dict:
    """Per-task edges and ratios at one target over the tasks whose circuits in both models are evidence.

    `circuits[model][task]`: {"edges", "nodes", "evidence", "why"} for the tasks chosen at this target."""
    rows, excluded = {}, {}
    for task, s in circuits[sparse].items():
        d = circuits[dense].get(task)
        if d is None:
            continue
        reasons = [f"{model} circuit not evidence ({', '.join(c['why'])})" for model, c in ((sparse, s), (dense, d))
                   if not c["evidence"]]
        if reasons:
            excluded[task] = "; ".join(reasons)
            continue
        rows[task] = {"sparse_edges": s["edges"], "dense_edges": d["edges"], "sparse_nodes": s["nodes"],
                      "dense_nodes": d["nodes"], "edges_ratio": d["edges"] / max(s["edges"], 1),
                      "nodes_ratio": d["nodes"] / max(s["nodes"], 1)}
    sparse_mean = geomean([r["sparse_edges"] for r in rows.values()])
    dense_mean = geomean([r["dense_edges"] for r in rows.values()])
    return {"target_loss": target, "tasks": rows, "count": len(rows), "excluded": excluded,
            "edges_geomean": {"sparse": sparse_mean, "dense": dense_mean},
            "edges_ratio_geomean": dense_mean / sparse_mean if rows else None}


def plot_claim(path: Path, comparisons: dict[str, list[dict]]) -> None:
    """Geometric-mean edges against target loss, one line per model and comparison (paper Fig. 2)."""
    from ..plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = iter([("#2463eb", "-"), ("#9ca3af", "-"), ("#2463eb", "--"), ("#6b7280", "--")])
    drawn = 0
    for label, per_target in comparisons.items():
        points = [(c["target_loss"], c["edges_geomean"], c["count"]) for c in per_target if c["count"]]
        for model in ("sparse", "dense"):
            color, line = next(styles)
            if points:
                ax.plot([p[1][model] for p in points], [p[0] for p in points], marker="o", color=color, ls=line,
                        label=f"{model} ({label})")
                drawn += 1
        for target, means, count in points:
            ax.annotate(f"{count} tasks", (means["dense"], target), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if not drawn:
        ax.text(0.5, 0.5, "no task both models do with margin\nhas an evidence circuit in both",
                ha="center", va="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("circuit edges (geometric mean over common tasks)")
    ax.set_ylabel("target task loss")
    ax.set_title("Claim (a): circuit size at each target")
    save(fig, path)
