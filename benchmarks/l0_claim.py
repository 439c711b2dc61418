"""Claim (a) along the sparsity axis: a `sweep` over L0 fractions at one width, against the dense
baselines of a `demo` of the same shape, corpus and steps.

For every L0 of the sweep: validation loss, tasks learned (done with margin, not flagged), weight
edges of its circuits over the tasks every L0 has a circuit for (geometric mean), and claim (a) at
the demo's target against each of the demo's baselines (the dense model at the demo's sparse loss,
the stronger dense model): the geometric mean of dense / sparse edges over the tasks every L0 and
that baseline share, with its 95% bootstrap interval. Writes CSV and PNG.

    python benchmarks/l0_claim.py SWEEP_DIR DEMO_DIR --out docs/l0-claim-cpu

The sweep prunes each task once (seed 0); the demo's dense circuits are the best of its pruning
seeds, so the dense side is the smaller of the two efforts: the ratio is conservative.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from sparsecircuits.experiments.claim import geomean, ratio_statistics
from sparsecircuits.io import atomic_write_csv
from sparsecircuits.plots import pyplot, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("demo", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the CSV and PNG")
    args = parser.parse_args()
    rows = json.loads((args.sweep / "frontier.json").read_text())
    summary = json.loads((args.demo / "summary.json").read_text())
    target = summary["target_loss"]
    dense = {}  # baseline -> {task: dense edges at the target}
    for baseline, per_target in summary["claim"].items():
        at = [c for c in per_target if math.isclose(c["target_loss"], target)]
        if at:
            dense[baseline] = {t: r["dense_edges"] for t, r in at[0]["tasks"].items()}
    common = set.intersection(*(set(r["edges"]) for r in rows)) if rows else set()  # every L0 has a circuit
    shared = {b: common & set(edges) for b, edges in dense.items()}  # ... and so has the baseline
    table = []
    for r in sorted(rows, key=lambda r: -r["l0_fraction_config"]):
        row = {"l0_fraction": r["l0_fraction_config"], "l0_nonzeros": r["l0_nonzeros"], "val_loss": round(r["val_loss"], 4),
               "tasks_learned": r["tasks_learned"], "common_tasks": len(common),
               "sparse_edges_geomean": geomean([r["edges"][t] for t in common]) if common else None}
        for baseline, edges in dense.items():
            stats = ratio_statistics({t: edges[t] / max(r["edges"][t], 1) for t in shared[baseline]})
            row[f"ratio_{baseline}"] = stats["geomean"]
            row[f"ratio_{baseline}_interval"] = stats["interval"]
            row[f"ratio_{baseline}_tasks"] = len(shared[baseline])
        table.append(row)
    print(f"tasks every L0 does ({len(common)}): {', '.join(sorted(common)) or 'none'}; shared with "
          + "; ".join(f"{b}: {', '.join(sorted(t)) or 'none'}" for b, t in shared.items()))
    for row in table:
        ratios = "  ".join(f"{b} {row[f'ratio_{b}']:.2f} [{row[f'ratio_{b}_interval'][0]:.2f}, {row[f'ratio_{b}_interval'][1]:.2f}]"
                           for b in dense if row[f"ratio_{b}"] is not None)
        edges = f"{row['sparse_edges_geomean']:.1f}" if row["sparse_edges_geomean"] else "-"
        print(f"L0 {row['l0_fraction']:<8g} val {row['val_loss']:.4f}  tasks {row['tasks_learned']:2d}  edges {edges:>7s}  {ratios}")
    atomic_write_csv(args.out.with_suffix(".csv"), [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()}
                                                    for row in table], list(table[0]))
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    x = [row["l0_fraction"] for row in table]
    axes[0].plot(x, [row["val_loss"] for row in table], "o-")
    axes[0].set_ylabel("validation loss")
    twin = axes[0].twinx()
    twin.plot(x, [row["tasks_learned"] for row in table], "s--", color="#9ca3af")
    twin.set_ylabel("tasks learned (grey)")
    axes[1].plot(x, [row["sparse_edges_geomean"] or float("nan") for row in table], "o-")
    axes[1].set_ylabel(f"weight edges, geometric mean ({len(common)} tasks)")
    axes[1].set_yscale("log")
    for baseline in dense:
        axes[2].plot(x, [row[f"ratio_{baseline}"] or float("nan") for row in table], "o-",
                     label=f"{baseline} ({len(shared[baseline])} tasks)")
    axes[2].set_ylabel(f"dense / sparse weight edges at {target:g}")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L0 fraction")
    fig.suptitle("Claim (a) along the sparsity axis (d_model 128, the demo's steps)")
    fig.tight_layout()
    save(fig, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
