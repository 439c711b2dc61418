"""`sparsecircuits evolve`: one task pruned at every model kept during a run's training
(`train.keep_every`), to watch its circuit form.

DIR/step_NNNNNN/ holds each checkpoint's circuit (pruned with the same settings, node means over
that checkpoint's own weights, validated); DIR/evolution.json the rows and the overlap of
consecutive circuits; DIR/evolution.png the curves; DIR/evolution.html the circuits side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..circuits.circuit import Circuit
from ..circuits.find import NoCircuitToFind
from ..circuits.prune import PruneSettings, prune_or_reuse
from ..circuits.validate import read_validation, validate
from ..circuits.workbench import Workbench
from ..errors import SparseCircuitsError
from ..io import atomic_write_text, check_not_an_input, output_folder
from ..model.sparsity import count_nonzeros, sparse_parameters
from ..plots import pyplot, save
from ..rundir import Run, as_run
from ..tasks import evaluate_task
from ..viewer.evolution import write_evolution_page

EVOLUTION_FILE = "evolution.json"


def node_names(nodes: list[dict]) -> set[str]:
    return {f"{n['site']}:{n['index']}" for n in nodes}


def overlap(before: set[str], after: set[str]) -> dict:
    """How two consecutive circuits' node sets compare: Jaccard index, nodes that entered and left."""
    union = before | after
    return {"jaccard": len(before & after) / len(union) if union else 1.0,
            "entered": sorted(after - before), "left": sorted(before - after), "kept": len(before & after)}


def checkpoint_row(view: Run, task: str, circuit_dir: Path, settings: PruneSettings, control: bool,
                   show_progress: bool, device: str = "cpu") -> dict:
    """One kept checkpoint: its losses and L0, and its circuit for `task` when the model does it."""
    bench = Workbench(view, device)
    model = bench.model
    nonzero, total = count_nonzeros(sparse_parameters(model, view.config.sparsity))
    row = {"step": view.step, "val_loss": view.kept["val_loss"], "l0_fraction": nonzero / max(total, 1)}
    try:
        circuit = prune_or_reuse(bench, task, circuit_dir, settings, show_progress)
    except NoCircuitToFind as err:  # the full model misses the target, or the empty circuit meets it
        loss = evaluate_task(model, bench.splits(task).test)["loss"]
        return {**row, "task_loss": loss, "reached": False, "n_nodes": None, "n_edges": None, "loss_circuit": None,
                "controls": None, "evidence": False, "why": str(err)}
    # prune_or_reuse kept the circuit, so its validation stands if it ran the controls asked for
    validation = read_validation(circuit_dir)
    if validation is None or (control and "control_shuffled" not in validation):
        validation = validate(circuit_dir, bench, control=control, show_progress=show_progress)
    m = circuit.metrics
    return {**row, "task_loss": m["loss_full_model"], "reached": bool(validation["sufficient"]),
            "n_nodes": m["n_nodes"], "n_edges": m["n_edges"], "loss_circuit": m["loss_circuit"],
            "controls": {name: c["passed"] for name, c in validation["controls"].items()},
            "evidence": bool(validation["evidence"]), "circuit": circuit_dir.name}


