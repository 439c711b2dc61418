"""Clean-up checks on a circuit: what the paper's authors did by hand before reading one (App. C).

Each check changes one thing inside the circuit (every other node ablated as when it was pruned) and
reports what it costs: the circuit's task loss on the test records with the change, less without it
(uncalibrated, as `loss_circuit`). A cost near zero says the part is simpler than it looks:

- a head's query (then its key) replaced by its mean over the task's training records, at every
  position: a constant query means the head attends by its keys alone (the paper's quote head: 2.6e-5);
- each node replaced by a two-level step fitted on the training records (the threshold and two levels
  that best fit its values): a node that is in effect a binary feature;
- each node dropped alone (ablated as pruned nodes are): the nodes that cost less than
  `DROP_THRESHOLD` are ones the circuit does without.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import atomic_write_text, check_writable, directory_lock
from ..model.gpt import SparseGPT
from ..rundir import Run
from ..tasks.records import TaskSplits, TokenizedTask
from .circuit import Circuit
from .find import CircuitEvaluator
from .workbench import Workbench, circuit_workbench

CLEANUP_FILE = "cleanup.json"

DROP_THRESHOLD = 0.005  # nats: a node whose removal costs less is reported as one to drop


@torch.no_grad()
def site_values(model: SparseGPT, task: TokenizedTask, hooks: Mapping, site: str) -> torch.Tensor:
    """(tokens, width) values at `site` at every real (not padding) position of the task's prompts."""
    values: list[torch.Tensor] = []

    def record(x: torch.Tensor, _site: str) -> None:
        values.append(x.detach())

    device = next(model.parameters()).device
    with model.hooks(hooks), model.hooks({site: record}):
        out = []
        for group in task.width_groups():
            tokens, last, _, _ = task.batch(group)
            values.clear()
            model(tokens.to(device), at=last, stop=None)
            real = torch.arange(tokens.shape[1])[None, :] <= last[:, None]
            out.append(values[0][real.to(device)])
    return torch.cat(out)


def two_level_step(values: torch.Tensor) -> tuple[float, float, float]:
    """(threshold, low, high): the step x -> low if x < threshold else high with the least squared
    error over `values` (1-D), found by scanning every split of the sorted values."""
    x, _ = values.double().cpu().sort()
    n = len(x)
    if n < 2 or x[0] == x[-1]:
        level = float(x.mean()) if n else 0.0
        return float("inf"), level, level
    prefix = torch.cat([torch.zeros(1, dtype=x.dtype), x.cumsum(0)])
    prefix_sq = torch.cat([torch.zeros(1, dtype=x.dtype), (x * x).cumsum(0)])
    k = torch.arange(1, n, dtype=x.dtype)  # the low part holds the first k values
    sse = (prefix_sq[1:n] - prefix[1:n] ** 2 / k) + ((prefix_sq[n] - prefix_sq[1:n]) - (prefix[n] - prefix[1:n]) ** 2 / (n - k))
    sse[x[1:] == x[:-1]] = float("inf")  # a threshold must fall between two different values
    best = int(sse.argmin()) + 1
    return float((x[best - 1] + x[best]) / 2), float(prefix[best] / best), float((prefix[n] - prefix[best]) / (n - best))


