"""`sparsecircuits demo`: corpus -> a weight-sparse model and dense baselines -> task circuits ->
validation -> claim (a) -> report.

Every stage writes into DIR and is skipped when its output is already there, so an interrupted
demo continues where it stopped. The models:

- `sparse`: the config as given (weight-sparse);
- `dense`: the same shape and activation sparsity with dense weights, trained on the same tokens
  with its full schedule. It reaches a lower loss than the sparse model: a stronger baseline, so a
  circuit-size ratio against it is conservative;
- `dense_matched`: the same dense model trained with a finished schedule (warmup and decay to 0)
  of as many steps as the `dense` run took to reach the sparse model's validation loss. A finished
  schedule ends lower than the same step of a longer one, so it usually lands below the sparse loss;
- `dense_steps{N}`: finished schedules of other lengths (halved, or doubled, from `dense_matched`'s)
  until two of them bracket the sparse model's validation loss. Claim (a) at the sparse model's
  loss interpolates log edges between the bracketing pair, the paper's comparison.

Every task the sparse model does to the target gets its circuit, validated (with all four
controls), labelled and drawn, with its loss on the task's hard forms. Claim (a) is then drawn at
each of `claim_targets` against the dense model at the sparse loss (bracketed) and the stronger
`dense`, over the tasks every model does with margin (`claim.MARGIN`) and the audit does not flag,
each circuit the best of `claim_seeds` pruning seeds; which tasks count is decided on the choose
records, and every circuit claim (a) uses is validated as the main circuits are.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import sys
import time
from pathlib import Path

from ..circuits.circuit import Circuit
from ..circuits.find import NoCircuitToFind
from ..circuits.labels import label_run, read_labels
from ..circuits.prune import TARGET_LOSS, PruneSettings
from ..circuits.validate import not_evidence_reasons, read_validation
from ..config import load_config
from ..data.prepare import MANIFEST, prepare
from ..io import atomic_write_text, output_folder
from ..rundir import METRICS_FILE, Run, read_metrics
from ..tasks import HARD_FORMS, suite_tasks
from ..tasks.audit import score_tasks
from ..train.evaluation import evaluate_run
from ..train.trainer import train_or_continue
from .claim import (CLAIM_SEEDS, CLAIM_TARGETS, MARGIN, best_circuit, circuit_is_evidence, claim_rows, claim_tasks, does_with_margin,
                    plot_claim)
from ..plots import pyplot, save

KEPT_MODELS = 4  # models the demo's sparse run keeps for `evolve`: 4 x 22 MB on `small`
BRACKET_TRIES = 3  # finished dense schedules tried beyond dense_matched to bracket the sparse loss
BRACKET_CLOSE = 0.05  # nats: a bracketing model this near the sparse loss needs no schedule between it and the other
COMPARISONS = {"dense_at_sparse_loss": "dense at the sparse model's loss (interpolated between finished schedules)",
               "dense": "dense on the same tokens (full schedule, lower loss)"}


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


def _val_losses(run_dir: Path) -> list[tuple[int, float]]:
    records = read_metrics(run_dir / METRICS_FILE)
    return [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]


def matched_steps(dense_run: Path, sparse_val: float) -> int | None:
    """The first evaluated step at which the dense run's validation loss reached the sparse model's."""
    return next((step for step, loss in _val_losses(dense_run) if loss <= sparse_val), None)


def _train_stage(config_name: str, overrides: list[str], data_dir: Path, run_dir: Path) -> None:
    train_or_continue(load_config(config_name, overrides), data_dir, run_dir)


def bracket_sparse_loss(train_dense, n_matched: int, sparse_val: float, val_loss) -> dict:
    """Finished dense schedules whose validation losses bracket the sparse model's: `dense_matched`
    (`n_matched` steps), then schedules halved (while every one tried ends below the sparse loss) or
    doubled (while every one ends above) until two straddle it, then bisected (the geometric mean of
    the nearest schedule on each side) while a side is more than BRACKET_CLOSE from the sparse loss;
    at most BRACKET_TRIES schedules beyond dense_matched. `train_dense(name, steps)` trains one;
    `val_loss(name)` scores one. Returns {"models": {name: val loss} of the nearest on each side
    (one model when none lands on the other side), "tried": every schedule's steps and loss}."""
    tried = {"dense_matched": (n_matched, val_loss("dense_matched"))}

    def nearest() -> tuple[str | None, str | None]:  # the nearest schedule ending below, and above, the sparse loss
        below = [m for m, (_, loss) in tried.items() if loss <= sparse_val]
        above = [m for m, (_, loss) in tried.items() if loss > sparse_val]
        return (max(below, key=lambda m: tried[m][1]) if below else None,
                min(above, key=lambda m: tried[m][1]) if above else None)

    for _ in range(BRACKET_TRIES):
        below, above = nearest()
        if below is None:
            steps = max(tried[m][0] for m in tried) * 2
        elif above is None:
            steps = max(1, min(tried[m][0] for m in tried) // 2)
        elif max(sparse_val - tried[below][1], tried[above][1] - sparse_val) > BRACKET_CLOSE:
            steps = round((tried[below][0] * tried[above][0]) ** 0.5)  # a loss falls about linearly in log steps
        else:
            break
        if any(steps == s for s, _ in tried.values()):
            break  # the schedules on either side are a step apart
        name = f"dense_steps{steps}"
        train_dense(name, steps)
        tried[name] = (steps, val_loss(name))
    below, above = nearest()
    chosen = [m for m in (below, above) if m]
    if len(chosen) == 1:  # nothing on the other side: the nearest model alone stands for the dense model at the sparse loss
        chosen = [min(tried, key=lambda m: abs(tried[m][1] - sparse_val))]
    return {"models": {m: tried[m][1] for m in chosen}, "bracketed": bool(below and above),
            "tried": {m: {"steps": steps, "val_loss": loss} for m, (steps, loss) in tried.items()}}


def demo(out: str | Path, minutes: float = 30.0, tasks: str | list[str] = "auto", max_tasks: int | None = None,
         target_loss: float = TARGET_LOSS, config: str = "small", overrides: list[str] | None = None,
         corpus: list[str] | None = None, control: bool = True, margin: float = MARGIN,
         dense_set: list[str] | None = None, suite: str = "paper",
         claim_targets: tuple[float, ...] = CLAIM_TARGETS, claim_seeds: int = CLAIM_SEEDS) -> dict:
    """`dense_set`: overrides for every dense model, after the shared ones (another width, more steps)."""
    from ..circuits import validate
    from ..circuits.prune import prune_or_reuse
    from ..viewer import view

    out = output_folder(out)
    overrides = list(overrides or [])
    base_steps = load_config(config, overrides).train.steps
    steps = max(50, round(base_steps * minutes / 30.0))  # the default budget is sized for 30 minutes
    overrides.append(f"train.steps={steps}")
    dense_overrides = overrides + ["sparsity.l0_fraction=1.0", f"train.eval_interval={max(10, steps // 36)}"] + list(dense_set or [])
    load_config(config, dense_overrides)  # a bad --dense-set fails now, not after the sparse model has trained
    names = ["prepare corpus", "train sparse model", "train dense model", "train loss-matched dense model",
             "bracket the sparse loss", "evaluate tasks", "prune circuits", "attribution-patching baseline", "validate circuits",
             "label circuit nodes", "view circuits",
             "evolve the smallest circuit", "claim (a)", "report"]
    stages = Stages(names, minutes * 60)
    data_dir = out / "data"

    if not (data_dir / MANIFEST).is_file():
        stages.run("prepare corpus", lambda: prepare(data_dir, corpus=corpus, force=True))
    # the sparse model keeps KEPT_MODELS models along its training, for `evolve`
    kept = [f"train.keep_every={max(1, steps // KEPT_MODELS)}"]
    stages.run("train sparse model", lambda: _train_stage(config, overrides + kept, data_dir, out / "sparse"))
    sparse_val = _val_losses(out / "sparse")[-1][1]
    stages.run("train dense model", lambda: _train_stage(config, dense_overrides, data_dir, out / "dense"))
    n_matched = matched_steps(out / "dense", sparse_val)
    val_losses: dict[str, float] = {}

    def val_loss(model: str) -> float:  # the whole validation split, once per model
        if model not in val_losses:
            val_losses[model] = evaluate_run(Run.open(out / model))["val_loss"]
        return val_losses[model]

    def train_dense(name: str, n_steps: int) -> None:
        _train_stage(config, dense_overrides + [f"train.steps={n_steps}"], data_dir, out / name)

    bracket = None
    if n_matched is None:  # the dense model never reached the sparse model's loss: nothing to match
        print(f"the dense model never reached the sparse model's validation loss {sparse_val:.4f}:"
              " no loss-matched dense model", file=sys.stderr)
    else:
        stages.run("train loss-matched dense model", lambda: train_dense("dense_matched", n_matched))
        bracket = stages.run("bracket the sparse loss", lambda: bracket_sparse_loss(
            train_dense, n_matched, val_loss("sparse"), val_loss))
        print("dense models at the sparse loss " + f"{val_loss('sparse'):.4f}: " + ", ".join(
            f"{m} ({t['steps']} steps) {t['val_loss']:.4f}" for m, t in bracket["tried"].items())
            + ("" if bracket["bracketed"] else "; none on the other side: the nearest stands alone"), file=sys.stderr)
    models = ["sparse", *(bracket["tried"] if bracket else []), "dense"]
    runs = {m: Run.open(out / m) for m in models}
    candidates = suite_tasks(suite) if tasks in ("auto", "all") else list(tasks)
    task_losses = stages.run("evaluate tasks", lambda: {
        m: score_tasks(runs[m].model(), candidates, "choose") for m in models})
    atomic_write_text(out / "tasks.json", json.dumps(task_losses, indent=1))
    losses = {m: {t: row.get("loss") for t, row in task_losses[m].items()} for m in models}
    # a task the audit flags under any model's tokenisation or bigram table (choose records) is flagged
    flagged = {t: sorted({cue for m in models for cue in task_losses[m][t].get("audit_flagged", [])}) for t in candidates}
    sparse_tasks = sorted((t for t in candidates if losses["sparse"].get(t) is not None
                           and losses["sparse"][t] <= target_loss), key=lambda t: losses["sparse"][t])
    if max_tasks and len(sparse_tasks) > max_tasks:
        print(f"pruning the {max_tasks} tasks of {len(sparse_tasks)} the sparse model does best (--max-tasks)",
              file=sys.stderr)
        sparse_tasks = sparse_tasks[:max_tasks]
    print(f"the sparse model does {len(sparse_tasks)} of {len(candidates)} tasks to loss <= {target_loss:g}:"
          f" {', '.join(sparse_tasks) or 'none'}", file=sys.stderr)
    settings = PruneSettings(target_loss=target_loss)

    def circuit_dir(model: str, task: str, target: float = target_loss, seed: int = 0) -> Path:
        folder = (model if target == target_loss else f"{model}-target{target:g}") + (f"-seed{seed}" if seed else "")
        return out / "circuits" / folder / Path(task).stem

    def prune_all():
        for task in list(sparse_tasks):  # a circuit of other weights, records or settings is pruned again
            try:
                prune_or_reuse(runs["sparse"], task, circuit_dir("sparse", task), settings)
            except NoCircuitToFind as err:  # the empty circuit already does it: no circuit to draw
                print(f"no circuit for {Path(task).stem}: {err}", file=sys.stderr)
                sparse_tasks.remove(task)

    attribution = dataclasses.replace(settings, method="attribution")

    def attribution_all():  # the fast baseline a learned circuit should beat, beside each circuit
        for task in sparse_tasks:
            prune_or_reuse(runs["sparse"], task, circuit_dir("sparse-attribution", task), attribution, show_progress=False)

    def validate_all():
        for task in sparse_tasks:
            if read_validation(circuit_dir("sparse", task)) is None:
                validate(circuit_dir("sparse", task), runs["sparse"], control=control)

    def label_all():
        for task in sparse_tasks:
            if read_labels(circuit_dir("sparse", task), runs["sparse"].weights_sha256) is None:
                label_run(runs["sparse"], circuit_dir=circuit_dir("sparse", task))

    def view_all():
        for task in sparse_tasks:
            if not (circuit_dir("sparse", task) / "circuit.html").is_file():
                view(circuit_dir("sparse", task))

    def claim():
        baselines = {"dense": {"dense": val_loss("dense")}}
        if bracket:
            baselines = {"dense_at_sparse_loss": bracket["models"], **baselines}
        return claim_a(runs, losses, flagged, claim_targets, margin, circuit_dir, settings, baselines, val_loss("sparse"),
                       claim_seeds, control, out / "claim.png")

    stages.run("prune circuits", prune_all)
    stages.run("attribution-patching baseline", attribution_all)
    stages.run("validate circuits", validate_all)
    stages.run("label circuit nodes", label_all)
    stages.run("view circuits", view_all)
    evolution = stages.run("evolve the smallest circuit", lambda: evolve_smallest(out, runs["sparse"], sparse_tasks,
                                                                                   circuit_dir, settings))
    comparisons = stages.run("claim (a)", claim)
    summary = stages.run("report", lambda: write_report(out, runs, evolution, sparse_tasks, candidates, task_losses, losses, flagged,
                                                        comparisons, circuit_dir, target_loss, margin, n_matched,
                                                        {m: val_loss(m) for m in runs}, bracket))
    summary["seconds_by_stage"] = stages.seconds
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print(format_summary(summary))
    return summary


def claim_a(runs: dict[str, Run], losses: dict, flagged: dict, targets: tuple[float, ...], margin: float, circuit_dir,
            settings: PruneSettings, baselines: dict[str, dict[str, float]], sparse_loss: float, seeds: int, control: bool,
            plot_path: Path) -> dict[str, list[dict]]:
    """Per baseline ({name: {dense model: validation loss}}), per target: the tasks every model does with
    margin and the audit does not flag (choose records), each (model, task) pruned with `seeds` seeds,
    the smallest circuit meeting the target on the choose records kept and validated as the main
    circuits are (reported beside it; the test records never decide which tasks count)."""
    from ..circuits import validate
    from ..circuits.prune import prune_or_reuse

    def seed_circuits(model: str, task: str, target: float) -> list[dict]:
        found = []
        for seed in range(seeds):
            directory = circuit_dir(model, task, target, seed)
            m = prune_or_reuse(runs[model], task, directory, dataclasses.replace(settings, target_loss=target, seed=seed),
                               show_progress=False).metrics
            found.append({"seed": seed, "edges": m["n_edges"], "nodes": m["n_nodes"], "directory": directory,
                          "reached": m["reached"], "metrics": m})
        return found

    def judged(circuit: dict, model: str, target: float) -> dict:
        if read_validation(circuit["directory"]) is None:
            validate(circuit["directory"], runs[model], control=control)
        evidence, why = circuit_is_evidence(circuit["metrics"], target, read_validation(circuit["directory"]))
        return {**circuit, "evidence": evidence, "why": why}

    comparisons = {}
    for name, baseline in baselines.items():
        per_target = []
        for target in sorted(targets):
            models = ["sparse", *baseline]
            chosen, excluded = claim_tasks({m: losses[m] for m in models}, flagged, target, margin)
            circuits = {m: {} for m in models}
            for task in chosen:
                try:
                    found = {m: seed_circuits(m, task, target) for m in models}
                except NoCircuitToFind as err:  # an empty circuit meets the target: no size to compare
                    excluded[task] = str(err)
                    continue
                for m in models:
                    circuits[m][Path(task).stem] = found[m]
            for m in models:  # validate each task's kept circuit (the smallest that meets the target)
                for stem, found in circuits[m].items():
                    best = best_circuit(found)  # the one claim_rows keeps
                    if best is not None:
                        found[found.index(best)] = judged(best, m, target)
            rows = claim_rows(circuits, "sparse", baseline, sparse_loss, target)
            rows["excluded"] = {**{Path(t).stem: why for t, why in excluded.items()}, **rows["excluded"]}
            rows["baseline"] = baseline
            per_target.append(rows)
        comparisons[name] = per_target
    plot_claim(plot_path, {COMPARISONS[d]: rows for d, rows in comparisons.items()})
    return comparisons


def hard_form_losses(circuit_dir: Path, task: str, run: Run) -> dict[str, dict]:
    """The circuit's and the full model's loss on each hard form of its task (test records)."""
    from ..circuits.circuit import ablation_values, load_task_splits
    from ..errors import SparseCircuitsError
    from ..tasks.records import pair_logits, task_loss

    circuit = Circuit.load(circuit_dir)
    run = circuit.open_run(run)
    model = run.model()
    means = ablation_values(model, run, circuit.data["ablation"], False, circuit.means_data)
    out = {}
    for form in HARD_FORMS.get(Path(task).stem, []):
        try:
            records = load_task_splits(model, form).test
        except SparseCircuitsError as err:
            out[form] = {"error": str(err)}
            continue
        with circuit.only(model, means):
            circuit_loss = float(task_loss(pair_logits(model, records)))
        out[form] = {"full_model": float(task_loss(pair_logits(model, records))), "circuit": circuit_loss}
    return out


def evolve_smallest(out: Path, run: Run, sparse_tasks: list[str], circuit_dir, settings) -> dict:
    """The circuit with the fewest edges (evidence first), pruned again at each model the sparse run
    kept: how it formed. Validated without the pruning controls, which would triple the time."""
    from .evolve import evolve

    if not run.kept_steps():
        return {"skipped": "the sparse model kept no models during training (trained before train.keep_every)"}
    if not sparse_tasks:
        return {"skipped": "the sparse model does no task to the target"}
    validations = {t: read_validation(circuit_dir("sparse", t)) for t in sparse_tasks}
    task = min(sparse_tasks, key=lambda t: (not validations[t]["evidence"], validations[t]["n_edges"]))
    folder = out / "evolution" / Path(task).stem
    result = evolve(run, task, folder, settings, control=False)
    return {"task": Path(task).stem, "page": str((folder / "evolution.html").relative_to(out)),
            "plot": str((folder / "evolution.png").relative_to(out)),
            "checkpoints": [{k: r[k] for k in ("step", "val_loss", "task_loss", "reached", "n_nodes", "n_edges")}
                            for r in result["checkpoints"]],
            "transitions": [{k: t[k] for k in ("from_step", "to_step", "jaccard", "kept")} | {"entered": len(t["entered"]),
                             "left": len(t["left"])} for t in result["transitions"]]}


def write_report(out: Path, runs: dict[str, Run], evolution: dict, sparse_tasks: list[str], candidates: list[str], task_losses: dict, losses: dict,
                 flagged: dict, comparisons: dict, circuit_dir, target_loss: float, margin: float,
                 n_matched: int | None, val_losses: dict[str, float], bracket: dict | None) -> dict:
    circuits = {}
    for task in sparse_tasks:
        directory = circuit_dir("sparse", task)
        circuit = Circuit.load(directory).data
        validation = read_validation(directory)
        labels = read_labels(directory, runs["sparse"].weights_sha256)["nodes"]  # label_all wrote them for these weights
        circuits[Path(task).stem] = {
            "task_loss": losses["sparse"][task],
            "nodes": circuit["metrics"]["n_nodes"], "edges": circuit["metrics"]["n_edges"],
            "loss_circuit": validation["loss_circuit"], "loss_circuit_interval": validation.get("loss_circuit_interval"),
            "loss_circuit_ablated": validation["loss_circuit_ablated"],
            "controls": {name: {k: c[k] for k in ("passed", "why")} for name, c in validation["controls"].items()},
            "evidence": validation["evidence"], "failed": not_evidence_reasons(validation),
            "nodes_labelled": sum(bool(n["labels"]) for n in labels),
            "nodes_labelled_above_baseline": sum(bool(n["labels"]) and n["labels"][0].get("beats_baseline", True)
                                                 for n in labels),
            "hard_forms": hard_form_losses(directory, task, runs["sparse"]),
            "attribution": _attribution_figures(circuit_dir("sparse-attribution", task)),
            "audit_flagged": flagged.get(task, []),
            "page": str((directory / "circuit.html").relative_to(out)),
        }
    models = {m: {"val_loss": val_losses[m], "run_dir": m,
                  "does_at_target": [t for t in candidates if losses[m].get(t) is not None and losses[m][t] <= target_loss],
                  "does_with_margin": [t for t in candidates if does_with_margin(losses[m].get(t), target_loss, margin)]}
              for m in losses}
    summary = {
        "target_loss": target_loss, "margin": margin, "models": models, "dense_matched_steps": n_matched,
        "dense_at_sparse_loss": bracket,
        "circuits": circuits, "claim": comparisons, "evolution": evolution, "task_losses": task_losses,
        "no_circuits": None if circuits else (
            f"the sparse model does none of the {len(candidates)} tasks to loss <= {target_loss:g}: train it longer"
            " (--minutes), widen it (--set model.d_model=...) or raise --target-loss"),
    }
    plot_edges(out / "edges.png", circuits)
    atomic_write_text(out / "report.html", render_report(summary))
    return summary


def _attribution_figures(directory: Path) -> dict:
    m = Circuit.load(directory).metrics
    return {"nodes": m["n_nodes"], "edges": m["n_edges"], "loss_circuit": m["loss_circuit"],
            "loss_random_same_size": m["loss_random_same_size"], "seconds": m["seconds"]}


def plot_edges(path: Path, circuits: dict) -> None:
    plt = pyplot()
    names = list(circuits)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.6))
    if names:
        ax.bar(range(len(names)), [circuits[t]["edges"] for t in names], color="#2463eb")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "the sparse model does no task to the target", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("circuit edges")
    ax.set_title("The sparse model's circuits")
    save(fig, path)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _controls_cell(x: dict) -> str:
    return ", ".join(f"{name} {'pass' if c['passed'] else 'FAIL'}" for name, c in x["controls"].items())


