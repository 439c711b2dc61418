"""`sparsecircuits demo`: corpus -> a weight-sparse and a dense model -> task circuits -> validation -> report.

Every stage writes into DIR and is skipped when its output is already there, so an interrupted
demo continues where it stopped. The dense model has the sparse model's shape and activation
sparsity, with weight sparsity off; it is trained with the same recipe and stopped at the first
evaluation where its validation loss reaches the sparse model's, so the two are compared at
matched pretraining loss.
"""

from __future__ import annotations

import html
import json
import math
import sys
import time
from pathlib import Path

from ..circuits.labels import LABELS_FILE, label_run, read_labels
from ..circuits.validate import not_evidence_reasons
from ..config import load_config
from ..data.prepare import MANIFEST, prepare
from ..io import atomic_write_text, output_folder
from .plots import pyplot, save
from ..model.gpt import SparseGPT
from ..rundir import METRICS_FILE, MODEL_FILE, file_sha256
from ..tasks import BUILTIN_TASKS
from ..tasks.audit import score_tasks
from ..train.evaluation import evaluate_run
from ..train.trainer import train_or_continue

MODELS = ("sparse", "dense")
PAIR_MINUTES = 2.0  # pruning + validating + drawing one task on one small model, measured on 2 CPU cores


class Stages:
    """Prints each stage with the time spent so far and the time left against the budget."""

    def __init__(self, names: list[str], budget_s: float | None = None):
        self.names, self.budget_s, self.start = names, budget_s, time.perf_counter()
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn):
        elapsed = time.perf_counter() - self.start
        left = "" if self.budget_s is None else f", about {max(0.0, self.budget_s - elapsed) / 60:.1f} min of the budget left"
        print(f"[{self.names.index(name) + 1}/{len(self.names)}] {name}  (elapsed {elapsed / 60:.1f} min{left})",
              file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - started, 1)
        return result


def _last_val_loss(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return [r["val_loss"] for r in records if "val_loss" in r][-1]


def _train_stage(config_name: str, overrides: list[str], data_dir: Path, run_dir: Path,
                 stop_at_val_loss: float | None = None) -> None:
    train_or_continue(load_config(config_name, overrides), data_dir, run_dir, stop_at_val_loss=stop_at_val_loss)


def _task_table(run_dir: Path, tasks: list[str]) -> dict[str, dict]:
    """Each task's loss on its choose records, and which trivial cues answer it (`tasks audit`,
    with this run's tokenizer and bigram table)."""
    return score_tasks(SparseGPT.from_pretrained(run_dir), tasks, "choose")


MARGIN = 0.5  # a task counts for the comparison when both full models do it to half the target loss


def choose_tasks(task_losses: dict[str, dict[str, dict]], target: float, limit: int | None,
                 margin: float = MARGIN) -> tuple[list[str], dict[str, str]]:
    """Tasks both models do with margin (loss <= MARGIN * target), those both do best first, and
    every other task with the reason it was left out. A model that only just reaches the target
    needs nearly all of itself to keep doing so, which would make its circuit large for a reason
    that has nothing to do with sparsity."""
    threshold = margin * target
    chosen, excluded = [], {}
    for task in task_losses["sparse"]:
        reasons = []
        for model in MODELS:
            row = task_losses[model].get(task, {})
            if "loss" not in row:
                reasons.append(f"{model}: {row.get('error', 'not evaluated')}")
            elif row["loss"] > threshold:
                reasons.append(f"{model} loss {row['loss']:.3f} > {threshold:g}")
        if reasons:
            excluded[task] = "; ".join(reasons)
        else:
            chosen.append(task)
    chosen.sort(key=lambda t: max(task_losses[m][t]["loss"] for m in MODELS))
    if limit and len(chosen) > limit:
        excluded.update({t: f"over --max-tasks {limit}" for t in chosen[limit:]})
        chosen = chosen[:limit]
    return chosen, excluded


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values)) if values else float("nan")


