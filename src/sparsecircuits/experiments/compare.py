"""`sparsecircuits compare RUN_A RUN_B`: circuit edges at a sweep of target losses for two models
(paper Fig. 2), as a PNG plot and a CSV. At each target only the tasks both models do with margin
(`claim.MARGIN`, the rule the demo and sweep use) are pruned, each with a mask trained to that target;
tasks `tasks audit` flags are left out, as in the demo's claim (a).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..circuits.circuit import ablation_values, load_task_splits
from ..circuits.graph import circuit_edges, weight_edge_count
from ..circuits.find import PruneSettings, find_circuit
from ..errors import SparseCircuitsError
from ..io import atomic_write_csv, output_folder
from ..plots import pyplot, save
from ..rundir import Run, as_run
from ..tasks import BUILTIN_TASKS, evaluate_task
from .claim import MARGIN, does_with_margin, flagged_by_audit, geomean

DEFAULT_TARGETS = (0.5, 0.3, 0.15, 0.05)


def compare(run_a: Run | str | Path, run_b: Run | str | Path, out: str | Path, tasks: list[str] | None = None,
            targets: tuple[float, ...] = DEFAULT_TARGETS, margin: float = MARGIN, keep_flagged: bool = False,
            show_progress: bool = True, device: str = "cpu") -> list[dict]:
    """Circuit weight edges against target loss for two runs (`sparsecircuits compare`): each task both
    do with margin pruned at every target, rows written to OUT as CSV and PNG and returned. `device`: where
    the models run ('cpu', 'cuda' or 'auto')."""
    out = output_folder(out)
    runs = [as_run(run_a), as_run(run_b)]
    labels = [r.path.name if r.path.name != runs[1 - i].path.name else str(r.path) for i, r in enumerate(runs)]
    models = [r.model(device) for r in runs]
    candidates = tasks or list(BUILTIN_TASKS)
    losses: dict[str, list[float]] = {}
    for name in candidates:
        losses[name] = []
        for model in models:
            try:
                losses[name].append(evaluate_task(model, load_task_splits(model, name).choose)["loss"])  # never test
            except SparseCircuitsError:
                losses[name].append(float("inf"))
    done = [name for name, pair in losses.items() if all(does_with_margin(x, max(targets), margin) for x in pair)]
    flagged = {} if keep_flagged else flagged_by_audit(models, done)  # audited only where it would be compared
    for name, cues in flagged.items():
        print(f"left out {Path(name).stem}: flagged by `tasks audit` ({', '.join(cues)})", file=sys.stderr)
    chosen = {t: [name for name, pair in losses.items()
                  if name not in flagged and all(does_with_margin(x, t, margin) for x in pair)] for t in targets}
    if not any(chosen.values()):
        also = f" (flagged by `tasks audit`, left out: {', '.join(Path(n).stem for n in flagged)})" if flagged else ""
        raise SparseCircuitsError(f"no task is done by both models to loss <= {margin:g} x any target{also}:"
                                  " nothing to compare")
    rows = []
    for label, run, model in zip(labels, runs, models):
        means = ablation_values(model, run, "mean", show_progress)
        for target in sorted(targets, reverse=True):
            for name in chosen[target]:
                splits = load_task_splits(model, name)
                result = find_circuit(model, splits, means, PruneSettings(target_loss=target), show_progress,
                                      require_target=False)
                if not result["reached"]:
                    continue
                rows.append({"model": label, "task": splits.name, "target_loss": target,
                             "loss_choose": round(result["loss_choose"], 5),  # what met the goal
                             "loss": round(result["loss"], 5), "loss_calibrated": round(result["loss_calibrated"], 5),
                             "nodes": int(sum(k.sum() for k in result["keep"].values())),
                             "edges": weight_edge_count(circuit_edges(model, result["keep"]))})
                if show_progress:
                    print(f"{label} {name} at {target}: {rows[-1]['edges']} edges", file=sys.stderr)
    if not rows:
        raise SparseCircuitsError("no circuit met its target in either model: nothing to compare")
    atomic_write_csv(out / "compare.csv", rows, list(rows[0]))
    plot_compare(out / "compare.png", rows, labels, targets)
    return rows


def common_tasks(rows: list[dict], target: float) -> set[str]:
    """The tasks whose circuits reached this target in every compared model."""
    labels = {r["model"] for r in rows}
    reached = [{r["task"] for r in rows if r["model"] == label and r["target_loss"] == target} for label in labels]
    return set.intersection(*reached) if reached else set()


def geomean_edges(rows: list[dict], label: str, target: float) -> float | None:
    """Geometric mean of edges over the tasks that every model reached at this target: a mean over
    different task sets would compare tasks, not models."""
    common = common_tasks(rows, target)
    edges = [r["edges"] for r in rows if r["model"] == label and r["target_loss"] == target and r["task"] in common]
    return geomean(edges) if edges else None


def plot_compare(path: Path, rows: list[dict], labels: list[str], targets: tuple[float, ...]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, color in zip(labels, ("#2463eb", "#9ca3af")):
        for task in sorted({r["task"] for r in rows}):
            points = sorted((r["edges"], r["target_loss"]) for r in rows if r["model"] == label and r["task"] == task)
            if points:
                ax.plot(*zip(*points), color=color, alpha=0.3, lw=1)
        means = [(geomean_edges(rows, label, t), t) for t in sorted(targets)]
        means = [(e, t) for e, t in means if e is not None]
        if means:
            ax.plot(*zip(*means), color=color, lw=2.5, marker="o", label=f"{label} (geometric mean over tasks)")
    ax.set_xscale("log")
    ax.set_xlabel("circuit edges")
    ax.set_ylabel("target task loss")
    ax.set_title("Task loss vs circuit size")
    ax.legend(fontsize=8)
    save(fig, path)
