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


def test_transformerlens_habits_text_in_and_out(task_run):
    """to_tokens/to_string round trips (str, list, 1-d, 2-d), to_str_tokens, model("text") with each
    return_type, generate on text, run_with_hooks against model.hooks, names_filter, and a bad hook's message."""
    import pytest
    import torch

    from sparsecircuits.model.gpt import SparseGPT

    run, _ = task_run
    model = SparseGPT.from_pretrained(run)
    text = "def f(x):\n    return x"
    tokens = model.to_tokens(text)
    assert tokens.shape[0] == 1 and model.to_string(tokens[0]) == text and model.to_string(tokens) == [text]
    pair = model.to_tokens([text, "x = 1"])
    assert pair.shape[0] == 2 and model.to_string(pair)[0] == text
    assert "".join(model.to_str_tokens(text)) == text and len(model.to_str_tokens(text)) == tokens.shape[1]
    assert model.to_tokens(text, prepend_eot=True).shape[1] == tokens.shape[1] + 1
    logits = model(text)
    assert torch.equal(logits, model(tokens)) and torch.equal(logits, model(tokens[0]))
    loss = model(text, return_type="loss")
    both_logits, both_loss = model(text, return_type="both")
    assert torch.equal(both_logits, logits) and float(loss) == float(both_loss) > 0
    assert abs(float(loss) - float(model.loss(tokens[:, :-1], tokens[:, 1:]))) < 1e-5
    out = model.generate(text, max_new_tokens=3, temperature=0)
    assert isinstance(out, str) and out.startswith(text)

    zero = lambda x, site: x * 0
    with model.hooks({"0.mlp.post_act": zero}):
        expected = model(tokens)
    assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=[("0.mlp.post_act", zero)]), expected)
    by_predicate = model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name == "0.mlp.post_act", zero)])
    assert torch.equal(by_predicate, expected)
    _, cache = model.run_with_cache(text, names_filter=lambda name: name.endswith("attn.q"))
    assert set(cache) == {s for s in model.site_names if s.endswith("attn.q")}
    with pytest.raises(TypeError, match=r"at site '0.attn.q' returned .*shape"):
        model.run_with_hooks(tokens, fwd_hooks=[("0.attn.q", lambda x, site: x.shape)])
    with pytest.raises(TypeError, match=r"at site '0.attn.q' returned a tensor of shape \(3,\)"):
        model.run_with_hooks(tokens, fwd_hooks=[("0.attn.q", lambda x, site: torch.zeros(3))])
