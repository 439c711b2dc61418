"""Sparse (CSR) matrix multiplies for frozen weight-sparse linear layers: inference and pruning.

A linear layer whose weight is mostly zeros can multiply through a CSR copy of it instead of the
dense matrix. On CPU this pays only below a crossover density that `benchmarks/sparse_kernels.py`
measures: on a 2-core machine about 1/16 to 1/8 nonzero for a forward pass, about 1/32 for forward
plus input gradient (what mask training needs). Training keeps dense kernels: it needs the full
weight gradient so pruned weights can grow back.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from ..config import CSR_MAX_DENSITY



class _CSRMatmul(torch.autograd.Function):
    """x @ W.T with W given as CSR matrices of W and W.T (the gradient flows to x only)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
        ctx.weight_t = weight_t
        return torch.sparse.mm(weight, x.t()).t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return torch.sparse.mm(ctx.weight_t, grad.t()).t(), None, None


def csr_linear_forward(linear: nn.Linear):
    """A forward for `linear` through CSR copies of its current weight."""
    weight = linear.weight.detach()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        weight_csr, weight_t_csr = weight.to_sparse_csr(), weight.t().contiguous().to_sparse_csr()
    bias = linear.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = _CSRMatmul.apply(flat, weight_csr, weight_t_csr).reshape(*x.shape[:-1], -1)
        return out + bias if bias is not None else out

    return forward


def weight_density(linear: nn.Linear) -> float:
    return float(linear.weight.count_nonzero()) / linear.weight.numel()


@contextlib.contextmanager
def sparse_weight_kernels(model: nn.Module, max_density: float = CSR_MAX_DENSITY):
    """Inside this block, the model's linear layers with at most `max_density` nonzero weights
    multiply through CSR kernels (CPU only; elsewhere nothing changes). The weights must not change
    inside the block. Yields the names of the layers switched."""
    switched = {}
    if next(model.parameters()).device.type == "cpu" and max_density > 0:
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and weight_density(module) <= max_density:
                module.forward = csr_linear_forward(module)
                switched[name] = module
    try:
        yield list(switched)
    finally:
        for module in switched.values():
            del module.forward  # back to nn.Linear.forward

