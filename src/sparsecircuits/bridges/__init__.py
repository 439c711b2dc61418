"""Bridges from a weight-sparse model to a frozen dense one: training, evaluation and steering."""

from .bridge import BRIDGES_FILE, Bridges, DenseDistribution, bridge_sites, bridged_loss, kl_from, nmse

__all__ = ["BRIDGES_FILE", "Bridges", "DenseDistribution", "bridge_sites", "bridged_loss", "kl_from", "nmse"]
