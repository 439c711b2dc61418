import sys

import numpy as np
import pytest
import torch
from torch import nn

from sparsecircuits.config import SparsityConfig
from sparsecircuits.model import reference
from sparsecircuits.model.sparse_kernels import sparse_weight_kernels
from sparsecircuits.model.sparsity import (abs_topk, l0_fraction_at, linear_abs_topk, nonzeros_to_keep,
                                           sparse_parameters, topk_keep_mask, topk_mask)


@pytest.mark.parametrize("rows, width, k", [(7, 64, 16), (600, 256, 64), (300, 1024, 256), (1, 5000, 300)])
def test_topk_mask_selects_what_torch_topk_selects(rows, width, k):
    scores = torch.randn(rows, width).abs()  # no ties: the selection is unique
    mask = topk_mask(scores, k)
    expected = torch.zeros_like(mask).scatter(-1, scores.topk(k, dim=-1).indices, True)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("k", [3, 12])
def test_topk_mask_keeps_exactly_k_with_ties(k):
    scores = torch.zeros(3, 2000)
    scores[:, 1500] = 1.0
    scores[1, :100] = 0.5
    mask = topk_mask(scores, k)
    assert mask.sum(-1).tolist() == [k, k, k] and bool(mask[:, 1500].all())
    assert bool(mask[1, :100].sum() == k - 1)


