"""`sparsecircuits sweep --grid GRID.toml --out DIR`: train a grid of models over width and L0
(a fraction of every matrix, or a total count of nonzero weights as in the paper's Fig. 3; and
optionally the AbsTopK keep fraction), prune the tasks on each, and draw the
capability-interpretability frontier (paper Fig. 3): pretraining loss vs geometric-mean circuit
edges, one line per width. Finished runs and circuits are reused, so a sweep can be stopped and
continued.

A grid file:

    config = "small"          # base config (name or TOML file)
    set = ["train.steps=5400"] # overrides applied to every run
    target_loss = 0.15
    tasks = "auto"            # or a list of task names / JSONL files
    [grid]
    d_model = [64, 128, 192]
    l0_fraction = [0.25, 0.125, 0.0625]   # or: l0_nonzeros = [60000, 120000]
    keep_fraction = [0.25]    # optional

With `l0_nonzeros`, every width keeps the same number of nonzero weights (so wider models are
sparser), which is how the paper compares widths "at fixed L0".
"""

from __future__ import annotations

import itertools
import math
import json
import sys
import time
from pathlib import Path

import torch

from ..circuits.prune import TARGET_LOSS, PruneSettings
from ..config import GRID_DIR, _read_toml, builtin_grids, load_config
from ..errors import SparseCircuitsError
from ..data.dataset import TokenData
from ..io import atomic_write_csv, atomic_write_text, output_folder
from ..model.gpt import SparseGPT
from ..model.sparsity import check_sparsity_budget, sparse_parameters
from ..rundir import Run, circuit_device
from ..tasks import BUILTIN_TASKS, evaluate_task, load_task
from ..train.evaluation import evaluate_run
from ..train.trainer import train_or_continue
from .claim import does_with_margin, flagged_by_audit, geomean
from ..plots import pyplot, save

GRID_KEYS = {"d_model": "model.d_model", "l0_fraction": "sparsity.l0_fraction", "keep_fraction": "model.keep_fraction",
             "l0_nonzeros": "sparsity.l0_fraction"}


def read_grid(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.is_file() and (GRID_DIR / f"{name_or_path}.toml").is_file():
        path = GRID_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        builtin = ", ".join(builtin_grids())
        raise SparseCircuitsError(f"grid not found: {name_or_path} (give a TOML file or one of {builtin})")
    grid = _read_toml(str(path))
    unknown = set(grid) - {"config", "set", "target_loss", "tasks", "grid"}
    if unknown:
        raise SparseCircuitsError(f"{path}: unknown key '{sorted(unknown)[0]}' (keys: config, set, target_loss, tasks, [grid])")
    axes = grid.get("grid", {})
    bad = set(axes) - set(GRID_KEYS)
    if bad or "d_model" not in axes or ("l0_fraction" in axes) == ("l0_nonzeros" in axes):
        raise SparseCircuitsError(f"{path}: [grid] needs a d_model list and one of l0_fraction or l0_nonzeros"
                                  f" (and optionally keep_fraction); unknown: {', '.join(sorted(bad)) or 'none'}")
    for name, values in axes.items():
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values)):
            raise SparseCircuitsError(f"{path}: [grid] {name} must be a non-empty list of positive numbers, e.g."
                                      f" {name} = [{'128' if name in ('d_model', 'l0_nonzeros') else '0.125, 0.0625'}]")
    return grid


def sparse_weight_count(config) -> int:
    """How many weights weight top-k applies to in a model of this config."""
    with torch.device("meta"):
        model = SparseGPT(config.model)
    return sum(p.numel() for p in sparse_parameters(model, config.sparsity).values())


def grid_runs(grid: dict, vocab_size: int) -> list[tuple[str, list[str]]]:
    """(run name, overrides) for every point of the grid."""
    axes = grid["grid"]
    names = list(axes)
    runs = []
    for values in itertools.product(*(axes[n] for n in names)):
        point = dict(zip(names, values))
        tag = "_".join(f"{n}-{point[n]:g}" for n in names)
        overrides = list(grid.get("set", [])) + [f"{GRID_KEYS[n]}={point[n]}" for n in names if n != "l0_nonzeros"]
        if "l0_nonzeros" in point:
            config = load_config(grid.get("config", "small"), overrides + [f"model.vocab_size={vocab_size}"])
            available = sparse_weight_count(config)
            fraction = point["l0_nonzeros"] / available
            if not 0 < fraction <= 1:
                raise SparseCircuitsError(f"l0_nonzeros {point['l0_nonzeros']} must be between 1 and the {available}"
                                          f" sparse weights of d_model {point['d_model']}")
            overrides.append(f"sparsity.l0_fraction={fraction:.6g}")
        runs.append((tag, overrides))
    return runs


