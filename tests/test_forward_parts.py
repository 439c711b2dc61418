"""The forward pass as a composition of parts: stop at any residual site, start again there, and get
the whole pass back bit for bit, with every hook firing once."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.model.sites import residual_sites

from .test_model_options import OPTIONS, _tiny

SHAPES = {"default": [], **{name: OPTIONS[name] for name in ("concatenated_learned_positions", "relu_mlp_and_residual",
                                                               "sinusoidal_positions_and_residual_topk")}}


def _model(overrides: list[str]) -> SparseGPT:
    torch.manual_seed(0)
    model = SparseGPT(_tiny(overrides)).eval()
    with torch.no_grad():  # biases and gains off their initial values, so every part matters
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("shape", SHAPES)
def test_stopping_and_starting_at_each_residual_site_composes_to_the_whole_pass(shape):
    model = _model(SHAPES[shape])
    tokens = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(tokens)
        for site in residual_sites(model.config.n_layer):
            residual = model(tokens, stop=site)
            assert residual.shape == (3, 12, model.config.d_model)
            assert torch.equal(model(tokens, start=site, residual=residual), whole), site


def test_every_hook_fires_once_across_the_parts_and_a_patch_at_the_start_site_applies():
    model = _model([])
    tokens = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(2))
    calls: list[str] = []
    count = lambda x, site: calls.append(site)
    with torch.no_grad(), model.hooks({site: count for site in model.site_names}):
        model(tokens)
        whole_calls, calls[:] = list(calls), []
        residual = model(tokens, stop="1.resid_in")
        model(tokens, start="1.resid_in", residual=residual)
    assert calls == whole_calls and len(set(calls)) == len(model.site_names)

    zero = lambda x, site: torch.zeros_like(x)
    with torch.no_grad():
        with model.hooks({"1.resid_mid": zero}):
            patched = model(tokens)
        residual = model(tokens, stop="1.resid_mid")
        with model.hooks({"1.resid_mid": zero}):
            assert torch.equal(model(tokens, start="1.resid_mid", residual=residual), patched)
        assert not torch.equal(patched, model(tokens))


def test_a_part_between_two_sites_and_the_final_residual():
    model = _model([])
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, ["0.resid_mid", "final_resid"])
        middle = model(tokens, start="0.resid_mid", residual=cache["0.resid_mid"], stop="final_resid")
        assert torch.equal(middle, cache["final_resid"])
        at = torch.tensor([3, 8])
        assert torch.equal(model(tokens, at=at, start="final_resid", residual=middle), model(tokens, at=at))
        assert torch.allclose(model(tokens, at=at), logits[torch.arange(2), at], atol=1e-6)


def test_bad_parts_are_refused_by_name():
    model = _model([])
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(KeyError, match="not a residual site"):
        model(tokens, stop="0.attn.q")
    with pytest.raises(ValueError, match="together"):
        model(tokens, start="0.resid_mid")
    with pytest.raises(ValueError, match="comes before"):
        model(tokens, start="1.resid_in", residual=torch.zeros(1, 4, model.config.d_model), stop="0.resid_mid")