def _labelled_cell(x: dict) -> str:
    """'12/40 = 30% (9)': nodes with a Python concept above threshold, and how many beat the baseline."""
    return (f"{x['nodes_labelled']}/{x['nodes']} = {x['nodes_labelled'] / max(x['nodes'], 1):.0%}"
            f" ({x['nodes_labelled_above_baseline']})")


def _hard_cell(x: dict) -> str:
    return "; ".join(f"{form}: {_fmt(v['circuit'])} (full {_fmt(v['full_model'])})" if "circuit" in v
                     else f"{form}: n/a" for form, v in x["hard_forms"].items()) or "-"


def _attribution_cell(x: dict) -> str:
    a = x["attribution"]
    return f"{a['nodes']} / {a['edges']} ({_fmt(a['loss_circuit'], 3)}, {a['seconds']:.0f} s)"


def _evidence_cell(x: dict) -> str:
    return "yes" if x["evidence"] else "NO: " + ", ".join(x["failed"])


def _ratio_text(c: dict) -> str:
    """'2.41 [1.60, 3.62], median 2.20, 1.49 to 2.90 leaving one task out'."""
    text = f"{c['edges_ratio_geomean']:.2f}"
    if c.get("edges_ratio_interval"):
        text += f" [{c['edges_ratio_interval'][0]:.2f}, {c['edges_ratio_interval'][1]:.2f}]"
    if c.get("edges_ratio_median") is not None:
        text += f", median {c['edges_ratio_median']:.2f}"
    loo = c.get("edges_ratio_leave_one_out")
    if loo:
        text += f", {loo['min']:.2f} to {loo['max']:.2f} leaving one task out"
    return text


