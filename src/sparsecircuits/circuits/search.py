"""`prune --search N`: an Optuna search over the pruning hyperparameters, keeping the smallest
circuit that meets the target (the paper's per-task Bayesian search, at a smaller budget)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping

import torch

from ..model.gpt import SparseGPT
from ..tasks.records import TaskSplits
from .find import PruneSettings, find_circuit


def search_settings(model: SparseGPT, splits: TaskSplits, means: Mapping[str, torch.Tensor],
                    base: PruneSettings, trials: int, show_progress: bool = True) -> tuple[PruneSettings, dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best: dict = {}
    total = sum(model.node_sites.values())

    def objective(trial: optuna.Trial) -> float:
        settings = dataclasses.replace(
            base,
            k_coef=trial.suggest_float("k_coef", 1e-4, 3e-2, log=True),
            lr=trial.suggest_float("lr", 1e-3, 3e-2, log=True),
            init_mean=trial.suggest_float("init_mean", 0.02, 0.5, log=True),
            temperature=trial.suggest_float("temperature", 0.3, 3.0, log=True),
        )
        found = find_circuit(model, splits, means, settings, show_progress=False)  # judged on the choose records
        size = int(sum(k.sum() for k in found["keep"].values())) if found["reached"] else total + 1
        if found["reached"] and (not best or size < best["size"]):
            best.update(size=size, settings=settings, found=found)
        if show_progress:
            print(f"search trial {trial.number + 1}/{trials}: {size} nodes (best {best.get('size', '-')})", file=sys.stderr)
        return size

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=base.seed))
    study.enqueue_trial({"k_coef": base.k_coef, "lr": base.lr, "init_mean": base.init_mean, "temperature": base.temperature})
    study.optimize(objective, n_trials=trials)
    if not best:  # no trial met the target: report the default settings' attempt
        return base, find_circuit(model, splits, means, base, show_progress=False)
    return best["settings"], best["found"]
