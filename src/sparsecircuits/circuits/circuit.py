"""`prune` end to end, the circuit directory, and `Circuit` for using one from Python.

CIRCUIT_DIR/circuit.json holds the task, the model (run directory, config hash and the sha256 of
the weights it was pruned from, which every later use checks), the target,
the ablation, the nodes, the edges, the metrics and the pruning settings; CIRCUIT_DIR/scores.safetensors
holds every node's learned τ. The directory is written to a staging folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SparseCircuitsError
from ..model.gpt import SparseGPT
from ..rundir import Run, as_run
from ..model.sparse_kernels import sparse_weight_kernels
from ..tasks.records import TaskSplits, task_accuracy, task_loss, task_loss_interval
from ..tasks.records import load_task_splits as _load_task_splits
from ..tasks.records import task_records
from ..io import atomic_save_tensors, check_output_dir, directory_lock, load_tensors, staged_directory
from .graph import circuit_edges
from .masks import ablation_hooks
from .prune import CircuitEvaluator, PruneSettings, find_circuit, settings_dict

CIRCUIT_FILE = "circuit.json"
RANDOM_CONTROLS = 8


def ablation_values(model: SparseGPT, run: Run, ablation: str, show_progress: bool = True,
                    data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """What pruned nodes are frozen at: zeros, or node means over `data_dir` (default: the run's own data)."""
    if ablation == "zero":
        return {site: torch.zeros(width) for site, width in model.node_sites.items()}
    return run.node_means(model, show_progress=show_progress, data_dir=data_dir)


def load_task_splits(model: SparseGPT, task: str) -> TaskSplits:
    return _load_task_splits(task, model.tokenizer, max_len=model.config.ctx_len)


def nodes_of(keep: Mapping[str, torch.Tensor]) -> list[dict]:
    return [{"site": site, "index": int(i)} for site, k in keep.items() for i in k.nonzero().flatten().tolist()]


def keep_from_nodes(model: SparseGPT, nodes: list[dict]) -> dict[str, torch.Tensor]:
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    for node in nodes:
        if node["site"] not in keep or not 0 <= node["index"] < len(keep[node["site"]]):
            raise SparseCircuitsError(f"node {node['site']}:{node['index']} does not exist in this model")
        keep[node["site"]][node["index"]] = True
    return keep


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


def records_sha256(task: str) -> str:
    """A digest of a task's records, every split in order: what a circuit was pruned and chosen on."""
    _, records = task_records(task, warn=False)
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def is_current(out: str | Path, run: Run | str | Path, task: str, settings: PruneSettings) -> bool:
    """Whether `out` holds a circuit of these very weights, task records and prune settings."""
    run = as_run(run)
    path = Path(out) / CIRCUIT_FILE
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
        return (data["model"]["weights_sha256"] == run.weights_sha256
                and data.get("records_sha256") == records_sha256(task)
                and data["settings"] == settings_dict(settings) and data.get("search_trials", 0) == 0)
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def prune_or_reuse(run: Run | str | Path, task: str, out: str | Path, settings: PruneSettings,
                   show_progress: bool = True) -> "Circuit":
    """The circuit in `out` when it was pruned from these weights, records and settings; else prune
    again into `out` (replacing what an earlier `prune` wrote there)."""
    run = as_run(run)
    if is_current(out, run, task, settings):
        return Circuit.load(out)
    return prune(run, task, out, settings, show_progress=show_progress, force=True)


def write_circuit_dir(out: Path, record: dict, scores: Mapping[str, torch.Tensor], command: str = "prune") -> None:
    with staged_directory(out, command=command) as staging:
        (staging / CIRCUIT_FILE).write_text(json.dumps(record, indent=1))
        atomic_save_tensors(staging / "scores.safetensors", dict(scores))


def prune(run: Run | str | Path, task: str, out: str | Path, settings: PruneSettings | None = None,
          search_trials: int = 0, show_progress: bool = True, force: bool = False,
          data_dir: str | Path | None = None) -> "Circuit":
    """Find, measure and save the circuit of `task` in the model of `run` (a `Run` or its directory).
    `data_dir` is the text mean ablation averages over (default: the run's own data; an imported
    run has none)."""
    settings = settings or PruneSettings()
    settings.validate()
    run, out = as_run(run), Path(out)
    check_output_dir(out, "prune", force)
    with directory_lock(out):
        return _prune(run, task, out, settings, search_trials, show_progress, data_dir)


def _prune(run: Run, task: str, out: Path, settings: PruneSettings, search_trials: int, show_progress: bool,
           data_dir: str | Path | None) -> "Circuit":
    start = time.perf_counter()
    model = run.model()
    with sparse_weight_kernels(model, settings.csr_max_density) as csr_layers:
        splits = load_task_splits(model, task)
        means = ablation_values(model, run, settings.ablation, show_progress, data_dir)
        means_seconds = time.perf_counter() - start
        if search_trials > 0:
            from .search import search_settings

            settings, found = search_settings(model, splits, means, settings, search_trials, show_progress)
        else:
            found = find_circuit(model, splits, means, settings, show_progress)
        keep, scale = found["keep"], found["logit_scale"]
        record = circuit_record(run, model, task, splits, settings, keep, scale, found["evaluator"], data_dir)
    record["metrics"].update({"loss_choose": found["loss_choose"], "nodes_active_after_mask_training": found["active_after_training"],
                              "csr_layers": len(csr_layers), "seconds": round(time.perf_counter() - start, 1),
                              "seconds_by_stage": {"load_and_means": round(means_seconds, 1), **found["seconds"]}})
    record["search_trials"] = search_trials
    write_circuit_dir(out, record, found["scores"])
    return Circuit.load(out)


def circuit_record(run: Run, model: SparseGPT, task: str, splits: TaskSplits, settings: PruneSettings,
                   keep: Mapping[str, torch.Tensor], scale: float, evaluator: CircuitEvaluator,
                   data_dir: str | Path | None) -> dict:
    """circuit.json's content for these kept nodes: nodes, edges and the test-record metrics."""
    nodes, edges = nodes_of(keep), circuit_edges(model, keep)
    metrics = circuit_metrics(evaluator, keep, scale, settings.seed)
    metrics.update({"n_nodes": len(nodes), "n_edges": len(edges), "logit_scale": scale})
    return {
        "format": 1,
        "task": splits.name,
        "task_source": task,
        "model": {"run_dir": str(run.path.resolve()), "name": run.path.name, "config_hash": run.config.hash(),
                  "weights_sha256": run.weights_sha256},
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


@dataclass
class Circuit:
    directory: Path
    data: dict

    @classmethod
    def load(cls, directory: str | Path) -> "Circuit":
        directory = Path(directory)
        path = directory / CIRCUIT_FILE
        if not path.is_file():
            raise SparseCircuitsError(f"{directory} holds no circuit ({CIRCUIT_FILE} is missing): make one with `sparsecircuits prune`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise SparseCircuitsError(f"{path} is not valid JSON: prune the task again") from None
        return cls(directory, data)

    task = property(lambda self: self.data["task"])
    nodes = property(lambda self: self.data["nodes"])
    edges = property(lambda self: self.data["edges"])
    metrics = property(lambda self: self.data["metrics"])
    logit_scale = property(lambda self: self.data["metrics"].get("logit_scale", 1.0))
    means_data = property(lambda self: self.data.get("means_data"))  # the --data prune averaged over, or None

    @property
    def run_dir(self) -> Path:
        return Path(self.data["model"]["run_dir"])

    def open_run(self, run: Run | str | Path | None = None) -> Run:
        """The circuit's run (or `run`, when it moved), checked to hold the very weights it was pruned from."""
        if run is None:
            if not (self.run_dir / "config.json").is_file():
                raise SparseCircuitsError(f"the circuit's model {self.run_dir} is not there any more: pass the run"
                                          " directory it came from")
            run = self.run_dir
        run = as_run(run)
        run.check_circuit(self.data, self.directory)
        return run

    def load_model(self, run: Run | str | Path | None = None) -> SparseGPT:
        """The circuit's model, checked to hold the very weights it was pruned from."""
        return self.open_run(run).model()

    def keep(self, model: SparseGPT) -> dict[str, torch.Tensor]:
        return keep_from_nodes(model, self.nodes)

    def scores(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.directory / "scores.safetensors")

    @contextmanager
    def only(self, model: SparseGPT, means: Mapping[str, torch.Tensor] | None = None):
        """Run `model` with only the circuit kept, every other node ablated as when it was pruned."""
        if means is None:
            means = ablation_values(model, self.open_run(), self.data["ablation"], False, self.means_data)
        with model.hooks(ablation_hooks(model, self.keep(model), means)):
            yield model
