"""The circuit directory, and `Circuit` for using one from Python (`prune.prune` makes one).

CIRCUIT_DIR/circuit.json holds the task, the model (run directory, config hash and the sha256 of
the weights it was pruned from, which every later use checks), the target,
the ablation, the nodes, the edges, the metrics and the pruning settings; CIRCUIT_DIR/scores.safetensors
holds every node's learned τ. The directory is written to a staging folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import schemas
from ..errors import SparseCircuitsError, path_argument
from ..io import load_tensors
from ..model.gpt import SparseGPT
from ..rundir import Run, as_run
from ..schemas import read_json
from ..tasks.records import TaskSplits, task_records
from ..tasks.records import load_task_splits as _load_task_splits
from .graph import edge_counts, weight_edge_count
from .settings import PruneSettings
from .masks import ablation_hooks

CIRCUIT_FILE = "circuit.json"
# What a circuit folder holds (what `prune --force` may replace): prune's files and validate's, view's, label's,
# cleanup's and paths'.
CIRCUIT_ENTRIES = frozenset({CIRCUIT_FILE, "scores.safetensors", "validation.json", "circuit.html", "circuit.md", "labels.json", "cleanup.json",
                              "paths.json"})


def ablation_values(model: SparseGPT, run: Run, ablation: str, show_progress: bool = True,
                    data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """What pruned nodes are frozen at: zeros, or node means over `data_dir` (default: the run's own data)."""
    if ablation == "zero":
        return {site: torch.zeros(width) for site, width in model.node_sites.items()}
    return run.node_means(model, show_progress=show_progress, data_dir=data_dir)


def load_task_splits(model: SparseGPT, task: str) -> TaskSplits:
    return _load_task_splits(task, model.tokenizer, max_len=model.config.ctx_len)


def records_sha256(task: str) -> str:
    """A digest of a task's records, every split in order: what a circuit was pruned and chosen on."""
    _, records = task_records(task, warn=False)
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def nodes_of(keep: Mapping[str, torch.Tensor]) -> list[dict]:
    return [{"site": site, "index": int(i)} for site, k in keep.items() for i in k.nonzero().flatten().tolist()]


def keep_from_nodes(model: SparseGPT, nodes: list[dict]) -> dict[str, torch.Tensor]:
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    for node in nodes:
        if node["site"] not in keep or not 0 <= node["index"] < len(keep[node["site"]]):
            raise SparseCircuitsError(f"node {node['site']}:{node['index']} does not exist in this model")
        keep[node["site"]][node["index"]] = True
    return keep


@dataclass
class Circuit:
    directory: Path
    data: dict

    @classmethod
    def load(cls, directory: str | Path) -> "Circuit":
        """The circuit directory `directory` (its circuit.json, checked)."""
        directory = path_argument(directory, "Circuit.load's directory")
        path = directory / CIRCUIT_FILE
        if not path.is_file():
            raise SparseCircuitsError(f"{directory} holds no circuit ({CIRCUIT_FILE} is missing): make one with `sparsecircuits prune`")
        data = read_json(path, schemas.CIRCUIT, "prune the task again")
        PruneSettings.from_record(data["settings"], str(path))
        if data.get("format", 1) < 2:  # format 1 counted every kind of edge in n_edges: count as the paper does
            data["metrics"].update(n_edges=weight_edge_count(data["edges"]), n_edges_by_kind=edge_counts(data["edges"]))
        return cls(directory, data)

    task = property(lambda self: self.data["task"])
    nodes = property(lambda self: self.data["nodes"])
    edges = property(lambda self: self.data["edges"])
    metrics = property(lambda self: self.data["metrics"])
    logit_scale = property(lambda self: self.data["metrics"].get("logit_scale", 1.0))
    means_data = property(lambda self: self.data.get("means_data"))  # the --data prune averaged over, or None

    def task_source(self, moved_to: str | Path | None = None) -> str:
        """The task the circuit was pruned on: a built-in name, or its file (found from any folder: an
        absolute path, or one relative to the circuit folder), or `moved_to` when the file moved,
        checked to hold the very records the circuit was pruned on."""
        if moved_to is not None:
            if records_sha256(str(moved_to)) != self.data.get("records_sha256"):
                raise SparseCircuitsError(f"--task {moved_to} holds other records than {self.directory} was pruned on:"
                                          " give the task file it was pruned from")
            return str(moved_to)
        stored = self.data["task_source"]
        inside = self.directory / stored
        if not Path(stored).is_absolute() and inside.is_file():
            return str(inside)
        if (Path(stored).suffix or "/" in stored) and not Path(stored).is_file():
            raise SparseCircuitsError(f"the task file {stored} that {self.directory} was pruned on is not there any more:"
                                      " pass --task FILE (the same records, moved)")
        return stored

    @property
    def run_dir(self) -> Path:
        return Path(self.data["model"]["run_dir"])

    def open_run(self, run: Run | str | Path | None = None) -> Run:
        """The circuit's run (or `run`, when it moved), at the kept checkpoint it was pruned from if
        any, checked to hold the very weights it was pruned from."""
        if run is None:
            if not (self.run_dir / "config.json").is_file():
                raise SparseCircuitsError(f"the circuit's model {self.run_dir} is not there any more: pass the run"
                                          " directory it came from")
            run = self.run_dir
        run = as_run(run)
        step = self.data["model"].get("step")
        if step is not None and run.step != step:
            run = Run.open(run.path).at_step(step)
        run.check_circuit(self.data, self.directory)
        return run

    def load_model(self, run: Run | str | Path | None = None) -> SparseGPT:
        """The circuit's model, checked to hold the very weights it was pruned from."""
        return self.open_run(run).model()

    def keep(self, model: SparseGPT) -> dict[str, torch.Tensor]:
        """{site: bool vector of the kept nodes} for `model`."""
        return keep_from_nodes(model, self.nodes)

    def scores(self) -> dict[str, torch.Tensor]:
        """Every node's learned τ (scores.safetensors), by site."""
        return load_tensors(self.directory / "scores.safetensors")

    @contextmanager
    def only(self, model: SparseGPT, means: Mapping[str, torch.Tensor] | None = None):
        """Run `model` with only the circuit kept, every other node ablated as when it was pruned."""
        if means is None:
            means = ablation_values(model, self.open_run(), self.data["ablation"], False, self.means_data)
        with model.hooks(ablation_hooks(model, self.keep(model), means)):
            yield model