def evolve(run: Run | str | Path, task: str, out: str | Path, settings: PruneSettings | None = None,
           steps: list[int] | None = None, control: bool = True, show_progress: bool = True, device: str = "cpu") -> dict:
    """Prune `task` at every kept checkpoint of `run` (or at `steps`), validate each circuit, and
    write DIR/evolution.json, .png and .html. Resumable: circuits of the same weights, records and
    settings are reused. Returns what evolution.json holds: `checkpoints` (one row per checkpoint,
    in step order) and `transitions` (between consecutive checkpoints that both reached the target).
    `device`: where the models run ('cpu', 'cuda' or 'auto')."""
    run = as_run(run)
    settings = settings or PruneSettings()
    settings.validate()
    kept = run.kept_steps()
    if not kept:
        raise SparseCircuitsError(f"{run.path} kept no models during training: train it with --set train.keep_every=N"
                                  " (steps between kept models) to watch circuits form")
    missing = sorted(set(steps or []) - set(kept))
    if missing:
        raise SparseCircuitsError(f"--steps {missing[0]} is not a kept step of {run.path}: choose from"
                                  f" {', '.join(map(str, kept))}")
    check_not_an_input(out, [("the run", run.path), ("the task file", task if Path(task).is_file() else None)])
    out = output_folder(Path(out))
    rows = []
    for step in sorted(set(steps or kept)):
        if show_progress:
            print(f"[evolve] step {step}", file=sys.stderr, flush=True)
        rows.append(checkpoint_row(run.at_step(step), task, out / f"step_{step:06d}", settings, control, show_progress,
                                   device))
    nodes = {row["step"]: node_names(Circuit.load(out / row["circuit"]).nodes) for row in rows if row["reached"]}
    transitions = [{"from_step": a["step"], "to_step": b["step"], **overlap(nodes[a["step"]], nodes[b["step"]])}
                   for a, b in zip(rows, rows[1:]) if a["reached"] and b["reached"]]
    result = {"run": str(run.path.resolve()), "task": task, "target_loss": settings.target_loss,
              "train_steps": run.config.train.steps, "anneal": [run.config.sparsity.anneal_start, run.config.sparsity.anneal_end],
              "checkpoints": rows, "transitions": transitions}
    atomic_write_text(out / EVOLUTION_FILE, json.dumps(result, indent=1))
    plot_evolution(result, out / "evolution.png")
    write_evolution_page(result, out, out / "evolution.html", run.config.model.d_model)
    return result


def plot_evolution(result: dict, path: Path) -> None:
    """Task and validation loss, circuit nodes and edges against step, the L0 annealing window shaded."""
    plt = pyplot()
    rows = result["checkpoints"]
    steps = [r["step"] for r in rows]
    fig, (losses, sizes) = plt.subplots(1, 2, figsize=(11, 4))
    losses.plot(steps, [r["task_loss"] for r in rows], "o-", label="task loss (full model, test records)")
    losses.plot(steps, [r["val_loss"] for r in rows], "s-", label="validation loss (nats/token)")
    losses.axhline(result["target_loss"], color="k", linestyle=":", label=f"target {result['target_loss']:g}")
    losses.set_yscale("log")
    losses.set_title(f"{Path(result['task']).stem}: losses")
    reached = [r for r in rows if r["reached"]]
    sizes.plot([r["step"] for r in reached], [r["n_nodes"] for r in reached], "o-", label="circuit nodes")
    sizes.plot([r["step"] for r in reached], [r["n_edges"] for r in reached], "s-", label="circuit edges")
    if reached:
        sizes.set_yscale("log")
    else:
        sizes.text(0.5, 0.5, f"no checkpoint reached the target {result['target_loss']:g}", ha="center",
                   transform=sizes.transAxes)
    sizes.set_title("circuit size (checkpoints that reach the target)")
    start, end = (x * result["train_steps"] for x in result["anneal"])
    for ax in (losses, sizes):
        ax.axvspan(start, end, color="0.9", label="L0 annealing")
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    save(fig, path)


def format_evolution(result: dict) -> str:
    lines = [f"{Path(result['task']).stem} over {len(result['checkpoints'])} kept checkpoints (target {result['target_loss']:g}):",
             f"{'step':>7s} {'val':>7s} {'L0':>7s} {'task':>7s} {'nodes':>6s} {'edges':>6s} {'circuit':>8s}  evidence"]
    for r in result["checkpoints"]:
        if r["reached"] or r["n_nodes"] is not None:
            tail = f"{r['n_nodes']:6d} {r['n_edges']:6d} {r['loss_circuit']:8.4f}  {'yes' if r['evidence'] else 'no'}"
        else:
            tail = f"{'-':>6s} {'-':>6s} {'-':>8s}  not reached: the full model misses the target"
        lines.append(f"{r['step']:7d} {r['val_loss']:7.4f} {r['l0_fraction']:7.4f} {r['task_loss']:7.4f} {tail}")
    for t in result["transitions"]:
        lines.append(f"step {t['from_step']} -> {t['to_step']}: Jaccard {t['jaccard']:.2f}, {t['kept']} kept,"
                     f" {len(t['entered'])} entered, {len(t['left'])} left")
    if not any(r["reached"] for r in result["checkpoints"]):
        lines.append("no checkpoint has a circuit that reaches the target: the model never does the task that well")
    return "\n".join(lines)
