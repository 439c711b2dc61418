"""Circuits: pruning, validation, clean-up checks, labels. `Circuit` and `PruneSettings` load on first
use (the CLI's argument defaults read `settings` without torch); the functions are in their modules
(`circuits.prune.prune`, `circuits.validate.validate`) and at the package root (`sparsecircuits.validate`)."""

import importlib

_LAZY = {"Circuit": "circuit", "PruneSettings": "settings"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sparsecircuits.circuits' has no attribute '{name}'")


__all__ = ["Circuit", "PruneSettings"]