def sweep(grid_path: str, out: str | Path, data_dir: str | Path, show_progress: bool = True,
          device: str | None = None) -> list[dict]:
    """Train every model of a grid (a TOML file or a built-in grid's name) on `data_dir`, prune the tasks
    each does, and write the capability-interpretability frontier (`sparsecircuits sweep`); returns its rows.
    `device`: where the models train and run ('cpu', 'cuda' or 'auto'; default: training as the config
    says, the circuits on the CPU)."""
    from ..circuits.find import NoCircuitToFind
    from ..circuits.prune import prune_or_reuse
    from ..circuits.workbench import Workbench

    grid = read_grid(grid_path)
    circuits_on = circuit_device(device)
    out = output_folder(out)
    base = grid.get("config", "small")
    target = float(grid.get("target_loss", TARGET_LOSS))
    tasks = list(BUILTIN_TASKS) if grid.get("tasks", "auto") in ("auto", "all") else list(grid["tasks"])
    vocab_size = TokenData(data_dir).vocab_size
    runs = grid_runs(grid, vocab_size)
    for _, overrides in runs:  # every point must be a valid config, with room for its L0, before anything trains
        config = load_config(base, overrides + [f"model.vocab_size={vocab_size}"])
        with torch.device("meta"):
            check_sparsity_budget(SparseGPT(config.model), config.sparsity)
    rows = []
    for index, (tag, overrides) in enumerate(runs, 1):
        run_dir = out / "runs" / tag
        print(f"[sweep {index}/{len(runs)}] {tag}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        train_or_continue(load_config(base, overrides), data_dir, run_dir, show_progress=show_progress, device=device)
        seconds = {"train": round(time.perf_counter() - started, 1)}  # near 0 for a run trained before
        started = time.perf_counter()
        run = Run.open(run_dir)
        bench = Workbench(run, circuits_on)  # the model loaded once for every task
        model, config = bench.model, run.config
        evaluation = evaluate_run(run, device=circuits_on)  # nonzeros counted from the trained weights, not from the config
        row = {"run": tag, "d_model": config.model.d_model, "l0_fraction": evaluation["l0_fraction_measured"],
               "l0_fraction_config": config.sparsity.l0_fraction, "l0_nonzeros": evaluation["nonzero_weights"],
               "keep_fraction": config.model.keep_fraction, "val_loss": evaluation["val_loss"]}
        edges, done = {}, []
        for name in tasks:
            try:
                loss = evaluate_task(model, load_task(name, model.tokenizer, "choose", model.config.ctx_len, warn=False))["loss"]
            except SparseCircuitsError:
                continue
            if does_with_margin(loss, target):  # the demo's and compare's rule
                done.append(name)
        flagged = flagged_by_audit([model], done)  # left out, as in the demo's claim (a)
        seconds["evaluate tasks"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        for name in done:
            if name in flagged:
                cues = ", ".join(flagged[name])
                print(f"{tag}: left out {Path(name).stem}: flagged by `tasks audit` ({cues})", file=sys.stderr)
                continue
            circuit_dir = out / "circuits" / tag / Path(name).stem
            try:
                circuit = prune_or_reuse(bench, name, circuit_dir, PruneSettings(target_loss=target), show_progress)
            except NoCircuitToFind as err:
                print(f"{tag}: left out {Path(name).stem}: {err}", file=sys.stderr)
                continue
            edges[Path(name).stem] = circuit.metrics["n_edges"]
        seconds["prune"] = round(time.perf_counter() - started, 1)
        row.update({"seconds_by_stage": seconds, "tasks_learned": len(edges),
                    "edges_geomean": geomean(list(edges.values())) if edges else None,
                    "edges": edges, "flagged": {Path(n).stem: cues for n, cues in flagged.items()}})
        rows.append(row)
    _common_geomean(rows)
    fields = ["run", "d_model", "l0_fraction", "l0_fraction_config", "l0_nonzeros", "keep_fraction", "val_loss", "tasks_learned", "edges_geomean",
              "common_tasks", "edges_geomean_common"]
    atomic_write_csv(out / "frontier.csv", rows, fields)
    atomic_write_text(out / "frontier.json", json.dumps(rows, indent=1))
    plot_frontier(out / "frontier.png", rows)
    return rows


def _common_geomean(rows: list[dict]) -> None:
    """Also the geometric mean over the tasks every model of the grid learned, where there are any."""
    common = set.intersection(*(set(r["edges"]) for r in rows)) if rows else set()
    for r in rows:
        r["common_tasks"] = len(common)
        r["edges_geomean_common"] = geomean([r["edges"][t] for t in common]) if common else None


def plot_frontier(path: Path, rows: list[dict]) -> None:
    plt = pyplot()
    key = "edges_geomean_common" if rows and rows[0]["common_tasks"] else "edges_geomean"
    fig, ax = plt.subplots(figsize=(6, 4))
    for width in sorted({r["d_model"] for r in rows}):
        points = sorted((r[key], r["val_loss"], r["l0_fraction"], r["l0_nonzeros"]) for r in rows
                        if r["d_model"] == width and r[key])
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"d_model {width}")
            for x, y, fraction, nonzeros in points:
                ax.annotate(f"L0 {fraction:.3g} ({nonzeros / 1000:.0f}K)", (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("geometric-mean circuit edges" + (" (tasks all models learned)" if key.endswith("common") else ""))
    ax.set_ylabel("pretraining validation loss (nats/token)")
    ax.set_title("Capability vs interpretability")
    if ax.lines:
        ax.legend(fontsize=8)
    else:  # said in words, not an empty frame
        ax.text(0.5, 0.5, "no model does a task with margin:\nno circuit to draw (train longer or wider)",
                ha="center", va="center", transform=ax.transAxes)
    save(fig, path)