def _lowest_index_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest per row, ties at the k-th broken towards the lowest index, by a stable sort."""
    order = scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, True)


def _unlike_rows(width: int) -> torch.Tensor:
    """Rows whose thresholds jump from one to the next (each row's search starts from the last's)."""
    torch.manual_seed(0)
    rows = [torch.randn(width), torch.randn(width) * 1e-30, torch.randn(width) * 1e30, torch.zeros(width),
            torch.randn(width).round(), -torch.rand(width) - 5, torch.full((width,), 2.0), torch.randn(width)]
    rows[4][::3] = -0.0
    rows[7][: width // 2] = float("inf")
    subnormal = torch.randn(width) * 1e-42
    return torch.stack(rows + [subnormal, torch.randn(width).bfloat16().float(), torch.randn(width)])


@pytest.mark.parametrize("width, k", [(64, 1), (256, 64), (256, 255), (1024, 256), (300, 7)])
def test_topk_mask_keeps_the_k_largest_ties_from_the_lowest_index(width, k):
    scores = _unlike_rows(width)
    expected = _lowest_index_topk(scores, k)
    assert torch.equal(topk_mask(scores, k), expected)
    assert torch.equal(topk_mask(scores, k, torch.float32), expected.float())  # the mask AbsTopK multiplies by
    assert torch.equal(topk_mask(scores.flip(0), k), expected.flip(0))  # the same rows in another order


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("width, k", [(256, 64), (1024, 256), (40, 12), (10, 1)])
def test_abs_topk_forward_and_backward_equal_the_masked_product(width, k, dtype, in_place):
    x = _unlike_rows(width).view(1, -1, width).repeat(2, 1, 1)
    x[1, 3] = torch.randn(width).round(decimals=1)  # rows with ties at the k-th magnitude
    x[1, 4, : width - k // 2] = 0  # fewer than k nonzeros: zeros are kept from the lowest index
    x = x.clamp(-6e4, 6e4).to(dtype)  # finite in every dtype
    grad = torch.randn_like(x)
    kept = _lowest_index_topk(x.abs(), k)
    fused = x.clone().requires_grad_()
    fresh = fused * 1  # not a leaf, so it may be overwritten
    out = abs_topk(fresh, k, in_place)
    assert (out.data_ptr() == fresh.data_ptr()) == in_place
    out.backward(grad.transpose(0, 1).contiguous().transpose(0, 1))  # a gradient that is not contiguous
    assert torch.equal(out, torch.where(kept, x, 0.0)) and torch.equal(fused.grad, torch.where(kept, grad, 0.0))
    assert bool((kept.sum(-1) == k).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_split_over_pytorchs_openmp_threads_select_what_one_thread_does(dtype):
    from sparsecircuits.model import sparsity, topk_kernels

    if sys.platform == "linux":  # PyTorch's Linux builds run ATen on OpenMP: the split must happen
        assert topk_kernels._openmp_runtime() is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = _unlike_rows(256).repeat(300, 1)  # 3,300 rows, so each thread's block starts mid-pattern
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))].clamp(-6e4, 6e4).to(dtype)
        kept = _lowest_index_topk(x.abs(), 64)
        grad = torch.randn_like(x)
        fused = x.clone().requires_grad_()
        out = abs_topk(fused, 64)
        out.backward(grad)
        assert torch.equal(out, torch.where(kept, x, 0.0)) and torch.equal(fused.grad, torch.where(kept, grad, 0.0))
        overwritten = x.clone()
        abs_topk(overwritten, 64, in_place=True)
        assert torch.equal(overwritten, torch.where(kept, x, 0.0))
        scores = x.float().abs()
        assert torch.equal(topk_mask(scores, 4), _lowest_index_topk(scores, 4))
        if topk_kernels._openmp_runtime() is not None:
            bits = sparsity._bits(x)
            keep = np.empty(bits.shape, np.bool_)
            assert topk_kernels._run_on_threads(topk_kernels._abs_topk_rows_block, (bits, bits.copy(), keep), 64,
                                                8 * x.element_size() - 1)
            assert torch.equal(torch.from_numpy(keep), kept)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("bias, rows", [(True, 2 * 1200), (False, 2 * 1200), (True, 2 * 7)])  # split over threads or not
def test_linear_abs_topk_equals_the_linear_layer_then_abs_topk(bias, rows):
    torch.manual_seed(0)
    linear = nn.Linear(48, 40, bias=bias)
    with torch.no_grad():
        linear.weight[:5] = 0  # outputs 0 + bias: ties at one magnitude, and rows of fewer than k nonzeros
        if bias:
            linear.bias[:5] = 0.25 * torch.tensor([1, -1, 1, -1, 1])
            linear.bias[5:] = 0
    x = torch.randn(2, rows // 2, 48)
    x[0, 1] = 0  # a row of zeros and biases
    grad = torch.randn(2, rows // 2, 40).transpose(0, 1).contiguous().transpose(0, 1)  # not contiguous
    results = []
    for fused in (True, False):
        layer = linear if fused else nn.Linear(48, 40, bias=bias)
        layer.load_state_dict(linear.state_dict())
        inputs = x.clone().requires_grad_()
        out = linear_abs_topk(layer, inputs, 12) if fused else abs_topk(layer(inputs), 12)  # ties: lowest index
        out.backward(grad)
        results.append((out, inputs.grad, layer.weight.grad, layer.bias.grad if bias else torch.zeros(())))
    (out, *grads), (expected_out, *expected_grads) = results
    assert torch.equal(out != 0, expected_out != 0) and bool(((out != 0).sum(-1) <= 12).all())
    torch.testing.assert_close(out, expected_out, rtol=1e-6, atol=1e-6)
    for got, expected in zip(grads, expected_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert bool((linear_abs_topk(linear, x, 12) != 0).sum(-1).eq(12).logical_or(x.abs().sum(-1).eq(0)).all())


def test_linear_abs_topk_calls_a_linear_layer_that_is_not_plain():
    linear = nn.Linear(8, 6)
    calls = []
    linear.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    out = linear_abs_topk(linear, torch.randn(3, 8), 2)
    assert calls == [torch.Size([3, 6])] and (out != 0).sum(-1).tolist() == [2, 2, 2]
    plain = nn.Linear(8, 6)
    with torch.no_grad():
        plain.weight.mul_((torch.rand(6, 8) < 0.2).float())
    x = torch.randn(3, 8)
    with sparse_weight_kernels(plain, max_density=1.0) as switched:  # a forward of its own: used
        assert switched == [""] and torch.equal(linear_abs_topk(plain, x, 2), abs_topk(plain(x), 2))


def test_abs_topk_backward_keeps_subnormals_under_flush_to_zero():
    x = torch.tensor([[3e-42, -2e-42, 0.0, 1e-44]], requires_grad=True)
    try:
        torch.set_flush_denormal(True)
        out = abs_topk(x, 2)
        out.backward(torch.ones_like(out))
    finally:
        torch.set_flush_denormal(False)
    assert x.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_abs_topk_gradient_does_not_depend_on_an_output_changed_in_place():
    x = torch.randn(4, 16, requires_grad=True)
    out = abs_topk(x, 4)
    kept = out != 0
    out.mul_(3)  # the backward reads its own mask, not the output
    out.sum().backward()
    assert torch.equal(x.grad, torch.where(kept, 3.0, 0.0)) and kept.sum(-1).tolist() == [4] * 4


@pytest.mark.parametrize("j", [1, 4, 16, 20])  # up to 16 merged in row order, more through a transposed copy
def test_weight_masks_protect_each_neuron_with_ties_from_the_lowest_index(j):
    torch.manual_seed(0)
    weight = torch.randint(-3, 4, (40, 24)).float()  # many ties, zeros among them
    for side, expected in (("columns", _lowest_index_topk(weight.abs().t(), j).t()),
                           ("rows", _lowest_index_topk(weight.abs(), j))):
        assert torch.equal(topk_keep_mask(weight, 1, j, side), expected), side  # k below the protected count


def test_fast_and_reference_weight_masks_agree():
    weight = torch.randn(96, 40)
    for step in range(3):  # each search starts from the threshold the last one left on the tensor
        for k, j in [(400, 2), (3000, 0), (100, 4)]:
            for side in ("rows", "columns", "rows_and_columns", ""):
                assert torch.equal(topk_keep_mask(weight, k, j, side), reference.topk_keep_mask(weight, k, j, side))
        weight.add_(torch.randn_like(weight), alpha=0.1 * step)  # as an optimizer step moves it


def test_topk_mask_is_exact_with_ties():
    weight = torch.tensor([[3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 2.0]])
    mask = topk_keep_mask(weight, 3, min_per_neuron=0)
    assert int(mask.sum()) == 3 and mask[0, 0] and mask[1, 3]


def test_topk_mask_keeps_the_largest_and_the_per_neuron_minimum():
    weight = torch.randn(64, 48)
    weight[5] *= 1e-3  # a row that would lose every entry without the minimum
    k = nonzeros_to_keep(weight.numel(), 1 / 8)
    mask = topk_keep_mask(weight, k, min_per_neuron=2)
    assert int(mask.sum()) == k
    assert mask.sum(1).min() >= 2 and mask.sum(0).min() >= 2
    free = mask.clone()
    # Apart from protected entries, everything kept is at least as large as everything dropped.
    protected = torch.zeros_like(mask)
    protected.scatter_(1, weight.abs().topk(2, dim=1).indices, True)
    protected.scatter_(0, weight.abs().topk(2, dim=0).indices, True)
    free &= ~protected
    assert weight.abs()[free].min() >= weight.abs()[~mask].max()


def test_per_neuron_minimum_binds_when_budget_is_small():
    weight = torch.randn(16, 16)
    mask = topk_keep_mask(weight, 8, min_per_neuron=4)
    assert int(mask.sum()) > 8 and mask.sum(1).min() >= 4 and mask.sum(0).min() >= 4


def test_l0_schedule_anneals_linearly_between_bounds():
    config = SparsityConfig(l0_fraction=0.1, anneal_start=0.1, anneal_end=0.5)
    assert l0_fraction_at(0, 100, config) == 1.0
    assert l0_fraction_at(10, 100, config) == 1.0
    assert abs(l0_fraction_at(30, 100, config) - 0.55) < 1e-9
    assert l0_fraction_at(50, 100, config) == 0.1 == l0_fraction_at(99, 100, config)


def test_abs_topk_keeps_largest_magnitudes_with_sign():
    x = torch.tensor([[0.1, -5.0, 2.0, -0.2]])
    assert abs_topk(x, 2).tolist() == [[0.0, -5.0, 2.0, 0.0]]


def test_sparse_parameter_selection_follows_config():
    from tests.test_model import small_model

    model = small_model()
    names = set(sparse_parameters(model, SparsityConfig()))
    assert {"wte.weight", "lm_head.weight", "lm_head.bias", "blocks.0.fc.weight", "blocks.0.q_proj.bias"} <= names
    assert not any("norm" in n or "bigram" in n or "sink" in n for n in names)
    dense_ends = set(sparse_parameters(model, SparsityConfig(sparse_embedding=False, sparse_unembedding=False, sparse_biases=False)))
    assert "wte.weight" not in dense_ends and "lm_head.weight" not in dense_ends and not any(n.endswith("bias") for n in dense_ends)


def test_a_paper_1x_matrix_keeps_its_configured_count_of_nonzeros():
    """The per-neuron minimum sits on the neuron side only, so it cannot silently raise the budget."""
    from sparsecircuits.config import load_config
    from sparsecircuits.model.sparsity import apply_weight_topk

    config = load_config("paper-1x").sparsity
    fc = torch.nn.Parameter(torch.randn(1024, 256))  # d_mlp x d_model of paper-1x
    proj = torch.nn.Parameter(torch.randn(256, 1024))
    params = {"blocks.0.fc.weight": fc, "blocks.0.proj.weight": proj}
    apply_weight_topk(params, config.l0_fraction, config.min_nonzero_per_neuron, config.min_nonzero_on)
    for name, param in params.items():
        assert int(param.count_nonzero()) == nonzeros_to_keep(param.numel(), config.l0_fraction) == 2048, name
    assert (fc != 0).sum(1).min() >= 1 and (proj != 0).sum(0).min() >= 1  # every neuron reads and writes
    # today's rule of every row and column, with 4 each, overflows the budget: what the check refuses
    grown = topk_keep_mask(torch.randn(1024, 256), 2048, 4, "rows_and_columns")
    assert int(grown.sum()) > 2048


def test_a_budget_too_small_for_the_per_neuron_minimum_is_refused():
    from sparsecircuits.config import load_config
    from sparsecircuits.errors import SparseCircuitsError
    from sparsecircuits.model.gpt import SparseGPT
    from sparsecircuits.model.sparsity import check_sparsity_budget

    config = load_config("paper-1x", ["model.vocab_size=2048", "sparsity.min_nonzero_per_neuron=4"])
    with torch.device("meta"):
        model = SparseGPT(config.model)
    with pytest.raises(SparseCircuitsError, match=r"supports l0_fraction >= 0.015625 \(1/64\)"):
        check_sparsity_budget(model, config.sparsity)
    for name in ("tiny", "small", "paper-1x"):  # every built-in config fits
        config = load_config(name, ["model.vocab_size=2048"])
        with torch.device("meta"):
            check_sparsity_budget(SparseGPT(config.model), config.sparsity)


def test_anneal_window_of_zero_keeps_the_final_l0_from_the_first_step():
    warm = SparsityConfig(l0_fraction=0.125, anneal_start=0.0, anneal_end=0.0)
    assert [l0_fraction_at(step, 100, warm) for step in (0, 1, 99)] == [0.125] * 3
    default = SparsityConfig(l0_fraction=0.125)
    assert l0_fraction_at(0, 100, default) == 1.0 and l0_fraction_at(100, 100, default) == 0.125


@pytest.mark.parametrize("zeros", [0.0, 0.9])
def test_topk_mask_of_wide_rows_with_many_zeros_keeps_exactly_k(zeros):
    scores = torch.randn(64, 1024).abs()
    scores[torch.rand(64, 1024) < zeros] = 0
    mask = topk_mask(scores, 64)
    assert mask.sum(-1).tolist() == [64] * 64
    assert bool((scores.masked_fill(~mask, float("inf")).amin(-1) >= scores.masked_fill(mask, -1).amax(-1)).all())

