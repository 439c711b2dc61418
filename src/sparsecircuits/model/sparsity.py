"""Activation sparsity (AbsTopK), weight sparsity (exact top-k per matrix) and the L0 schedule."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..config import SparsityConfig
from ..errors import SparseCircuitsError


def _break_ties(scores: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Exactly k per row: everything above the k-th value, then tied entries from the lowest index."""
    above = scores > kth
    equal = scores == kth
    missing = k - above.sum(-1, keepdim=True)
    return above | (equal & (equal.cumsum(-1) <= missing))


@torch.no_grad()
def topk_mask(scores: torch.Tensor, k: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Mask (1 kept, 0 dropped, of `dtype`) of exactly the k largest scores along the last axis (the
    selection `torch.topk` makes; of several scores tied at the k-th value the lowest indices are
    kept). On CPU the compiled per-row threshold search of `topk_kernels`; elsewhere `torch.topk`.
    A mask of the activations' own float type multiplies them without a cast."""
    n = scores.shape[-1]
    if k >= n:
        return torch.ones_like(scores, dtype=dtype)
    if k <= 0:
        return torch.zeros_like(scores, dtype=dtype)
    if scores.device.type != "cpu" or scores.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return _break_ties(scores, scores.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True), k).to(dtype)
    from . import topk_kernels

    rows = scores.float().contiguous().view(-1, n).numpy()  # half-precision scores are exact in float32
    keep = np.empty(rows.shape, dtype=np.float32 if dtype == torch.float32 else bool)
    topk_kernels.topk_rows(rows.view(np.uint32), keep, k)
    return torch.from_numpy(keep).view(scores.shape).to(dtype)


# Float types whose AbsTopK runs in the compiled kernels on CPU, as unsigned integers of their width.
_BITS = {torch.float32: (torch.int32, np.uint32), torch.bfloat16: (torch.int16, np.uint16),
         torch.float16: (torch.int16, np.uint16)}


def _bits(t: torch.Tensor) -> np.ndarray:
    """A contiguous CPU float tensor's bits as a 2-D unsigned NumPy array sharing its memory (rows: last axis)."""
    signed, unsigned = _BITS[t.dtype]
    return t.view(signed).numpy().view(unsigned).reshape(-1, t.shape[-1])


class _AbsTopK(torch.autograd.Function):
    """AbsTopK of a CPU float tensor by the compiled kernels: selection, copy and a one-byte mask of
    the kept entries in one pass forward; the backward copies the gradient through that mask. Both
    work on the values' bits, so bf16 and fp16 need no conversion."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, in_place: bool) -> torch.Tensor:
        from . import topk_kernels

        in_place = in_place and x.is_contiguous()
        out = x if in_place else torch.empty_like(x, memory_format=torch.contiguous_format)
        keep = torch.empty(x.shape, dtype=torch.bool)
        topk_kernels.abs_topk_rows(_bits(x.detach().contiguous()), _bits(out.detach()), _rows(keep), k, 8 * x.element_size() - 1)
        if in_place:
            ctx.mark_dirty(x)
        ctx.save_for_backward(keep)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return _masked_gradient(grad, keep), None, None


def _rows(t: torch.Tensor) -> np.ndarray:
    """A contiguous CPU tensor as a 2-D NumPy array sharing its memory (rows: last axis)."""
    return t.numpy().reshape(-1, t.shape[-1])


def _masked_gradient(grad: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    from . import topk_kernels

    grad = grad.contiguous()
    grad_in = torch.empty_like(grad)
    topk_kernels.masked_rows(_bits(grad), _rows(keep), _bits(grad_in))
    return grad_in


class _LinearAbsTopK(torch.autograd.Function):
    """AbsTopK(x @ weight.T + bias) for float32 CPU tensors, with the AbsTopK where a fused kernel
    would put it, at the end of the matmul: the bias is added in the selection's pass, in place on
    the matmul's fresh output (no bias copy before the matmul, no second activation). The backward
    masks the gradient and sums it for the bias in one pass, then the two matmuls of a linear layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
        from . import topk_kernels

        rows = x.reshape(-1, x.shape[-1])
        y = torch.mm(rows, weight.t())
        keep = torch.empty(y.shape, dtype=torch.bool)
        topk_kernels.bias_abs_topk_rows(y.numpy(), None if bias is None else bias.detach().numpy(), keep.numpy(), k)
        ctx.save_for_backward(rows, weight, keep)
        ctx.has_bias, ctx.input_shape = bias is not None, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        from . import topk_kernels

        rows, weight, keep = ctx.saved_tensors
        grad = grad.reshape(keep.shape).contiguous()
        grad_y = torch.empty_like(grad)
        column_sums = topk_kernels.masked_rows_with_column_sums(grad.numpy(), keep.numpy(), grad_y.numpy())
        grad_x = (grad_y @ weight).view(*ctx.input_shape) if ctx.needs_input_grad[0] else None
        grad_weight = grad_y.t() @ rows if ctx.needs_input_grad[1] else None
        grad_bias = torch.from_numpy(column_sums).float() if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def _abs_topk_mask_dtype(x: torch.Tensor) -> torch.dtype:
    # On CPU a mask of x's own type multiplies without a cast (measured faster there); elsewhere a
    # boolean mask keeps the memory saved for the backward at one byte per entry.
    return x.dtype if x.device.type == "cpu" else torch.bool


