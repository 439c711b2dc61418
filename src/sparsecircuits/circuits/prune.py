"""`prune`: the smallest circuit of a run's task, found (`find.find_circuit`), measured on the test
records and written as a circuit directory (`circuit.Circuit` reads one)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from collections.abc import Mapping
from pathlib import Path

import torch

from ..io import atomic_save_tensors, check_output_dir, directory_lock, staged_directory
from ..errors import SparseCircuitsError
from ..schemas import PARSE_ERRORS
from ..model.gpt import SparseGPT
from ..model.sparse_kernels import sparse_weight_kernels
from ..rundir import Run, as_run
from ..tasks.records import TaskSplits, task_accuracy, task_loss, task_loss_interval
from .circuit import CIRCUIT_ENTRIES, CIRCUIT_FILE, Circuit, records_sha256, nodes_of
from .find import (TARGET_LOSS, CircuitEvaluator, PruneSettings, find_circuit, full_model_loss, require_reachable,
                   settings_dict)
from .edges import find_edge_circuit
from .graph import HEADLINE_KIND, circuit_edges, edge_counts, weight_edge_count
from .search import search_settings
from .workbench import Workbench

__all__ = ["TARGET_LOSS", "PruneSettings", "circuit_metrics", "circuit_record", "is_current", "prune", "prune_or_reuse",
           "write_circuit_dir"]

RANDOM_CONTROLS = 8
CIRCUIT_FORMAT = 2  # 2: n_edges counts weight edges only and metrics say whether the target was reached (1 counted every kind)


def random_same_size(keep: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random node set with the same number of nodes at every site."""
    out = {}
    for site, k in keep.items():
        chosen = torch.zeros_like(k)
        chosen[torch.randperm(len(k), generator=generator)[: int(k.sum())]] = True
        out[site] = chosen
    return out


def circuit_metrics(evaluator: CircuitEvaluator, keep: Mapping[str, torch.Tensor], scale: float, seed: int = 0) -> dict:
    """Losses on the test records: full model, circuit alone (`loss_circuit`, no calibration, as
    the node count was chosen, with a 95% bootstrap interval over records; `loss_circuit_calibrated`
    with its logit scale), circuit ablated, the empty circuit (every node ablated: bigram table and
    means alone), and random node sets of the same size per site (each with its own fitted logit
    scale, compared with the calibrated circuit)."""
    circuit_raw = evaluator.logits(keep)
    inverse = {site: ~k for site, k in keep.items()}
    ablated = evaluator.logits(inverse)
    generator = torch.Generator().manual_seed(seed)
    # Each random set gets its own logit scale, fitted like the circuit's.
    random_losses = [evaluator.calibrated(random_same_size(keep, generator))[0] for _ in range(RANDOM_CONTROLS)]
    return {
        "loss_full_model": evaluator.loss(None),
        "loss_circuit": float(task_loss(circuit_raw)),
        "loss_circuit_interval": task_loss_interval(circuit_raw, seed),
        "loss_circuit_calibrated": float(task_loss(circuit_raw * scale)),
        "loss_circuit_ablated": float(task_loss(ablated)),
        "loss_circuit_ablated_interval": task_loss_interval(ablated, seed),
        "loss_empty_circuit": evaluator.loss({site: torch.zeros_like(k) for site, k in keep.items()}),
        "loss_random_same_size": sum(random_losses) / len(random_losses),
        "loss_random_draws": [round(x, 5) for x in random_losses],
        "accuracy_full_model": task_accuracy(evaluator.logits(None)),
        "accuracy_circuit": task_accuracy(circuit_raw * scale),
    }


def is_current(out: str | Path, run: Run | str | Path, task: str, settings: PruneSettings) -> bool:
    """Whether `out` holds a circuit of these very weights, task records and prune settings."""
    run = as_run(run)
    path = Path(out) / CIRCUIT_FILE
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
        return (data.get("format", 1) >= CIRCUIT_FORMAT  # older circuits are pruned again (their sizes were counted otherwise)
                and data["model"]["weights_sha256"] == run.weights_sha256
                and data.get("records_sha256") == records_sha256(task)
                # through PruneSettings, so settings added since the circuit was made compare as their defaults;
                # a circuit with its edge circuit serves a request for the node circuit alone
                and replace(PruneSettings.from_record(data["settings"], str(path)), edges=settings.edges and "edge_circuit" in data) == settings
                and data.get("search_trials", 0) == 0)
    except (KeyError, TypeError, AttributeError, SparseCircuitsError, *PARSE_ERRORS):  # damaged, or made otherwise: pruned again
        return False


def prune_or_reuse(run: Workbench | Run | str | Path, task: str, out: str | Path, settings: PruneSettings,
                   show_progress: bool = True) -> "Circuit":
    """The circuit in `out` when it was pruned from these weights, records and settings; else prune
    again into `out` (replacing what an earlier `prune` wrote there)."""
    if is_current(out, Workbench.of(run).run, task, settings):
        return Circuit.load(out)
    return prune(run, task, out, settings, show_progress=show_progress, force=True)


def write_circuit_dir(out: Path, record: dict, scores: Mapping[str, torch.Tensor], command: str = "prune") -> None:
    with staged_directory(out, command=command) as staging:
        (staging / CIRCUIT_FILE).write_text(json.dumps(record, indent=1))
        atomic_save_tensors(staging / "scores.safetensors", dict(scores))


