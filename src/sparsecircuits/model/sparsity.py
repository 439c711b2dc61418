"""Activation sparsity (AbsTopK), weight sparsity (exact top-k per matrix) and the L0 schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import SparsityConfig


def abs_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest magnitude along the last axis, zero the rest."""
    if k >= x.shape[-1]:
        return x
    indices = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter(-1, indices, x.gather(-1, indices))


def l0_fraction_at(step: int, total_steps: int, config: SparsityConfig) -> float:
    """Fraction of weights kept at `step`: dense, then linear down to the target, then flat."""
    progress = step / max(total_steps, 1)
    if progress <= config.anneal_start:
        return 1.0
    if progress >= config.anneal_end or config.anneal_end == config.anneal_start:
        return config.l0_fraction
    t = (progress - config.anneal_start) / (config.anneal_end - config.anneal_start)
    return 1.0 + t * (config.l0_fraction - 1.0)


def sparse_parameters(model: nn.Module, config: SparsityConfig) -> dict[str, nn.Parameter]:
    """The parameters weight top-k applies to, by name (norms, sinks and the bigram table stay dense)."""
    chosen = {}
    for name, param in model.named_parameters():
        if name.startswith("bigram") or "norm" in name or name.endswith("sink_logit"):
            continue
        if name.endswith(".bias"):
            if config.sparse_biases:
                chosen[name] = param
        elif name.startswith(("wte", "wpe")):
            if config.sparse_embedding:
                chosen[name] = param
        elif name.startswith("lm_head"):
            if config.sparse_unembedding:
                chosen[name] = param
        else:
            chosen[name] = param
    return chosen


def nonzeros_to_keep(numel: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * numel))


@torch.no_grad()
def topk_keep_mask(weight: torch.Tensor, k: int, min_per_neuron: int) -> torch.Tensor | None:
    """Boolean mask of exactly max(k, protected) entries: the top-j of every row and column are
    protected, the rest of the budget goes to the largest magnitudes. None means keep all.

    The threshold comes from a selection (kthvalue), not a sort."""
    n = weight.numel()
    if k >= n:
        return None
    score = weight.detach().abs().float()
    protected = torch.zeros_like(score, dtype=torch.bool)
    if weight.dim() == 2 and min_per_neuron > 0:
        rows, cols = score.shape
        protected.scatter_(1, score.topk(min(min_per_neuron, cols), dim=1, sorted=False).indices, True)
        protected.scatter_(0, score.topk(min(min_per_neuron, rows), dim=0, sorted=False).indices, True)
        if int(protected.sum()) >= k:
            return protected
        score = score.masked_fill(protected, math.inf)
    flat = score.flatten()
    threshold = flat.kthvalue(n - k + 1).values
    keep = flat > threshold
    missing = k - int(keep.sum())
    if missing > 0:  # ties at the threshold: take the first ones so the count is exact
        ties = flat == threshold
        keep |= ties & (ties.cumsum(0) <= missing)
    return keep.view_as(weight)


@torch.no_grad()
def apply_weight_topk(params: dict[str, nn.Parameter], fraction: float, min_per_neuron: int) -> None:
    """Zero all but the top entries of every sparse parameter, each keeping the same fraction."""
    if fraction >= 1.0:
        return
    for param in params.values():
        mask = topk_keep_mask(param, nonzeros_to_keep(param.numel(), fraction), min_per_neuron)
        if mask is not None:
            param.mul_(mask)