def demo(out: str | Path, minutes: float = 30.0, tasks: str | list[str] = "auto", max_tasks: int = 6,
         target_loss: float = 0.15, config: str = "small", overrides: list[str] | None = None,
         corpus: list[str] | None = None, control: bool = True, margin: float = MARGIN,
         dense_set: list[str] | None = None) -> dict:
    """`dense_set`: overrides for the dense model alone, after the shared ones (another width, more
    steps): the paper compares a sparse model with a smaller dense one at matched pretraining loss."""
    from ..circuits import PruneSettings, validate
    from ..circuits.circuit import prune_or_reuse
    from ..viewer import view

    out = output_folder(out)
    overrides = list(overrides or [])
    base_steps = load_config(config, overrides).train.steps
    steps = max(50, round(base_steps * minutes / 30.0))  # the default budget is sized for 30 minutes
    overrides.append(f"train.steps={steps}")
    dense_overrides = overrides + ["sparsity.l0_fraction=1.0", f"train.eval_interval={max(10, steps // 36)}"] + list(dense_set or [])
    load_config(config, dense_overrides)  # a bad --dense-set fails now, not after the sparse model has trained
    names = ["prepare corpus", "train sparse model", "train dense model", "evaluate tasks", "prune circuits",
             "validate circuits", "label circuit nodes", "view circuits", "report"]
    stages = Stages(names, minutes * 60)
    data_dir = out / "data"

    if not (data_dir / MANIFEST).is_file():
        stages.run("prepare corpus", lambda: prepare(data_dir, corpus=corpus, force=True))
    stages.run("train sparse model", lambda: _train_stage(config, overrides, data_dir, out / "sparse"))
    sparse_val = _last_val_loss(out / "sparse")
    stages.run("train dense model", lambda: _train_stage(config, dense_overrides, data_dir, out / "dense", sparse_val))

    candidates = list(BUILTIN_TASKS) if tasks in ("auto", "all") else list(tasks)
    task_losses = stages.run("evaluate tasks", lambda: {m: _task_table(out / m, candidates) for m in MODELS})
    atomic_write_text(out / "tasks.json", json.dumps(task_losses, indent=1))
    chosen, excluded = choose_tasks(task_losses, target_loss, max_tasks if tasks == "auto" else None, margin)
    if tasks == "auto":  # keep to the budget: each task costs about PAIR_MINUTES per model
        left = minutes - (time.perf_counter() - stages.start) / 60
        affordable = max(1, int(left // (PAIR_MINUTES * len(MODELS))))
        if len(chosen) > affordable:
            print(f"pruning {affordable} of {len(chosen)} tasks to stay within --minutes {minutes:g}", file=sys.stderr)
            excluded.update({t: f"over the --minutes {minutes:g} budget" for t in chosen[affordable:]})
            chosen = chosen[:affordable]
    print(f"{len(chosen)} of {len(candidates)} tasks done by both models to loss <= {margin * target_loss:g}"
          f" ({margin:g} x the target): {', '.join(chosen) or 'none'}", file=sys.stderr)
    for task, reason in excluded.items():
        print(f"  left out {task}: {reason}", file=sys.stderr)
    for task in chosen:
        flagged = task_losses["sparse"][task].get("audit_flagged")
        if flagged:
            print(f"  note: a trivial cue answers {task} ({', '.join(flagged)}; see `sparsecircuits tasks audit`)",
                  file=sys.stderr)

    def circuit_dir(model: str, task: str) -> Path:
        return out / "circuits" / model / Path(task).stem

    def prune_all():
        for task in chosen:
            for model in MODELS:  # a circuit of other weights, records or settings is pruned again
                prune_or_reuse(out / model, task, circuit_dir(model, task), PruneSettings(target_loss=target_loss))

    def validate_all():
        for task in chosen:
            for model in MODELS:
                if not (circuit_dir(model, task) / "validation.json").is_file():
                    validate(circuit_dir(model, task), control=control)

    def label_all():
        weights = {model: file_sha256(out / model / MODEL_FILE) for model in MODELS}  # hashed once per model
        for task in chosen:
            for model in MODELS:
                directory = circuit_dir(model, task)
                if read_labels(directory, weights[model]) is None:
                    label_run(out / model, circuit_dir=directory)

    def view_all():
        for task in chosen:
            for model in MODELS:
                if not (circuit_dir(model, task) / "circuit.html").is_file():
                    view(circuit_dir(model, task))

    stages.run("prune circuits", prune_all)
    stages.run("validate circuits", validate_all)
    stages.run("label circuit nodes", label_all)
    stages.run("view circuits", view_all)
    summary = stages.run("report", lambda: write_report(out, chosen, excluded, task_losses, circuit_dir, target_loss, margin))
    summary["seconds_by_stage"] = stages.seconds
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print(format_summary(summary))
    return summary


def write_report(out: Path, chosen: list[str], excluded: dict[str, str], task_losses: dict, circuit_dir,
                 target_loss: float, margin: float) -> dict:
    per_task = {}
    for task in chosen:
        row = {}
        for model in MODELS:
            directory = circuit_dir(model, task)
            circuit = json.loads((directory / "circuit.json").read_text())
            validation = json.loads((directory / "validation.json").read_text())
            labels = json.loads((directory / LABELS_FILE).read_text())["nodes"]
            row[model] = {
                "nodes_labelled": sum(bool(n["labels"]) for n in labels),
                "nodes_labelled_above_baseline": sum(bool(n["labels"]) and n["labels"][0].get("beats_baseline", True)
                                                     for n in labels),
                "task_loss": task_losses[model][task]["loss"],
                "nodes": circuit["metrics"]["n_nodes"], "edges": circuit["metrics"]["n_edges"],
                "loss_circuit": validation["loss_circuit"],
                "loss_circuit_calibrated": validation["loss_circuit_calibrated"],
                "loss_circuit_ablated": validation["loss_circuit_ablated"],
                "loss_random_same_size": validation["loss_random_same_size"],
                "loss_empty_circuit": validation["loss_empty_circuit"],
                "real_fitted": _twin(validation.get("control_real_fitted")),
                "shuffled_fitted": _twin(validation.get("control_shuffled")),
                "evidence": validation["evidence"],
                "failed": not_evidence_reasons(validation),
                "page": str((directory / "circuit.html").relative_to(out)),
            }
        row["edges_ratio"] = row["dense"]["edges"] / max(row["sparse"]["edges"], 1)
        row["audit_flagged"] = task_losses["sparse"][task].get("audit_flagged", [])
        per_task[Path(task).stem] = row
    summary = {
        "target_loss": target_loss,
        "margin_loss": margin * target_loss,
        "models": {m: {"val_loss": evaluate_run(out / m)["val_loss"], "run_dir": m} for m in MODELS},
        "tasks": per_task,
        "excluded_tasks": excluded,
        "task_losses": task_losses,
    }
    sparse_edges = [r["sparse"]["edges"] for r in per_task.values()]
    dense_edges = [r["dense"]["edges"] for r in per_task.values()]
    summary["edges_geomean"] = {"sparse": geomean(sparse_edges), "dense": geomean(dense_edges)}
    summary["edges_ratio_geomean"] = (summary["edges_geomean"]["dense"] / summary["edges_geomean"]["sparse"]
                                      if per_task else None)
    plot_edges(out / "edges.png", per_task)
    atomic_write_text(out / "report.html", render_report(summary))
    return summary


def _twin(control: dict | None) -> dict | None:
    """Nodes and edges of a same-footing pruning (count chosen on the fitted records), if one was run."""
    if control is None:
        return None
    return {k: control[k] for k in ("n_nodes", "n_edges", "reached_target", "loss_fitted", "loss_test")}


def plot_edges(path: Path, per_task: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(per_task) + 2), 3.6))
    names = list(per_task)
    for offset, model, color in ((-0.2, "sparse", "#2463eb"), (0.2, "dense", "#9ca3af")):
        ax.bar([i + offset for i in range(len(names))], [per_task[t][model]["edges"] for t in names], width=0.4,
               label=f"{model} model", color=color)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("circuit edges")
    ax.set_title("Circuit size at matched pretraining loss")
    ax.legend()
    save(fig, path)


