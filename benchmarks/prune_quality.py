"""Circuit size, test loss and time of pruning methods side by side, on the tasks a run does.

    python benchmarks/prune_quality.py RUN_DIR [--tasks auto|A,B] [--target-loss 0.15] [--seeds 3]
        [--search 8] [--no-old] [--attribution] [--controls] [--json OUT.json]

For every task whose full-model loss on the choose records meets the target: the default pruning
(a penalty that adapts to the target), the old fixed penalty (k 3e-3, 200 steps, the count chosen at the target itself) and a small Optuna
`--search`, each as nodes / edges / test loss (uncalibrated, as the count was chosen) / seconds.
`--seeds N` prunes with the default at seeds 0..N-1 and prints the spread of node counts (largest
over smallest); `--attribution` adds `prune --method attribution` (attribution patching ranks the
nodes, the count chosen the same way); `--controls` runs the four controls of `validate` on the
default circuit (and on the attribution circuit, whose pruning controls use attribution too).
Nothing is written to the run directory but its node means (cached as `prune` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from sparsecircuits.circuits.circuit import ablation_values, load_task_splits
from sparsecircuits.circuits.graph import circuit_edges
from sparsecircuits.circuits.find import CircuitEvaluator, PruneSettings, find_circuit
from sparsecircuits.circuits.prune import circuit_metrics
from sparsecircuits.circuits.search import search_settings
from sparsecircuits.circuits.validate import controls, pruning_controls
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.rundir import Run
from sparsecircuits.model.sparse_kernels import sparse_weight_kernels
from sparsecircuits.tasks import evaluate_task, suite_tasks

OLD_FIXED = {"penalty": "fixed", "k_coef": 3e-3, "steps": 200, "choose_margin": 0.0}


def _row(model, found: dict, seconds: float) -> dict:
    return {"nodes": int(sum(k.sum() for k in found["keep"].values())), "edges": len(circuit_edges(model, found["keep"])),
            "test_loss": round(found["loss"], 4), "reached": found["reached"], "seconds": round(seconds, 1),
            "active_after_training": found["active_after_training"]}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--tasks", default="auto", help="auto: every task of --suite the model does; or A,B,...")
    parser.add_argument("--suite", default="paper", help="paper, hard, or paper,hard")
    parser.add_argument("--target-loss", type=float, default=0.15)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--search", type=int, default=8, help="Optuna trials (0: leave the search out)")
    parser.add_argument("--no-old", action="store_true", help="leave the old fixed penalty out")
    parser.add_argument("--attribution", action="store_true", help="also prune with --method attribution")
    parser.add_argument("--controls", action="store_true")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    run = Run.open(args.run_dir)
    model = run.model()
    means = ablation_values(model, run, "mean", show_progress=False)
    names = ([n for suite in args.suite.split(",") for n in suite_tasks(suite)] if args.tasks == "auto"
             else args.tasks.split(","))
    default = PruneSettings(target_loss=args.target_loss)
    rows = []
    with sparse_weight_kernels(model, default.csr_max_density):
        for name in names:
            try:
                splits = load_task_splits(model, name)
            except SparseCircuitsError as err:
                print(f"{name}: {err}")
                continue
            full = evaluate_task(model, splits.choose)["loss"]
            if full > args.target_loss:
                print(f"{name}: full model {full:.4f} on the choose records, above the target: left out", flush=True)
                continue
            row = {"task": name, "full_model_choose": round(full, 4)}
            seeds = []
            for seed in range(args.seeds):
                found, seconds = timed(lambda: find_circuit(model, splits, means, dataclasses.replace(default, seed=seed),
                                                            show_progress=False))
                seeds.append(_row(model, found, seconds))
                if seed == 0:
                    row["default"], first = seeds[0], found
            if args.seeds > 1:
                counts = [s["nodes"] for s in seeds]
                row["seed_nodes"] = counts
                row["seed_spread"] = round(max(counts) / max(min(counts), 1), 2)
            if not args.no_old:
                found, seconds = timed(lambda: find_circuit(model, splits, means,
                                                            dataclasses.replace(default, **OLD_FIXED), show_progress=False))
                row["old_fixed"] = _row(model, found, seconds)
            if args.search:
                (_, found), seconds = timed(lambda: search_settings(model, splits, means, default, args.search, False))
                row["search"] = _row(model, found, seconds)
            if args.attribution:
                attribution = dataclasses.replace(default, method="attribution")
                found, seconds = timed(lambda: find_circuit(model, splits, means, attribution, show_progress=False))
                row["attribution"] = _row(model, found, seconds)
                if args.controls:
                    result, seconds = timed(lambda: _controls(model, name, splits, means, attribution, found))
                    row["attribution"]["controls"], row["attribution"]["controls_seconds"] = result, round(seconds, 1)
            if args.controls:
                result, seconds = timed(lambda: _controls(model, name, splits, means, default, first))
                row["controls"], row["controls_seconds"] = result, round(seconds, 1)
            rows.append(row)
            print(format_row(row), flush=True)
    print()
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def _controls(model, name, splits, means, settings, found) -> dict:
    evaluator = CircuitEvaluator(model, splits, means, settings.calibration_steps)
    result = {"target_loss": settings.target_loss, "n_nodes": int(sum(k.sum() for k in found["keep"].values())),
              **circuit_metrics(evaluator, found["keep"], found["logit_scale"], settings.seed + 1)}
    result.update(pruning_controls(model, splits, name, means, settings, show_progress=False))
    verdicts = controls(result)
    return {"loss_circuit": round(result["loss_circuit"], 4), "loss_circuit_interval": result["loss_circuit_interval"],
            "loss_circuit_ablated": round(result["loss_circuit_ablated"], 4),
            **{k: {"passed": v["passed"], "why": v["why"]} for k, v in verdicts.items()}}


def _cell(r: dict | None) -> str:
    if r is None:
        return f"{'-':>24s}"
    return f"{r['nodes']:5d} {r['edges']:6d} {r['test_loss']:6.3f}{'' if r['reached'] else '!'} {r['seconds']:4.0f}s"


def format_row(row: dict) -> str:
    line = f"{row['task']:28s} {_cell(row.get('default'))} | {_cell(row.get('old_fixed'))} | {_cell(row.get('search'))}"
    if "attribution" in row:
        line += f" | attribution {_cell(row['attribution'])}"
    if "seed_spread" in row:
        line += f" | seeds {row['seed_nodes']} spread {row['seed_spread']:.2f}x"
    for method, checks in (("mask", row.get("controls", {})), ("attribution", row.get("attribution", {}).get("controls", {}))):
        for name, c in checks.items():
            if isinstance(c, dict):
                line += f"\n    {method:11s} control {name:15s} {'pass' if c['passed'] else 'FAIL'}  {c['why']}"
    return line


def format_table(rows: list[dict]) -> str:
    head = f"{'task':28s} {'default: nodes edges loss time':>24s} | {'old fixed k 3e-3':>24s} | {'--search':>24s}"
    return "\n".join([head, "(loss: test records, uncalibrated; '!': the count missed the goal)"]
                     + [format_row(r) for r in rows])


if __name__ == "__main__":
    main()
