"""The run directory: the one module that knows its files. A trained run and an imported one are
the same kind of thing.

    config.json              the resolved config (written first)
    run.json                 where the data came from (absolute, and relative to the run so a run copied
                             together with its data still finds it), the tokenizer's sha256, the config
                             hash, and for an imported model where it came from
    tokenizer.json           the run's tokenizer
    metrics.jsonl            one JSON record per log / evaluation
    checkpoint/              model.safetensors, optimizer.safetensors, state.json (for --resume)
    model.safetensors        the trained model, written last: a run without it is unfinished
    node_means.safetensors   cached node means for mean ablation, tied to the weights' sha256

Commands that read text (prune, eval, explain, view) take `--data DATA_DIR` when the run's own data
is not there (a run copied to another machine, an imported model).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import SparseCircuitsError

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run.json"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT = "checkpoint"
MODEL_FILE = "model.safetensors"
MEANS_FILE = "node_means.safetensors"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_info(final_run_dir: Path, data_dir: str | Path | None, tokenizer_sha256: str, config: Config,
             **extra: Any) -> str:
    """run.json's text for a run that will live at `final_run_dir`."""
    data = Path(data_dir).resolve() if data_dir is not None else None
    return json.dumps({
        "data": str(data) if data else None,
        "data_relative": os.path.relpath(data, Path(final_run_dir).resolve()) if data else None,
        "tokenizer_sha256": tokenizer_sha256,
        "config_hash": config.hash(),
        **extra,
    }, indent=1)


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """run.json: the data directory and the tokenizer hash recorded when the run was made."""
    try:
        info = json.loads((Path(run_dir) / RUN_INFO_FILE).read_text())
        if isinstance(info.get("tokenizer_sha256"), str):
            return info
    except (OSError, ValueError, AttributeError):
        pass
    raise SparseCircuitsError(f"{run_dir}/{RUN_INFO_FILE} is missing or damaged: it records which tokenizer the run"
                              " was trained with, so the run cannot be checked; train it again")


def recorded_data_dir(run_dir: str | Path) -> Path | None:
    """The run's own data directory, if it is still where run.json says (absolutely, or relative to the run)."""
    info = read_run_info(run_dir)
    candidates = [info.get("data")]
    if info.get("data_relative"):
        candidates.append(Path(run_dir) / info["data_relative"])
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


def read_run_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise SparseCircuitsError(f"{run_dir} is not a run directory (no {CONFIG_FILE}): train one with `sparsecircuits"
                                  " train` or import one with `sparsecircuits import-openai`")
    try:
        return Config.from_dict(json.loads(path.read_text()), origin=str(path))
    except json.JSONDecodeError:
        raise SparseCircuitsError(f"{path} is not valid JSON: the run directory is damaged") from None


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Strict loading: a missing, unexpected or misshapen tensor is an error naming it."""
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


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """The trained model of a run directory, checked against its config and the tokenizer it was
    trained with. `model.weights_sha256` identifies the weights (circuits and caches are tied to it)."""
    from .data.dataset import load_tokenizer
    from .io import load_tensors
    from .model.gpt import SparseGPT

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SparseCircuitsError(f"run directory not found: {run_dir}")
    config = read_run_config(run_dir)
    if not (run_dir / MODEL_FILE).is_file():
        hint = "continue it with `sparsecircuits train --resume`" if (run_dir / CHECKPOINT).exists() else "train it first"
        raise SparseCircuitsError(f"{run_dir} has no trained model ({MODEL_FILE} is missing): {hint}")
    tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
    if file_sha256(run_dir / TOKENIZER_FILE) != read_run_info(run_dir)["tokenizer_sha256"]:
        raise SparseCircuitsError(f"{run_dir}/{TOKENIZER_FILE} is not the tokenizer this run was trained with (its sha256"
                                  " differs from run.json's): copy the run's own tokenizer.json back from its data directory")
    if tokenizer.get_vocab_size() != config.model.vocab_size:
        raise SparseCircuitsError(
            f"{run_dir}/{TOKENIZER_FILE} has {tokenizer.get_vocab_size()} tokens but the model has {config.model.vocab_size}:"
            " the tokenizer belongs to another run"
        )
    model = SparseGPT(config.model)
    load_state_into(model, load_tensors(run_dir / MODEL_FILE), run_dir / MODEL_FILE)
    model.run_config = config
    model.tokenizer = tokenizer
    model.weights_sha256 = file_sha256(run_dir / MODEL_FILE)
    return model.to(device).eval()