def _controls_cell(x: dict) -> str:
    """'real 12 / shuffled 40 (missed)': same-footing node counts, and what the shuffled twin did."""
    real, fake = x["real_fitted"], x["shuffled_fitted"]
    if real is None or fake is None:
        return "not run"
    return f"real {real['n_nodes']} / shuffled {fake['n_nodes']}{'' if fake['reached_target'] else ' (missed)'}"


def _labelled_cell(x: dict) -> str:
    """'12/40 = 30% (9)': nodes with a Python concept above threshold, and how many beat the baseline."""
    if "nodes_labelled" not in x:
        return "-"
    return (f"{x['nodes_labelled']}/{x['nodes']} = {x['nodes_labelled'] / max(x['nodes'], 1):.0%}"
            f" ({x['nodes_labelled_above_baseline']})")


def _evidence_cell(x: dict) -> str:
    return "yes" if x["evidence"] else "NO: " + ", ".join(x["failed"])


def render_report(summary: dict) -> str:
    e = html.escape
    rows = []
    for task, r in summary["tasks"].items():
        cells = [f"<td>{e(task)}</td>"]
        for m in MODELS:
            x = r[m]
            cells += [f"<td class=num>{x['task_loss']:.4f}</td>", f"<td class=num><a href='{e(x['page'])}'>{x['nodes']}</a></td>",
                      f"<td class=num>{x['edges']}</td>", f"<td class=num>{x['loss_circuit']:.4f}</td>",
                      f"<td class=num>{x['loss_circuit_ablated']:.4f}</td>", f"<td>{e(_controls_cell(x))}</td>",
                      f"<td class=num>{_labelled_cell(x)}</td>",
                      f"<td>{e(_evidence_cell(x))}</td>"]
        cells.append(f"<td class=num>{r['edges_ratio']:.2f}</td>")
        cells.append(f"<td>{e(', '.join(r['audit_flagged']) or 'none')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{m} {h}</th>" for m in MODELS for h in ("task loss", "nodes", "edges", "circuit loss", "ablated loss",
                                                                  "nodes fitted: real / shuffled labels",
                                                                  "nodes labelled (above shuffled baseline)", "evidence"))
    head += "<th>edges dense / sparse</th><th>trivial cue above 70% (tasks audit)</th>"
    losses = "".join(
        f"<tr><td>{e(t)}</td>" + "".join(f"<td class=num>{summary['task_losses'][m][t].get('loss', float('nan')):.4f}</td>" for m in MODELS) + "</tr>"
        for t in summary["task_losses"]["sparse"])
    excluded = "".join(f"<li>{e(t)}: {e(why)}</li>" for t, why in summary["excluded_tasks"].items())
    ratio = summary["edges_ratio_geomean"]
    models = ", ".join(f"{m} validation loss {summary['models'][m]['val_loss']:.4f}" for m in MODELS)
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sparsecircuits demo report</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#1d232a}}table{{border-collapse:collapse;margin:6px 0 16px}}
th,td{{border:1px solid #ddd;padding:3px 8px}}td.num{{text-align:right;font-variant-numeric:tabular-nums}}</style></head><body>
<h1>Weight-sparse vs dense circuits</h1>
<p>{e(models)}. Target task loss {summary['target_loss']}; a task counts when both full models do it to
{summary['margin_loss']:g} ({summary['margin_loss'] / summary['target_loss']:g} x the target), so that neither circuit is large only because its model barely does the task.</p>
<p>Geometric mean of circuit edges: sparse {summary['edges_geomean']['sparse']:.1f}, dense {summary['edges_geomean']['dense']:.1f};
dense / sparse = <b>{'n/a' if ratio is None else f'{ratio:.2f}'}</b> over {len(summary['tasks'])} tasks.</p>
<h2>Circuits (click a node count for the circuit page)</h2>
<p>"Nodes fitted" prunes the real and the shuffled labels on the same footing (node count chosen on the records the
mask was trained on); a circuit whose shuffled-label twin fits the target with a comparable count is not evidence.</p>
<table><tr><th>task</th>{head}</tr>{''.join(rows)}</table>
<img src="edges.png" alt="circuit edges per task">
<h2>Tasks left out ({len(summary['excluded_tasks'])})</h2>
<ul>{excluded}</ul>
<h2>Task losses of both models (held-out records)</h2>
<table><tr><th>task</th><th>sparse</th><th>dense</th></tr>{losses}</table>
</body></html>"""


def format_summary(summary: dict) -> str:
    lines = [f"{'task':24s} {'sparse loss':>11s} {'nodes':>6s} {'edges':>6s} {'dense loss':>10s} {'nodes':>6s} {'edges':>6s}"
             f" {'ratio':>6s}  sparse nodes fitted (real / shuffled labels), evidence"]
    for task, r in summary["tasks"].items():
        s, d = r["sparse"], r["dense"]
        lines.append(f"{task:24s} {s['task_loss']:11.4f} {s['nodes']:6d} {s['edges']:6d} {d['task_loss']:10.4f} {d['nodes']:6d}"
                     f" {d['edges']:6d} {r['edges_ratio']:6.2f}  {_controls_cell(s)}, {_evidence_cell(s)},"
                     f" labelled {_labelled_cell(s)}"
                     + (f"; trivial cue: {', '.join(r['audit_flagged'])}" if r["audit_flagged"] else ""))
    ratio = summary["edges_ratio_geomean"]
    lines.append("validation loss: " + ", ".join(f"{m} {summary['models'][m]['val_loss']:.4f}" for m in MODELS))
    lines.append(f"edges_ratio_geomean (dense / sparse): {'n/a' if ratio is None else f'{ratio:.2f}'} over"
                 f" {len(summary['tasks'])} tasks both models do to loss <= {summary['margin_loss']:g};"
                 f" {len(summary['excluded_tasks'])} left out (see report.html)")
    return "\n".join(lines)
