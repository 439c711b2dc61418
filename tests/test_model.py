
import pytest
import torch

from sparsecircuits.config import NODE_SITE_KINDS, ModelConfig, SparsityConfig
from sparsecircuits.model import reference
from sparsecircuits.model import gpt
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.model.sites import replace_with
from sparsecircuits.model.sparse_kernels import sparse_weight_kernels
from sparsecircuits.model.sparsity import apply_weight_topk, sparse_parameters


def small_model(**changes) -> SparseGPT:
    config = ModelConfig(vocab_size=64, d_model=32, n_layer=2, d_head=16, ctx_len=16, **changes)
    return SparseGPT(config)


@pytest.mark.parametrize("attention", ["attention_with_sinks", "sink_attention_by_extra_key", "no sink"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sink_attention_and_its_gradients_match_explicit_softmax(attention, dtype):
    B, H, T, D = 2, 3, 9, 16
    torch.manual_seed(0)
    qkv = torch.randn(B, T, H, 3 * D)  # q, k and v as the model passes them: transposed views
    sink = None if attention == "no sink" else torch.randn(H)
    grad = torch.randn(B, H, T, D)
    results = []
    for function, precision in [(reference.attention_with_sinks, torch.float32), (getattr(gpt, attention, gpt.attention_with_sinks), dtype)]:
        inputs = [t.detach().to(precision).requires_grad_() for t in (qkv, sink) if t is not None]
        q, k, v = inputs[0].transpose(1, 2).split(D, dim=-1)
        out = function(q, k, v, inputs[1] if sink is not None else None)
        out.backward(grad.to(out.dtype))
        results.append([out.float()] + [t.grad.float() for t in inputs])
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.05}
    for expected, got in zip(*results):
        torch.testing.assert_close(got, expected, **tolerance)


def test_sites_are_named_as_in_the_method():
    model = small_model()
    assert list(model.node_sites) == [f"{layer}.{kind}" for layer in range(2) for kind in NODE_SITE_KINDS]
    assert model.node_sites["1.mlp.post_act"] == 128
    assert {"0.resid_in", "1.resid_mid", "final_resid"} <= set(model.site_names)


def test_abstopk_keeps_exactly_k_per_token():
    model = small_model(site_keep_fraction={"mlp.post_act": 0.5})
    tokens = torch.randint(0, 64, (3, 16))
    _, cache = model.run_with_cache(tokens, list(model.node_sites))
    for site, width in model.node_sites.items():
        k = round((0.5 if site.endswith("post_act") else 0.25) * width)
        assert (cache[site] != 0).sum(-1).eq(k).all(), site


def test_hooks_record_replace_and_carry_gradients():
    model = small_model()
    tokens = torch.randint(0, 64, (2, 16))
    plain = model(tokens)
    logits, cache = model.run_with_cache(tokens)
    assert set(cache) == set(model.site_names)
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    # Replacing every node of the last residual write changes the output; the hook is removed afterwards.
    with model.hooks({"1.mlp.resid_delta": replace_with(torch.zeros(32))}):
        patched = model(tokens)
    assert not torch.allclose(patched, plain)
    torch.testing.assert_close(model(tokens), plain, rtol=0, atol=0)
    # A multiplicative mask at a site receives a gradient through the forward pass.
    mask = torch.ones(128, requires_grad=True)
    with model.hooks({"0.mlp.post_act": lambda x, site: x * mask}):
        model(tokens).sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


def test_unknown_site_is_refused():
    model = small_model()
    with pytest.raises(KeyError, match="unknown site '9.attn.q'"):
        with model.hooks({"9.attn.q": lambda x, s: None}):
            pass


def test_learned_positions_and_no_sinks_or_bigram():
    model = small_model(positional="learned", attention_sinks=False, bigram_table=False)
    assert model.wpe is not None and model.bigram is None
    assert model(torch.randint(0, 64, (1, 16))).shape == (1, 16, 64)


def test_csr_kernels_give_the_dense_logits_and_gradients():
    model = small_model()
    apply_weight_topk(sparse_parameters(model, SparsityConfig()), 0.1, 1)
    model.requires_grad_(False).wte.weight.requires_grad_(True)  # its gradient flows back through every layer
    tokens = torch.randint(0, 64, (3, 16))

    def logits_and_grad():
        model.wte.weight.grad = None
        logits = model(tokens)
        logits.square().mean().backward()
        return logits.detach(), model.wte.weight.grad.clone()

    dense = logits_and_grad()
    with sparse_weight_kernels(model, max_density=0.05) as switched:
        assert switched == []  # every layer is 10% dense: above the threshold
    with sparse_weight_kernels(model, max_density=0.2) as switched:
        assert "lm_head" in switched and "blocks.1.fc" in switched and len(switched) == 13
        csr = logits_and_grad()
    assert not any("forward" in vars(m) for m in model.modules())  # plain dense forward again
    for a, b in zip(dense, csr):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_logits_at_positions_equal_the_full_logits_there():
    model = small_model(bigram_table=True)
    torch.nn.init.normal_(model.bigram.weight)
    tokens = torch.randint(0, 64, (4, 16))
    at = torch.tensor([0, 15, 7, 3])
    torch.testing.assert_close(model(tokens, at=at), model(tokens)[torch.arange(4), at], rtol=1e-5, atol=1e-6)
