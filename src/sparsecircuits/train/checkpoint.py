"""Checkpoints for --resume: safetensors for tensors, JSON for the rest, written whole (a staging
folder renamed into place). The rest of the run directory's layout is in `rundir`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import schemas
from ..errors import SparseCircuitsError
from ..schemas import read_json
from ..io import atomic_save_tensors, atomic_write_text, load_tensors, staged_directory
from ..rundir import CHECKPOINT, MODEL_FILE, load_state_into


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    extra: dict[str, torch.nn.Module] | None = None) -> None:
    """Write checkpoint/ as a whole: a staging folder renamed into place. `extra`: other trained
    modules (bridges), each in its own file."""
    with staged_directory(run_dir / CHECKPOINT) as staging:
        atomic_save_tensors(staging / MODEL_FILE, model.state_dict())  # files with the usual permissions
        for file_name, module in (extra or {}).items():
            atomic_save_tensors(staging / file_name, module.state_dict())
        opt_state = optimizer.state_dict()
        tensors, per_param = {}, {}
        for index, entries in opt_state["state"].items():
            per_param[str(index)] = {}
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    per_param[str(index)][key] = value
        tensors["rng.torch"] = torch.get_rng_state()
        atomic_save_tensors(staging / "optimizer.safetensors", tensors)
        state = {**state, "param_groups": opt_state["param_groups"], "optimizer_scalars": per_param}
        atomic_write_text(staging / "state.json", json.dumps(state, indent=1))


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    directory = run_dir / CHECKPOINT
    if not (directory / "state.json").is_file():
        raise SparseCircuitsError(f"{run_dir} has no checkpoint to resume from: start it again without --resume")
    state = read_json(directory / "state.json", schemas.CHECKPOINT_STATE, "start the run again with --force")
    load_state_into(model, load_tensors(directory / MODEL_FILE), directory / MODEL_FILE)
    for file_name, module in (extra or {}).items():
        if not (directory / file_name).is_file():
            raise SparseCircuitsError(f"{directory} has no {file_name}: the checkpoint is not of this kind of run")
        load_state_into(module, load_tensors(directory / file_name), directory / file_name)
    tensors = load_tensors(directory / "optimizer.safetensors")
    torch.set_rng_state(tensors.pop("rng.torch"))
    opt_state: dict[str, Any] = {"state": {}, "param_groups": state.pop("param_groups")}
    for index, scalars in state.pop("optimizer_scalars").items():
        opt_state["state"][int(index)] = dict(scalars)
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        opt_state["state"].setdefault(int(index), {})[key] = tensor
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError) as err:
        raise SparseCircuitsError(f"{directory} holds optimizer state for another model ({err})") from None
    return state
