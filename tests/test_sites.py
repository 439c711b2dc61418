"""Every site is a module in the model's tree: PyTorch forward hooks and nnsight reach the same
activations as `model.hooks` and `run_with_cache`."""

import pytest
import torch

from sparsecircuits import SparseGPT, load_config
from sparsecircuits.model.sites import Site


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SparseGPT(load_config("tiny", ["model.vocab_size=300", "model.n_layer=2"]).model).eval()


def test_every_site_is_a_module_at_a_path_a_person_can_guess(model):
    names = {module.name: path for path, module in model.named_modules() if isinstance(module, Site)}
    assert set(names) == set(model.site_names)
    assert names["1.mlp.post_act"] == "blocks.1.mlp.post_act" and names["0.attn.q"] == "blocks.0.attn.q"
    assert names["1.resid_mid"] == "blocks.1.resid_mid" and names["final_resid"] == "final_resid"
    assert not any("mlp.post_act" in key for key in model.state_dict())  # sites hold no weights


def test_a_pytorch_forward_hook_sees_and_replaces_what_model_hooks_do(model):
    tokens = torch.randint(0, 300, (2, 16))
    _, cache = model.run_with_cache(tokens, ["1.mlp.post_act"])
    seen = {}
    handle = model.blocks[1].mlp.post_act.register_forward_hook(lambda module, args, out: seen.setdefault("x", out))
    model(tokens)
    handle.remove()
    torch.testing.assert_close(seen["x"], cache["1.mlp.post_act"], rtol=0, atol=0)
    handle = model.blocks[0].attn.v.register_forward_hook(lambda module, args, out: out * 0)
    patched = model(tokens)
    handle.remove()
    with model.hooks({"0.attn.v": lambda x, site: x * 0}):
        torch.testing.assert_close(patched, model(tokens), rtol=0, atol=0)
    assert not torch.equal(patched, model(tokens))


def test_nnsight_traces_and_intervenes_at_a_site_with_the_same_numbers(model):
    nnsight = pytest.importorskip("nnsight", reason="pip install nnsight (the `test` extra has it) to run this check")
    tokens = torch.randint(0, 300, (2, 16))
    _, cache = model.run_with_cache(tokens, ["1.mlp.post_act"])
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(tokens):
        seen = wrapped.blocks[1].mlp.post_act.output.save()
    with wrapped.trace(tokens):
        wrapped.blocks[0].attn.v.output[:] = 0
        patched = wrapped.output.save()
    torch.testing.assert_close(seen, cache["1.mlp.post_act"], rtol=0, atol=0)
    with model.hooks({"0.attn.v": lambda x, site: x * 0}):
        torch.testing.assert_close(patched, model(tokens), rtol=0, atol=0)
