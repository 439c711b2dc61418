"""Node masks and ablation, as hooks at the node sites (never a copy of the forward pass).

A node is one channel of one node site. A pruned node is frozen at its ablation value: its mean
over pretraining text (computed through the same forward, after AbsTopK) or zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..model.gpt import SparseGPT


def ablation_hooks(model: SparseGPT, keep: Mapping[str, torch.Tensor], means: Mapping[str, torch.Tensor]):
    """Hooks that keep the nodes where `keep[site]` is true (a 0/1 or bool vector) and replace the rest
    by `means[site]`. A site missing from `keep` is left alone. Both move to the activation's device
    and dtype (once per site, device and dtype)."""
    moved: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(x: torch.Tensor, site: str) -> torch.Tensor:
        key = (site, x.device, x.dtype)
        if key not in moved:
            moved[key] = keep[site].to(x.device, x.dtype), means[site].to(x.device, x.dtype)
        gate, mean = moved[key]
        return x * gate + mean * (1 - gate)

    return {site: hook for site in keep}


class NodeMask(nn.Module):
    """One learnable τ per node. Forward uses the Heaviside step H(τ); backward uses the derivative
    of sigmoid(τ / temperature) in its place (straight-through)."""

    def __init__(self, widths: Mapping[str, int], init_mean: float = 0.1, init_std: float = 0.01,
                 temperature: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        self.sites = list(widths)
        self.tau = nn.ParameterDict({
            _key(site): nn.Parameter(init_mean + init_std * torch.randn(width, generator=generator))
            for site, width in widths.items()
        })
        self.temperature = temperature

    def gate(self, site: str) -> torch.Tensor:
        tau = self.tau[_key(site)]
        soft = torch.sigmoid(tau / self.temperature)
        hard = (tau > 0).to(tau.dtype)
        return hard + (soft - soft.detach())  # exactly H(τ) forward; the parentheses keep it exact

    def gates(self) -> dict[str, torch.Tensor]:
        return {site: self.gate(site) for site in self.sites}

    def active_count(self, gates: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(g.sum() for g in gates.values())

    @torch.no_grad()
    def clamp_(self) -> None:
        for tau in self.tau.values():
            tau.clamp_(-1.0, 1.0)

    def scores(self) -> dict[str, torch.Tensor]:
        return {site: self.tau[_key(site)].detach() for site in self.sites}


def _key(site: str) -> str:
    return site.replace(".", "/")  # ParameterDict keys may not contain dots


def keep_top_n(scores: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Boolean keep vectors for the n highest-scoring nodes overall (ties broken by order)."""
    sites = list(scores)
    flat = torch.cat([scores[s].flatten() for s in sites])
    keep_flat = torch.zeros_like(flat, dtype=torch.bool)
    if n > 0:
        keep_flat[flat.topk(min(n, len(flat))).indices] = True
    out, start = {}, 0
    for site in sites:
        width = scores[site].numel()
        out[site] = keep_flat[start : start + width]
        start += width
    return out
