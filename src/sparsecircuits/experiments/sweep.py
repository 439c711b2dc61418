"""`sparsecircuits sweep --grid GRID.toml --out DIR`: train a grid of models over width and L0
fraction (and optionally the AbsTopK keep fraction), prune the tasks on each, and draw the
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
    l0_fraction = [0.25, 0.125, 0.0625]
    keep_fraction = [0.25]    # optional
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from ..config import _read_toml, load_config
from ..errors import SparseCircuitsError
from ..io import atomic_write_csv, atomic_write_text
from .plots import pyplot, save
from ..model.gpt import SparseGPT
from ..tasks import BUILTIN_TASKS, evaluate_task, load_task
from ..train.evaluation import evaluate_run
from ..train.trainer import train_or_continue
from .demo import geomean

GRID_KEYS = {"d_model": "model.d_model", "l0_fraction": "sparsity.l0_fraction", "keep_fraction": "model.keep_fraction"}
GRID_DIR = Path(__file__).parent.parent / "configs" / "grids"


def read_grid(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.is_file() and (GRID_DIR / f"{name_or_path}.toml").is_file():
        path = GRID_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        builtin = ", ".join(sorted(p.stem for p in GRID_DIR.glob("*.toml")))
        raise SparseCircuitsError(f"grid not found: {name_or_path} (give a TOML file or one of {builtin})")
    grid = _read_toml(str(path))
    unknown = set(grid) - {"config", "set", "target_loss", "tasks", "grid"}
    if unknown:
        raise SparseCircuitsError(f"{path}: unknown key '{sorted(unknown)[0]}' (keys: config, set, target_loss, tasks, [grid])")
    axes = grid.get("grid", {})
    bad = set(axes) - set(GRID_KEYS)
    if bad or "d_model" not in axes or "l0_fraction" not in axes:
        raise SparseCircuitsError(f"{path}: [grid] needs d_model and l0_fraction lists (and optionally keep_fraction);"
                                  f" unknown: {', '.join(sorted(bad)) or 'none'}")
    return grid


def grid_runs(grid: dict) -> list[tuple[str, list[str]]]:
    """(run name, overrides) for every point of the grid."""
    axes = grid["grid"]
    names = list(axes)
    runs = []
    for values in itertools.product(*(axes[n] for n in names)):
        point = dict(zip(names, values))
        tag = "_".join(f"{n}-{point[n]:g}" for n in names)
        runs.append((tag, list(grid.get("set", [])) + [f"{GRID_KEYS[n]}={point[n]}" for n in names]))
    return runs


def sweep(grid_path: str, out: str | Path, data_dir: str | Path, show_progress: bool = True) -> list[dict]:
    from ..circuits import PruneSettings, prune

    grid = read_grid(grid_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = grid.get("config", "small")
    target = float(grid.get("target_loss", 0.15))
    tasks = list(BUILTIN_TASKS) if grid.get("tasks", "auto") in ("auto", "all") else list(grid["tasks"])
    for _, overrides in grid_runs(grid):
        load_config(base, overrides)  # every point must be a valid config before anything trains
    rows = []
    for index, (tag, overrides) in enumerate(grid_runs(grid), 1):
        run_dir = out / "runs" / tag
        print(f"[sweep {index}/{len(grid_runs(grid))}] {tag}", file=sys.stderr, flush=True)
        train_or_continue(load_config(base, overrides), data_dir, run_dir, show_progress=show_progress)
        model = SparseGPT.from_pretrained(run_dir)
        config = model.run_config
        row = {"run": tag, "d_model": config.model.d_model, "l0_fraction": config.sparsity.l0_fraction,
               "keep_fraction": config.model.keep_fraction, "val_loss": evaluate_run(run_dir)["val_loss"]}
        edges = {}
        for name in tasks:
            try:
                loss = evaluate_task(model, load_task(name, model.tokenizer, "test", model.config.ctx_len, warn=False))["loss"]
            except SparseCircuitsError:
                continue
            if loss > target:
                continue
            circuit_dir = out / "circuits" / tag / Path(name).stem
            if not (circuit_dir / "circuit.json").is_file():
                prune(run_dir, name, circuit_dir, PruneSettings(target_loss=target), show_progress=show_progress, force=True)
            edges[Path(name).stem] = json.loads((circuit_dir / "circuit.json").read_text())["metrics"]["n_edges"]
        row.update({"tasks_learned": len(edges), "edges_geomean": geomean(list(edges.values())) if edges else None,
                    "edges": edges})
        rows.append(row)
    _common_geomean(rows)
    fields = ["run", "d_model", "l0_fraction", "keep_fraction", "val_loss", "tasks_learned", "edges_geomean",
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
        points = sorted((r[key], r["val_loss"], r["l0_fraction"]) for r in rows if r["d_model"] == width and r[key])
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"d_model {width}")
            for x, y, l0 in points:
                ax.annotate(f"L0 {l0:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("geometric-mean circuit edges" + (" (tasks all models learned)" if key.endswith("common") else ""))
    ax.set_ylabel("pretraining validation loss (nats/token)")
    ax.set_title("Capability vs interpretability")
    ax.legend(fontsize=8)
    save(fig, path)
