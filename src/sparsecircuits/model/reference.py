"""The straightforward PyTorch versions of the model's sparse kernels, for checking and benchmarking.

Same math as the fast paths: AbsTopK by `topk` + scatter (after the whole linear layer where the
fast path fuses the two), weight top-k by a full `topk` over each flattened matrix, attention sinks
through an explicit (B, H, T, T+1) score tensor and a dense mask. `reference_kernels()` swaps them
in for the duration of a `with` block.
"""

from __future__ import annotations

import contextlib
import math

import torch

from . import gpt, sparsity


def abs_topk(x: torch.Tensor, k: int, in_place: bool = False) -> torch.Tensor:
    if k >= x.shape[-1]:
        return x
    indices = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter(-1, indices, x.gather(-1, indices))


def linear_abs_topk(linear: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    return abs_topk(linear(x), k)


@torch.no_grad()
def topk_keep_mask(weight: torch.Tensor, k: int, min_per_neuron: int, side: str = "rows_and_columns") -> torch.Tensor | None:
    n = weight.numel()
    if k >= n:
        return None
    score = weight.detach().abs().float()
    protected = torch.zeros_like(score, dtype=torch.bool)
    if weight.dim() == 2 and min_per_neuron > 0 and side:
        rows, cols = score.shape
        if side in ("rows", "rows_and_columns"):
            protected.scatter_(1, score.topk(min(min_per_neuron, cols), dim=1).indices, True)
        if side in ("columns", "rows_and_columns"):
            protected.scatter_(0, score.topk(min(min_per_neuron, rows), dim=0).indices, True)
        if int(protected.sum()) >= k:
            return protected
        score = score.masked_fill(protected, math.inf)
    keep = torch.zeros(n, dtype=torch.bool, device=weight.device)
    keep[score.flatten().topk(k).indices] = True
    return keep.view_as(weight)


def attention_with_sinks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink_logit: torch.Tensor | None) -> torch.Tensor:
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    visible = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if sink_logit is not None:
        sink = sink_logit.view(1, -1, 1, 1).expand(q.shape[0], -1, T, 1).to(scores.dtype)
        scores = torch.cat([sink, scores], dim=-1)
        visible = torch.cat([torch.ones(T, 1, dtype=torch.bool, device=q.device), visible], dim=-1)
    weights = scores.masked_fill(~visible, -math.inf).softmax(-1)
    if sink_logit is not None:
        weights = weights[..., 1:]  # the sink's value is zero
    return weights @ v


@contextlib.contextmanager
def reference_kernels():
    """Run the model and weight top-k with the straightforward kernels inside this block."""
    saved = gpt.abs_topk, gpt.linear_abs_topk, gpt.attention_with_sinks, sparsity.topk_keep_mask
    gpt.abs_topk, gpt.linear_abs_topk, gpt.attention_with_sinks, sparsity.topk_keep_mask = (
        abs_topk, linear_abs_topk, attention_with_sinks, topk_keep_mask)
    try:
        yield
    finally:
        gpt.abs_topk, gpt.linear_abs_topk, gpt.attention_with_sinks, sparsity.topk_keep_mask = saved
