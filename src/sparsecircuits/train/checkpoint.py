"""Checkpoints for --resume: safetensors for tensors, JSON for the rest, written whole (a staging
folder renamed into place). The rest of the run directory's layout is in `rundir`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .. import schemas
from ..errors import SparseCircuitsError
from ..schemas import read_json
from ..io import atomic_save_tensors, atomic_write_text, load_tensors, staged_directory
from ..config import Config
from ..rundir import CHECKPOINT, MODEL_FILE, file_sha256, load_state_into


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
        state = {**state, "model_sha256": file_sha256(staging / MODEL_FILE), "param_groups": opt_state["param_groups"],
                 "optimizer_scalars": per_param}
        atomic_write_text(staging / "state.json", json.dumps(state, indent=1))


def check_checkpoint(run_dir: Path, state: dict[str, Any], config: Config, run_id: str | None) -> None:
    """The checkpoint belongs to this run as it is configured now: the same config (every setting), a step
    within train.steps, the run's id, and the model file it recorded. A folder mixing two runs, or a
    hand-edited config.json or state.json, is refused with what differs."""
    where = f"cannot resume {run_dir}"
    fix = "start the run again with --force (or restore the file that was changed)"
    # through Config.from_dict, as train compares config.json: keys added since compare as their defaults
    saved = Config.from_dict(state["config"], origin=f"{run_dir / CHECKPOINT / 'state.json'}: config") if "config" in state else None
    if saved is not None and saved.to_dict() != Config.from_dict(config.to_dict()).to_dict():
        raise SparseCircuitsError(f"{where}: its config.json is not the config its checkpoint was trained with (config.json"
                                  f" was edited, or the checkpoint is another run's); {fix}")
    if state["step"] > config.train.steps:
        raise SparseCircuitsError(f"{where}: its checkpoint is at step {state['step']}, past train.steps"
                                  f" {config.train.steps}; {fix}")
    if state.get("run_id", run_id) != run_id:
        raise SparseCircuitsError(f"{where}: its checkpoint is another run's (run id {state['run_id']}, run.json says"
                                  f" {run_id}): the folder mixes two runs; {fix}")
    recorded = state.get("model_sha256")
    if recorded is not None and file_sha256(run_dir / CHECKPOINT / MODEL_FILE) != recorded:
        raise SparseCircuitsError(f"{where}: {run_dir / CHECKPOINT / MODEL_FILE} is not the file the checkpoint wrote (its"
                                  f" sha256 differs from state.json's); {fix}")


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, torch.nn.Module] | None, config: Config, run_id: str | None) -> dict[str, Any]:
    """Load checkpoint/ into the model, `extra` modules and optimizer, after `check_checkpoint`."""
    directory = run_dir / CHECKPOINT
    if not (directory / "state.json").is_file():
        raise SparseCircuitsError(f"{run_dir} has no checkpoint to resume from: start it again without --resume")
    state = read_json(directory / "state.json", schemas.CHECKPOINT_STATE, "start the run again with --force")
    check_checkpoint(run_dir, state, config, run_id)
    load_state_into(model, load_tensors(directory / MODEL_FILE), directory / MODEL_FILE)
    for file_name, module in (extra or {}).items():
        if not (directory / file_name).is_file():
            raise SparseCircuitsError(f"{directory} has no {file_name}: the checkpoint is not of this kind of run")
        load_state_into(module, load_tensors(directory / file_name), directory / file_name)
    tensors = load_tensors(directory / "optimizer.safetensors")
    rng = tensors.pop("rng.torch", None)
    if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise SparseCircuitsError(f"{directory / 'optimizer.safetensors'} has no random-number state (rng.torch) of the"
                                  " right kind: the checkpoint is damaged; start the run again with --force")
    torch.set_rng_state(rng)
    opt_state: dict[str, Any] = {"state": {}, "param_groups": _checked_param_groups(state.pop("param_groups"), optimizer,
                                                                                    directory / "state.json")}
    try:  # keys are "INDEX" and "INDEX.NAME", INDEX in ASCII digits
        for index, scalars in state.pop("optimizer_scalars").items():
            opt_state["state"][_parameter_index(index)] = dict(scalars)
        for name, tensor in tensors.items():
            index, key = name.split(".", 1)
            opt_state["state"].setdefault(_parameter_index(index), {})[key] = tensor
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError) as err:
        raise SparseCircuitsError(f"{directory} holds optimizer state for another model ({err})") from None
    return state


def _parameter_index(text: str) -> int:
    if not schemas.is_index(text):
        raise ValueError(f"{text!r} is not a parameter index")
    return int(text)


def _checked_param_groups(saved: list[dict], optimizer: torch.optim.Optimizer, path: Path) -> list[dict]:
    """The optimizer's parameter groups as state.json holds them, checked against the ones the config
    makes: the same groups and settings (the learning rate aside, which the schedule sets every step)."""
    fresh = optimizer.state_dict()["param_groups"]
    if len(saved) != len(fresh):
        raise SparseCircuitsError(f"{path} holds {len(saved)} optimizer groups where the model has {len(fresh)}: the"
                                  " checkpoint is another model's; start the run again with --force")
    for group, ours in zip(saved, fresh):
        for key, value in ours.items():
            if key not in group:  # a setting a later torch added: its default
                continue
            theirs = group[key]
            if key == "lr":
                ok = isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and math.isfinite(theirs) and theirs >= 0
            else:
                ok = theirs == (list(value) if isinstance(value, tuple) else value)
            if not ok:
                raise SparseCircuitsError(f"{path}: the optimizer's {key} is {str(theirs)[:40]}, the config makes"
                                          f" {str(value)[:40]}: the checkpoint was edited or is another run's;"
                                          " start the run again with --force")
    return saved
