"""sparsecircuits: weight-sparse transformers and their circuits."""

import importlib

from .config import Config, load_config
from .data.dataset import TokenData, load_tokenizer
from .data.prepare import prepare
from .errors import SparseCircuitsError
from .model.gpt import SparseGPT
from .rundir import Run
from .train.trainer import train

# Loaded on first use, so that importing the package (the corpus generator, say) reads no task definition.
_CIRCUITS = {"Circuit": "circuits.circuit", "PruneSettings": "circuits.find", "prune": "circuits.prune",
             "validate": "circuits.validate"}


def __getattr__(name: str):
    if name in _CIRCUITS:
        return getattr(importlib.import_module(f".{_CIRCUITS[name]}", __name__), name)
    raise AttributeError(f"module 'sparsecircuits' has no attribute '{name}'")


__all__ = ["Circuit", "Config", "PruneSettings", "Run", "SparseCircuitsError", "SparseGPT", "TokenData", "load_config",
           "load_tokenizer", "prepare", "prune", "train", "validate"]
__version__ = "0.1.0"