def cleanup_checks(model: SparseGPT, splits: TaskSplits, means: Mapping[str, torch.Tensor],
                   keep: Mapping[str, torch.Tensor], show_progress: bool = True) -> dict:
    """Every check of the module docstring on the circuit `keep`: its loss, and per head and node the cost."""
    evaluator = CircuitEvaluator(model, splits, means)
    circuit_hooks = evaluator.hooks(keep)
    base = evaluator.loss(keep, "test")

    def cost(hooks: Mapping, nodes: Mapping[str, torch.Tensor] = keep) -> float:
        with model.hooks(hooks):
            return evaluator.loss(nodes, "test") - base

    d_head = model.config.d_head
    heads = []
    for site in sorted({s.rsplit(".", 1)[0] for s in keep if s.endswith(("attn.q", "attn.k"))}):
        layer = int(site.split(".")[0])
        for head in sorted({int(i) // d_head for part in ("q", "k") for i in keep[f"{site}.{part}"].nonzero().flatten()}):
            row = {"layer": layer, "head": head}
            for part in ("q", "k"):
                part_site = f"{site}.{part}"
                channels = slice(head * d_head, (head + 1) * d_head)
                mean = site_values(model, splits.train, circuit_hooks, part_site)[:, channels].mean(0)

                def constant(x: torch.Tensor, _site: str, channels=channels, mean=mean) -> torch.Tensor:
                    x = x.clone()
                    x[..., channels] = mean.to(x.dtype)
                    return x
                row[f"cost_constant_{part}"] = cost({part_site: constant})
            heads.append(row)

    nodes = [(site, int(i)) for site, k in keep.items() for i in k.nonzero().flatten().tolist()]
    per_node = []
    values_at = {site: site_values(model, splits.train, circuit_hooks, site) for site in {s for s, _ in nodes}}
    for site, index in tqdm(nodes, desc="clean-up checks", unit="node", disable=not show_progress, file=sys.stderr):
        threshold, low, high = two_level_step(values_at[site][:, index])

        def step(x: torch.Tensor, _site: str, index=index, threshold=threshold, low=low, high=high) -> torch.Tensor:
            x = x.clone()
            x[..., index] = torch.where(x[..., index] < threshold, low, high).to(x.dtype)
            return x
        without = {s: k.clone() for s, k in keep.items()}
        without[site][index] = False
        per_node.append({"site": site, "index": index, "step": {"threshold": threshold, "low": low, "high": high},
                         "cost_binarised": cost({site: step}), "cost_dropped": cost({}, without)})
    droppable = [{"site": n["site"], "index": n["index"], "cost_dropped": n["cost_dropped"]}
                 for n in per_node if n["cost_dropped"] < DROP_THRESHOLD]
    return {"loss_circuit": base, "heads": heads, "nodes": per_node, "drop_threshold": DROP_THRESHOLD,
            "droppable": droppable}


def cleanup(circuit_dir: str | Path, run: Workbench | Run | str | Path | None = None, task: str | Path | None = None,
            show_progress: bool = True, device: str = "cpu") -> dict:
    """The clean-up checks of a circuit directory, written to CIRCUIT_DIR/cleanup.json. `device`: where the
    model runs ('cpu', 'cuda' or 'auto'), unless `run` is a workbench."""
    circuit = Circuit.load(circuit_dir)
    check_writable(Path(circuit_dir) / CLEANUP_FILE, "CIRCUIT_DIR")
    bench = circuit_workbench(circuit, run, device)
    with directory_lock(Path(circuit_dir)):
        model = bench.model
        result = cleanup_checks(model, bench.splits(circuit.task_source(task)),
                                bench.means(circuit.data["ablation"], circuit.means_data, show_progress),
                                circuit.keep(model), show_progress)
        result["task"] = circuit.task
        atomic_write_text(Path(circuit_dir) / CLEANUP_FILE, json.dumps(result, indent=1))
    return result


def format_cleanup(result: dict) -> str:
    lines = [f"circuit loss {result['loss_circuit']:.4f} (test, uncalibrated); cost of each change in nats:"]
    for h in result["heads"]:
        lines.append(f"  head {h['layer']}.{h['head']}: query constant {h['cost_constant_q']:+.5f},"
                     f" key constant {h['cost_constant_k']:+.5f}")
    binary = sorted(result["nodes"], key=lambda n: n["cost_binarised"])
    lines.append("  nodes as two-level steps (cheapest first): " + ", ".join(
        f"{n['site']}:{n['index']} {n['cost_binarised']:+.4f}" for n in binary[:10]) + (" ..." if len(binary) > 10 else ""))
    lines.append(f"  nodes whose removal costs less than {result['drop_threshold']}: " + (", ".join(
        f"{n['site']}:{n['index']} {n['cost_dropped']:+.4f}" for n in result["droppable"]) or "none"))
    return "\n".join(lines)
