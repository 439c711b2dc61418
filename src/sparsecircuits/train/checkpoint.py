"""Checkpoint and model I/O: safetensors for tensors, JSON for the rest, every write atomic.

A run directory:
    config.json        the resolved config (written first)
    run.json           where the data came from, the tokenizer's hash, the config hash
    tokenizer.json     the run's tokenizer
    metrics.jsonl      one JSON record per log / evaluation
    checkpoint/        model.safetensors, optimizer.safetensors, state.json (for --resume)
    model.safetensors  the trained model, written last: a run without it is unfinished
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from ..errors import SparseCircuitsError
from ..io import atomic_save_tensors, atomic_write_text, load_tensors, staged_directory

CHECKPOINT = "checkpoint"
MODEL_FILE = "model.safetensors"


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    found = {k: v.shape for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                  else f"{wrong[0]} has shape {tuple(found[wrong[0]])}, the config says {tuple(expected[wrong[0]])}")
        raise SparseCircuitsError(f"{source} does not fit the model its config describes ({detail}): it comes from another model")
    model.load_state_dict(tensors)


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write checkpoint/ as a whole: a staging folder renamed into place."""
    with staged_directory(run_dir / CHECKPOINT) as staging:
        atomic_save_tensors(staging / MODEL_FILE, model.state_dict())  # files with the usual permissions
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


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    directory = run_dir / CHECKPOINT
    if not (directory / "state.json").is_file():
        raise SparseCircuitsError(f"{run_dir} has no checkpoint to resume from: start it again without --resume")
    try:
        state = json.loads((directory / "state.json").read_text())
    except json.JSONDecodeError:
        raise SparseCircuitsError(f"{directory / 'state.json'} is corrupted: start the run again without --resume") from None
    load_state_into(model, load_tensors(directory / MODEL_FILE), directory / MODEL_FILE)
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """run.json: the data directory and the tokenizer hash recorded when the run was made."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
        if isinstance(info.get("tokenizer_sha256"), str):
            return info
    except (OSError, ValueError, AttributeError):
        pass
    raise SparseCircuitsError(f"{run_dir}/run.json is missing or damaged: it records which tokenizer the run"
                              " was trained with, so the run cannot be checked; train it again")


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """The trained model of a run directory, checked against its config and the tokenizer it was
    trained with. `model.weights_sha256` identifies the weights (circuits and caches are tied to it)."""
    from ..data.dataset import load_tokenizer
    from ..model.gpt import SparseGPT, read_run_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SparseCircuitsError(f"run directory not found: {run_dir}")
    config = read_run_config(run_dir)
    if not (run_dir / MODEL_FILE).is_file():
        hint = "continue it with `sparsecircuits train --resume`" if (run_dir / CHECKPOINT).exists() else "train it first"
        raise SparseCircuitsError(f"{run_dir} has no trained model ({MODEL_FILE} is missing): {hint}")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    if file_sha256(run_dir / "tokenizer.json") != read_run_info(run_dir)["tokenizer_sha256"]:
        raise SparseCircuitsError(f"{run_dir}/tokenizer.json is not the tokenizer this run was trained with (its sha256"
                                  " differs from run.json's): copy the run's own tokenizer.json back from its data directory")
    if tokenizer.get_vocab_size() != config.model.vocab_size:
        raise SparseCircuitsError(
            f"{run_dir}/tokenizer.json has {tokenizer.get_vocab_size()} tokens but the model has {config.model.vocab_size}:"
            " the tokenizer belongs to another run"
        )
    model = SparseGPT(config.model)
    load_state_into(model, load_tensors(run_dir / MODEL_FILE), run_dir / MODEL_FILE)
    model.run_config = config
    model.tokenizer = tokenizer
    model.weights_sha256 = file_sha256(run_dir / MODEL_FILE)
    return model.to(device).eval()