def _seed_range(r: dict) -> str:
    return "" if not r.get("ratio_over_seeds") else f" (seeds {r['ratio_over_seeds'][0]:.2f}-{r['ratio_over_seeds'][1]:.2f})"


def claim_lines(summary: dict) -> list[str]:
    """Claim (a) in words: per comparison and target, the count, the geometric means and the ratio with
    its 95% bootstrap interval over tasks, median and leave-one-out range."""
    lines = []
    bracket = summary.get("dense_at_sparse_loss")
    if bracket:
        lines.append("dense models for the sparse loss: " + ", ".join(
            f"{m} {t['val_loss']:.4f} ({t['steps']} steps)" for m, t in bracket["tried"].items())
            + f"; bracketing: {', '.join(bracket['models'])}" + ("" if bracket["bracketed"] else " (not bracketed)"))
    for dense, per_target in summary["claim"].items():
        lines.append(f"claim (a) against the {COMPARISONS[dense]}:")
        for c in per_target:
            if c["count"]:
                lines.append(f"  target {c['target_loss']:g}: {c['count']} tasks, weight edges geometric mean sparse"
                             f" {c['edges_geomean']['sparse']:.1f}, dense {c['edges_geomean']['dense']:.1f}, dense / sparse "
                             + _ratio_text(c) + " ("
                             + ", ".join(f"{t} {r['edges_ratio']:.2f}{_seed_range(r)}" for t, r in c["tasks"].items()) + ")"
                             + (f"; not evidence on test: {', '.join(c['not_evidence'])}" if c.get("not_evidence") else ""))
            else:
                lines.append(f"  target {c['target_loss']:g}: no task every model does with margin has a circuit meeting"
                             f" the target in each ({len(c['excluded'])} left out)")
    if not summary["claim"]:
        lines.append("claim (a): no dense baseline to compare with")
    return lines