def prune(run: Workbench | Run | str | Path, task: str, out: str | Path, settings: PruneSettings | None = None,
          search_trials: int = 0, show_progress: bool = True, force: bool = False,
          data_dir: str | Path | None = None, device: str = "cpu") -> "Circuit":
    """Find, measure and save the circuit of `task` in the model of `run` (a `Workbench`, a `Run` or
    its directory). `data_dir` is the text mean ablation averages over (default: the run's own data;
    an imported run has none). `device`: where the model runs ('cpu', 'cuda' or 'auto'), unless `run` is a
    workbench."""
    settings = settings or PruneSettings()
    settings.validate()
    bench, out = Workbench.of(run, device), Path(out)
    check_output_dir(out, "prune", force, replaces=CIRCUIT_ENTRIES,
                     inputs=[("the run", bench.run.path), ("the task file", task if Path(task).is_file() else None),
                             ("--data", data_dir)])
    with directory_lock(out):
        return _prune(bench, task, out, settings, search_trials, show_progress, data_dir)


def _prune(bench: Workbench, task: str, out: Path, settings: PruneSettings, search_trials: int, show_progress: bool,
           data_dir: str | Path | None) -> "Circuit":
    start = time.perf_counter()
    run, model = bench.run, bench.model
    with sparse_weight_kernels(model, settings.csr_max_density) as csr_layers:
        splits = bench.splits(task)
        require_reachable(full_model_loss(model, splits), settings, splits.name)  # before the node means: seconds, not minutes
        means = bench.means(settings.ablation, data_dir, show_progress)
        means_seconds = time.perf_counter() - start
        if search_trials > 0:
            settings, found = search_settings(model, splits, means, settings, search_trials, show_progress)
        else:
            found = find_circuit(model, splits, means, settings, show_progress)
        keep, scale = found["keep"], found["logit_scale"]
        record = circuit_record(run, model, task, splits, settings, keep, scale, found["evaluator"], data_dir, out)
    record["metrics"].update({"loss_choose": found["loss_choose"], "reached": found["reached"],
                              "nodes_active_after_mask_training": found["active_after_training"],
                              "csr_layers": len(csr_layers), "seconds": round(time.perf_counter() - start, 1),
                              "seconds_by_stage": {"load_and_means": round(means_seconds, 1), **found["seconds"]}})
    record["search_trials"] = search_trials
    if settings.edges:  # the node circuit fixed, with dense kernels: edge masks change the weights
        record["edge_circuit"] = edge_circuit_record(model, splits, means, keep, settings, show_progress)
    write_circuit_dir(out, record, found["scores"])
    return Circuit.load(out)


def edge_circuit_record(model: SparseGPT, splits: TaskSplits, means: Mapping[str, torch.Tensor],
                        keep: Mapping[str, torch.Tensor], settings: PruneSettings, show_progress: bool) -> dict:
    """circuit.json's `edge_circuit`: the nodes and weight edges edge pruning keeps (with the residual,
    q-k and embedding links of those nodes), its losses on the choose and test records (uncalibrated,
    as the node circuit's `loss_circuit`) and its sizes."""
    found = find_edge_circuit(model, splits, means, keep, settings, show_progress)
    edges = found["edges"] + [e for e in circuit_edges(model, found["keep"]) if e["kind"] != HEADLINE_KIND]
    return {"nodes": nodes_of(found["keep"]), "edges": edges,
            "metrics": {"n_nodes": int(sum(k.sum() for k in found["keep"].values())), "n_edges": len(found["edges"]),
                        "n_edges_by_kind": edge_counts(edges), "weight_edges_before": found["candidates"],
                        "loss_circuit": found["loss"], "loss_choose": found["loss_choose"], "reached": found["reached"],
                        "nodes_dropped": found["dropped_nodes"], "seconds": found["seconds"]}}


def stored_task_source(task: str, out: Path) -> str:
    """How circuit.json names its task so that it is found from any folder: a built-in name as is;
    a file relative to the circuit folder when it lies inside it, else its absolute path."""
    path = Path(task)
    if not path.is_file():
        return task
    path, folder = path.resolve(), Path(out).resolve()
    return str(path.relative_to(folder)) if folder in path.parents else str(path)


def circuit_record(run: Run, model: SparseGPT, task: str, splits: TaskSplits, settings: PruneSettings,
                   keep: Mapping[str, torch.Tensor], scale: float, evaluator: CircuitEvaluator,
                   data_dir: str | Path | None, out: Path) -> dict:
    """circuit.json's content for these kept nodes: nodes, edges and the test-record metrics."""
    nodes, edges = nodes_of(keep), circuit_edges(model, keep)
    metrics = circuit_metrics(evaluator, keep, scale, settings.seed)
    metrics.update({"n_nodes": len(nodes), "n_edges": weight_edge_count(edges), "n_edges_by_kind": edge_counts(edges),
                    "logit_scale": scale})
    return {
        "format": CIRCUIT_FORMAT,
        "task": splits.name,
        "task_source": stored_task_source(task, out),
        "model": {"run_dir": str(run.path.resolve()), "name": run.path.name, "config_hash": run.config.hash(),
                  "weights_sha256": run.weights_sha256, **({"step": run.step} if run.step is not None else {})},
        "target_loss": settings.target_loss,
        "ablation": settings.ablation,
        "means_data": str(Path(data_dir).resolve()) if data_dir is not None else None,  # None: the run's own data
        "records": splits.counts(),
        "records_sha256": records_sha256(task),
        "nodes": nodes,
        "edges": edges,
        "metrics": metrics,
        "settings": settings_dict(settings),
        "search_trials": 0,
    }
