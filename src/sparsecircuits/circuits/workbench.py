"""One run opened once: its model, its node means, and each task's splits.

`prune`, `validate`, `view`, `label` and the demo take a `Workbench` wherever they take a run, so a
pipeline that works on one model (the demo prunes, validates, labels and draws several tasks of it)
loads the weights, tokenizes each task and reads the node means once. Given a run directory or a
`Run` instead, each command opens its own. The workbench's device ('cpu' by default, 'cuda' or
'auto') is where its model runs; node means are handed out on that device.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.gpt import SparseGPT
from ..rundir import Run, as_run, resolve_device
from ..tasks.records import TaskSplits
from .circuit import Circuit, ablation_values, load_task_splits


class Workbench:
    def __init__(self, run: Run | str | Path, device: str | torch.device = "cpu"):
        self.run = as_run(run)
        self.device = resolve_device(device)
        self._model: SparseGPT | None = None
        self._splits: dict[str, TaskSplits] = {}
        self._means: dict[tuple[str, str | None], dict[str, torch.Tensor]] = {}

    @classmethod
    def of(cls, run: "Workbench | Run | str | Path", device: str | torch.device = "cpu") -> "Workbench":
        """`run` itself when it is a workbench (on its own device), else a new one on `device`."""
        return run if isinstance(run, Workbench) else cls(run, device)

    @property
    def model(self) -> SparseGPT:
        """The run's model, loaded on first use; callers share it and must not change its weights."""
        if self._model is None:
            self._model = self.run.model(self.device)
        return self._model

    def splits(self, task: str) -> TaskSplits:
        if task not in self._splits:
            self._splits[task] = load_task_splits(self.model, task)
        return self._splits[task]

    def means(self, ablation: str, data_dir: str | Path | None = None, show_progress: bool = True) -> dict[str, torch.Tensor]:
        """What pruned nodes are frozen at (circuit.ablation_values), once per ablation and data."""
        key = (ablation, str(Path(data_dir).resolve()) if data_dir is not None else None)
        if key not in self._means:
            means = ablation_values(self.model, self.run, ablation, show_progress, data_dir)
            self._means[key] = {site: m.to(self.device) for site, m in means.items()}
        return self._means[key]

    def for_circuit(self, circuit: Circuit) -> "Workbench":
        """The workbench of the run `circuit` was pruned from: this one, or the kept checkpoint's when the
        circuit came from one (checked to hold the very weights it was pruned from)."""
        run = circuit.open_run(self.run)
        return self if run is self.run else Workbench(run, self.device)


def circuit_workbench(circuit: Circuit, run: "Workbench | Run | str | Path | None",
                      device: str | torch.device = "cpu") -> Workbench:
    """The workbench for a circuit: `run`'s (a workbench, a run, or its directory), or the circuit's own run,
    on `device` unless `run` is a workbench."""
    return Workbench.of(run, device).for_circuit(circuit) if run is not None else Workbench(circuit.open_run(None), device)