def render_report(summary: dict) -> str:
    e = html.escape
    models = summary["models"]
    model_rows = "".join(
        f"<tr><td>{e(m)}</td><td class=num>{models[m]['val_loss']:.4f}</td><td class=num>{len(models[m]['does_at_target'])}"
        f"</td><td class=num>{len(models[m]['does_with_margin'])}</td></tr>" for m in models)
    if summary["circuits"]:
        rows = "".join(
            f"<tr><td>{e(t)}</td><td class=num>{x['task_loss']:.4f}</td><td class=num><a href='{e(x['page'])}'>{x['nodes']}</a></td>"
            f"<td class=num>{x['edges']}</td><td class=num>{_fmt(x['loss_circuit'])}"
            + (f" ({x['loss_circuit_interval'][0]:.3f}-{x['loss_circuit_interval'][1]:.3f})" if x["loss_circuit_interval"] else "")
            + f"</td><td class=num>{_fmt(x['loss_circuit_ablated'])}</td><td>{e(_controls_cell(x))}</td>"
            f"<td>{e(_evidence_cell(x))}</td><td class=num>{_labelled_cell(x)}</td><td>{e(_hard_cell(x))}</td>"
            f"<td>{e(', '.join(x['audit_flagged']) or 'none')}</td><td class=num>{_attribution_cell(x)}</td></tr>"
            for t, x in summary["circuits"].items())
        circuits = (f"<table><tr><th>task</th><th>full-model loss</th><th>nodes</th><th>edges</th><th>circuit loss (95% interval)"
                    f"</th><th>circuit ablated</th><th>controls</th><th>evidence</th><th>nodes labelled (above shuffled"
                    f" baseline)</th><th>circuit loss on the hard forms</th><th>degenerate cue</th><th>attribution patching:"
                    f" nodes / edges (loss, seconds)</th></tr>{rows}</table>"
                    "<img src='edges.png' alt='circuit edges per task'>")
    else:
        circuits = f"<p><b>No circuit:</b> {e(summary['no_circuits'])}.</p>"
    claim_blocks = []
    for dense, per_target in summary["claim"].items():
        body = ""
        for c in per_target:
            tasks = "".join(f"<tr><td>{e(t)}</td><td class=num>{r['sparse_edges']}</td><td class=num>{r['dense_edges']:.0f}</td>"
                            f"<td class=num>{r['edges_ratio']:.2f}{e(_seed_range(r))}</td><td class=num>{r['nodes_ratio']:.2f}</td>"
                            f"<td>{e(', '.join(m for m, v in r['evidence'].items() if v['evidence'] is False) or 'all')}</td></tr>"
                            for t, r in c["tasks"].items())
            left = "".join(f"<li>{e(t)}: {e(why)}</li>" for t, why in c["excluded"].items())
            head = (f"{c['count']} tasks; geometric-mean weight edges sparse {c['edges_geomean']['sparse']:.1f}, dense"
                    f" {c['edges_geomean']['dense']:.1f}: dense / sparse <b>{e(_ratio_text(c))}</b>"
                    if c["count"] else "no task every model does with margin has a circuit meeting the target in each: no ratio")
            body += (f"<h4>target {c['target_loss']:g}</h4><p>{head}</p>"
                     + (f"<table><tr><th>task</th><th>sparse edges</th><th>dense edges</th><th>edges dense / sparse (range over"
                        f" pruning seeds)</th><th>nodes dense / sparse</th><th>evidence on test records (not"
                        f" evidence in)</th></tr>{tasks}</table>" if tasks else "")
                     + f"<details><summary>{len(c['excluded'])} tasks left out</summary><ul>{left}</ul></details>")
        claim_blocks.append(f"<h3>Against the {e(COMPARISONS[dense])}</h3>{body}")
    claim_html = "".join(claim_blocks) or "<p>No dense baseline to compare with.</p>"
    losses = "".join(f"<tr><td>{e(t)}</td>" + "".join(
        f"<td class=num>{_fmt(summary['task_losses'][m][t].get('loss'))}</td>" for m in models) + "</tr>"
        for t in summary["task_losses"]["sparse"])
    matched = summary["dense_matched_steps"]
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sparsecircuits demo report</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#1d232a}}table{{border-collapse:collapse;margin:6px 0 16px}}
th,td{{border:1px solid #ddd;padding:3px 8px}}td.num{{text-align:right;font-variant-numeric:tabular-nums}}</style></head><body>
<h1>Weight-sparse model, its circuits, and dense baselines</h1>
<table><tr><th>model</th><th>validation loss</th><th>tasks done to {summary['target_loss']:g}</th>
<th>with margin (&le; {summary['margin'] * summary['target_loss']:g})</th></tr>{model_rows}</table>
<p>dense: the same shape on the same tokens with its full schedule (a stronger baseline). dense_matched:
{'not trained (the dense model never reached the sparse loss)' if matched is None else
 f'a finished {matched}-step schedule, the steps the dense run took to reach the sparse loss'};
dense_steps<i>N</i>: finished schedules of N steps, trained until two bracket the sparse model's validation loss.</p>
<h2>The sparse model's circuits (every task it does to the target; click a node count)</h2>
{circuits}
<h2>How a circuit formed over training</h2>
{_evolution_html(summary["evolution"])}
<h2>Claim (a): circuit edges, sparse against dense, at each target</h2>
<p>Edges are weight edges, nonzero weights between kept nodes, as the paper counts them. Each target counts the
tasks every model compared does with margin (full-model loss &le; {summary['margin']:g} x the target on the choose
records), leaving out tasks a degenerate cue answers; each circuit is the smallest of several pruning seeds that
meets the target on the choose records. Against the dense model at the sparse loss, dense edges are interpolated in
log edges between the two finished dense schedules whose validation losses bracket the sparse model's. The ratio
is a geometric mean over tasks with a 95% bootstrap interval over tasks; whether each circuit is evidence is
measured on the test records and reported, never used to choose tasks.</p>
<img src="claim.png" alt="circuit edges against target loss">
{claim_html}
<h2>Task losses (choose records)</h2>
<table><tr><th>task</th>{''.join(f'<th>{e(m)}</th>' for m in models)}</tr>{losses}</table>
</body></html>"""


def _evolution_html(evolution: dict) -> str:
    e = html.escape
    if "skipped" in evolution:
        return f"<p>Not drawn: {e(evolution['skipped'])}.</p>"
    rows = "".join(f"<tr><td class=num>{r['step']}</td><td class=num>{r['val_loss']:.4f}</td><td class=num>{r['task_loss']:.4f}</td>"
                   f"<td class=num>{r['n_nodes'] if r['reached'] else 'not reached'}</td>"
                   f"<td class=num>{r['n_edges'] if r['reached'] else ''}</td></tr>" for r in evolution["checkpoints"])
    overlaps = "; ".join(f"{t['from_step']} to {t['to_step']}: Jaccard {t['jaccard']:.2f}, {t['entered']} entered,"
                         f" {t['left']} left" for t in evolution["transitions"]) or "no two consecutive circuits"
    return (f"<p>The smallest circuit, {e(evolution['task'])}, pruned again at each model the sparse run kept"
            f" (<a href='{e(evolution['page'])}'>the circuits side by side, a slider over steps</a>). Node-set overlap:"
            f" {e(overlaps)}.</p><table><tr><th>step</th><th>validation loss</th><th>task loss</th><th>nodes</th>"
            f"<th>edges</th></tr>{rows}</table><img src='{e(evolution['plot'])}' alt='the circuit over training'>")


def format_summary(summary: dict) -> str:
    lines = ["validation loss: " + ", ".join(f"{m} {v['val_loss']:.4f} ({len(v['does_at_target'])} tasks to the target,"
                                               f" {len(v['does_with_margin'])} with margin)"
                                               for m, v in summary["models"].items())]
    if not summary["circuits"]:
        lines.append(f"no circuit: {summary['no_circuits']}")
    else:
        lines.append(f"{'task':26s} {'loss':>7s} {'nodes':>6s} {'edges':>6s} {'circuit':>8s}  evidence; controls; hard forms")
    for task, x in summary["circuits"].items():
        lines.append(f"{task:26s} {x['task_loss']:7.4f} {x['nodes']:6d} {x['edges']:6d} {_fmt(x['loss_circuit']):>8s}"
                     f"  {_evidence_cell(x)}; {_controls_cell(x)}; {_hard_cell(x)}")
    evolution = summary["evolution"]
    if "skipped" in evolution:
        lines.append(f"evolution: not drawn ({evolution['skipped']})")
    else:
        lines.append(f"evolution of {evolution['task']} over steps " + ", ".join(
            f"{r['step']}: {r['n_nodes'] if r['reached'] else 'not reached'}" for r in evolution["checkpoints"])
            + f" nodes ({evolution['page']})")
    return "\n".join(lines + claim_lines(summary))