def _largest_magnitudes_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    return topk_mask(x.abs(), k, _abs_topk_mask_dtype(x))


# The same selection as one opaque operator, so that torch.compile keeps the Numba selection whole
# inside a compiled graph instead of breaking the graph there.
abs_topk_mask = torch.library.custom_op("sparsecircuits::abs_topk_mask", _largest_magnitudes_mask, mutates_args=())


@abs_topk_mask.register_fake
def _(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.empty_like(x, dtype=_abs_topk_mask_dtype(x))


def abs_topk(x: torch.Tensor, k: int, in_place: bool = False) -> torch.Tensor:
    """Keep the k entries of largest magnitude along the last axis, zero the rest (the gradient
    flows to the kept entries only). `in_place`: x may be overwritten (on CPU it is), for a fresh
    tensor that no one else holds and no backward has saved (not, e.g., a ReLU's output)."""
    if k >= x.shape[-1]:
        return x
    if torch.compiler.is_compiling():
        return x * abs_topk_mask(x.detach(), k)
    if x.device.type == "cpu" and x.dtype in _BITS and k > 0:
        return _AbsTopK.apply(x, k, in_place)
    return x * _largest_magnitudes_mask(x.detach(), k)


_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _plain_linear(linear: nn.Module) -> bool:
    """Whether calling `linear` is exactly F.linear with its parameters: an nn.Linear without module
    hooks (its own or global) and without a forward of its own (such as `sparse_weight_kernels` installs)."""
    return (type(linear) is nn.Linear and "forward" not in vars(linear)
            and not any(getattr(linear, name) or getattr(nn.modules.module, f"_global{name}") for name in _MODULE_HOOKS))


def linear_abs_topk(linear: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """abs_topk(linear(x), k): for float32 on CPU with a plain nn.Linear (outside autocast and
    torch.compile), one matmul and the bias add fused with the selection (`_LinearAbsTopK`)."""
    if (not torch.compiler.is_compiling() and _plain_linear(linear) and 0 < k < linear.out_features
            and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
            and x.dtype == linear.weight.dtype == torch.float32 and (linear.bias is None or linear.bias.dtype == torch.float32)):
        return _LinearAbsTopK.apply(x, linear.weight, linear.bias, k)
    return abs_topk(linear(x), k)


def l0_fraction_at(step: int, total_steps: int, config: SparsityConfig) -> float:
    """Fraction of weights kept at `step`: dense, then linear down to the target, then flat."""
    progress = step / max(total_steps, 1)
    if progress < config.anneal_start:
        return 1.0
    if progress >= config.anneal_end or config.anneal_end == config.anneal_start:
        return config.l0_fraction
    t = (progress - config.anneal_start) / (config.anneal_end - config.anneal_start)
    return 1.0 + t * (config.l0_fraction - 1.0)


def sparse_parameters(model: nn.Module, config: SparsityConfig) -> dict[str, nn.Parameter]:
    """The parameters weight top-k applies to, by name (norms, sinks and the bigram table stay dense)."""
    chosen = {}
    for name, param in model.named_parameters():
        if name.startswith("bigram") or "norm" in name or name.endswith("sink_logit") or not param.requires_grad:
            continue  # frozen parameters (fixed sinusoidal positions) are never sparsified
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


# Which side of a weight holds its neurons (nn.Linear stores (out, in)): the rows of the matrices
# that read into a neuron or channel, the columns of those that write from one (the authors' rule).
NEURON_ROWS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "fc.weight")
NEURON_COLUMNS = ("o_proj.weight", ".proj.weight")


def protected_side(name: str, param: torch.Tensor, where: str) -> str:
    """'rows', 'columns', 'rows_and_columns' or '' (no minimum) for the parameter `name` under the
    `sparsity.min_nonzero_on` rule: 'neurons' or 'rows_and_columns' (every 2-D matrix)."""
    if param.dim() != 2:
        return ""
    if where == "rows_and_columns":
        return "rows_and_columns"
    if name.endswith(NEURON_ROWS):
        return "rows"
    if name.endswith(NEURON_COLUMNS):
        return "columns"
    return ""


def protected_count(shape: tuple[int, int], side: str, min_per_neuron: int) -> int:
    """How many entries the per-neuron minimum keeps at most in a matrix of this shape."""
    rows, cols = shape
    return ((rows * min(min_per_neuron, cols) if side in ("rows", "rows_and_columns") else 0)
            + (cols * min(min_per_neuron, rows) if side in ("columns", "rows_and_columns") else 0))


def check_sparsity_budget(model: nn.Module, config: SparsityConfig) -> None:
    """Refuse a config whose per-neuron minimum does not fit in some matrix's L0 budget: weight
    top-k would then keep more than the configured fraction without a word."""
    worst_name, worst_fraction = None, 0.0
    for name, param in sparse_parameters(model, config).items():
        side = protected_side(name, param, config.min_nonzero_on)
        needed = protected_count(tuple(param.shape), side, config.min_nonzero_per_neuron) if side else 0
        if needed > nonzeros_to_keep(param.numel(), config.l0_fraction) and needed / param.numel() > worst_fraction:
            worst_name, worst_fraction = name, needed / param.numel()
    if worst_name is not None:
        raise SparseCircuitsError(
            f"sparsity.l0_fraction {config.l0_fraction:g} cannot hold sparsity.min_nonzero_per_neuron ="
            f" {config.min_nonzero_per_neuron} in {worst_name}: this model supports l0_fraction >= {worst_fraction:.6g}"
            f" (1/{1 / worst_fraction:.4g}); raise l0_fraction or lower min_nonzero_per_neuron")


def _cpu_weight_keep_mask(weight: torch.Tensor, k: int, min_per_neuron: int, side: str) -> torch.Tensor:
    """`topk_keep_mask` of a CPU float32 tensor in one compiled pass (`topk_kernels.weight_keep_mask`)."""
    from . import topk_kernels

    bits = weight.detach().contiguous().view(torch.int32).numpy().view(np.uint32)
    bits = bits if weight.dim() == 2 else bits.reshape(1, -1)
    keep = np.empty(bits.shape, np.bool_)
    per_row = min_per_neuron if weight.dim() == 2 and side in ("rows", "rows_and_columns") else 0
    per_column = min_per_neuron if weight.dim() == 2 and side in ("columns", "rows_and_columns") else 0
    # The search starts from the matrix's last threshold, kept on the tensor (exact whatever it is).
    guess = getattr(weight, "_weight_topk_threshold", -1)
    weight._weight_topk_threshold = topk_kernels.weight_keep_mask(bits, keep, k, per_row, per_column, guess)
    return torch.from_numpy(keep).view(weight.shape)


@torch.no_grad()
def topk_keep_mask(weight: torch.Tensor, k: int, min_per_neuron: int, side: str = "rows_and_columns") -> torch.Tensor | None:
    """Boolean mask of exactly max(k, protected) entries: the top-j of every row and/or column
    (`side`) are protected, the rest of the budget goes to the largest magnitudes. None means keep all."""
    n = weight.numel()
    if k >= n:
        return None
    if weight.device.type == "cpu" and weight.dtype == torch.float32:
        return _cpu_weight_keep_mask(weight, k, min_per_neuron, side)
    score = weight.detach().abs().float()
    if weight.dim() == 2 and min_per_neuron > 0 and side:
        protected = torch.zeros_like(score, dtype=torch.bool)
        if side in ("rows", "rows_and_columns"):
            protected |= topk_mask(score, min_per_neuron)
        if side in ("columns", "rows_and_columns"):
            protected |= topk_mask(score.t(), min_per_neuron).t()
        if int(protected.sum()) >= k:
            return protected
        score = score.masked_fill(protected, math.inf)
    return topk_mask(score.view(1, n), k).view_as(weight)


@torch.no_grad()
def apply_weight_topk(params: dict[str, nn.Parameter], fraction: float, min_per_neuron: int,
                      min_nonzero_on: str = "neurons") -> None:
    """Zero all but the top entries of every sparse parameter, each keeping the same fraction."""
    if fraction >= 1.0:
        return
    for name, param in params.items():
        side = protected_side(name, param, min_nonzero_on)
        mask = topk_keep_mask(param, nonzeros_to_keep(param.numel(), fraction), min_per_neuron, side)
        if mask is not None:
            param.mul_(mask)


def count_nonzeros(params: dict[str, nn.Parameter]) -> tuple[int, int]:
    """(nonzero entries, all entries) of these parameters, counted from the weights."""
    return sum(int(p.count_nonzero()) for p in params.values()), sum(p.numel() for p in params.values())
