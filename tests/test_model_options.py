"""The model options the authors' released models use: each one trains, saves, reloads and prunes,
and each one changes the forward the way it says."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.graph import circuit_edges
from sparsecircuits.circuits.masks import ablation_hooks
from sparsecircuits.rundir import compute_means
from sparsecircuits.circuits.find import PruneSettings, find_circuit
from sparsecircuits.config import ModelConfig, load_config
from sparsecircuits.data.dataset import TokenData
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.tasks.records import TaskSplits, tokenize_records
from sparsecircuits.train.trainer import train

from .conftest import TINY_OVERRIDES, idiom_records

OPTIONS = {
    "layer_norm_with_bias": ["model.norm=layer", "model.norm_eps=1e-5", "model.norm_bias=true"],
    "relu_mlp_and_residual": ["model.mlp_activation=relu", "model.residual_activation=relu"],
    "tied_embedding_without_biases": ["model.tied_embedding=true", "model.linear_bias=false"],
    "floor_rounding_and_sites_off": ["model.keep_rounding=floor", "model.keep_fraction=0.1",
                                     "model.site_keep_fraction.attn.q=off", "model.site_keep_fraction.mlp.post_act=1"],
    "concatenated_learned_positions": ["model.positional=concat", "model.d_pos=8"],
    "sinusoidal_positions_and_residual_topk": ["model.positional=concat_sinusoidal", "model.d_pos=6",
                                               "model.residual_keep_fraction.after_attn=0.5",
                                               "model.residual_keep_fraction.after_mlp=0.25"],
}


def _tiny(overrides: list[str]) -> ModelConfig:
    return load_config("tiny", TINY_OVERRIDES + overrides + ["model.vocab_size=64"]).model


@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_trains_saves_reloads_and_prunes(name, data_dir, tmp_path):
    config = load_config("tiny", TINY_OVERRIDES + OPTIONS[name] + ["model.ctx_len=64"])
    run = train(config, data_dir, tmp_path / name, show_progress=False)
    model = SparseGPT.from_pretrained(run)
    expected = config.model
    expected.vocab_size = model.config.vocab_size
    assert model.config == expected  # every option survived the round trip
    tokens = torch.randint(0, model.config.vocab_size, (2, 16))
    again = SparseGPT.from_pretrained(run)
    torch.testing.assert_close(again(tokens), model(tokens), rtol=0, atol=0)

    records = idiom_records("lambda", 24, 3)
    splits = TaskSplits(*(tokenize_records("lambda", split, records, model.tokenizer, warn=False)
                          for split in ("train", "choose", "test")))
    means = compute_means(model, TokenData(data_dir), n_tokens=2048, show_progress=False)
    everything = {site: torch.ones(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    plain = model(tokens)
    with model.hooks(ablation_hooks(model, everything, means)):  # every node kept: the plain model
        torch.testing.assert_close(model(tokens), plain, rtol=0, atol=0)
    found = find_circuit(model, splits, means, PruneSettings(steps=5, batch_pairs=8, calibration_steps=2),
                         show_progress=False, require_target=False)
    edges = circuit_edges(model, found["keep"])
    kept = {(site, i) for site, k in found["keep"].items() for i in k.nonzero().flatten().tolist()}
    assert all((e["dst"]["site"], e["dst"]["index"]) in kept or e["dst"]["site"] == "unembed" for e in edges)


def test_layer_norm_centres_and_rms_norm_does_not():
    x = torch.randn(3, 5, 32) + 4.0
    layer = SparseGPT(_tiny(["model.norm=layer", "model.norm_eps=1e-5"])).blocks[0].attn_norm
    rms = SparseGPT(_tiny([])).blocks[0].attn_norm
    assert layer(x).mean(-1).abs().max() < 1e-5
    assert rms(x).mean(-1).min() > 0.5
    with_bias = SparseGPT(_tiny(["model.norm=layer", "model.norm_bias=true"]))
    assert with_bias.blocks[0].attn_norm.bias is not None and "blocks.0.attn_norm.bias" in with_bias.state_dict()


def test_relu_options_make_the_residual_and_mlp_non_negative():
    model = SparseGPT(_tiny(["model.mlp_activation=relu", "model.residual_activation=relu", "model.keep_fraction=1"]))
    _, cache = model.run_with_cache(torch.randint(0, 64, (2, 12)))
    assert cache["0.mlp.post_act"].min() >= 0 and cache["0.resid_mid"].min() >= 0 and cache["final_resid"].min() >= 0
    assert cache["0.resid_in"].min() < 0  # the embedding itself is not rectified
    plain = SparseGPT(_tiny(["model.keep_fraction=1"]))
    assert plain.run_with_cache(torch.randint(0, 64, (2, 12)))[1]["0.resid_mid"].min() < 0


def test_tied_embedding_shares_one_tensor_and_biases_can_be_left_out():
    model = SparseGPT(_tiny(["model.tied_embedding=true", "model.linear_bias=false"]))
    names = set(model.state_dict())
    assert "lm_head.weight" not in names and "lm_head.bias" in names and not any("proj.bias" in n for n in names)
    assert model.unembedding_weight is model.wte.weight
    tokens = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        model.wte.weight[5] = 0.0
    model.lm_head.bias.data[5] = -100.0
    assert int(model(tokens)[0].argmax(-1).eq(5).sum()) == 0
    assert model(tokens)[0, :, 5].max() < -90  # a zero embedding row gives a zero logit, plus its bias


def test_floor_rounding_and_off_sites_set_the_kept_counts():
    floor = SparseGPT(_tiny(["model.keep_rounding=floor", "model.keep_fraction=0.1", "model.site_keep_fraction.attn.q=off"]))
    round_ = SparseGPT(_tiny(["model.keep_fraction=0.1"]))
    assert floor.blocks[0].keep["0.attn.act_in"] == 3 and round_.blocks[0].keep["0.attn.act_in"] == 3  # 3.2
    assert floor.blocks[0].keep["0.mlp.post_act"] == 12 and round_.blocks[0].keep["0.mlp.post_act"] == 13  # 12.8
    assert floor.blocks[0].keep["0.attn.q"] == 32  # off: every channel
    zero = SparseGPT(_tiny(["model.keep_rounding=floor", "model.keep_fraction=0.01"]))
    assert zero.blocks[0].keep["0.attn.act_in"] == 0  # floor can keep nothing, as in the authors' code
    _, cache = zero.run_with_cache(torch.randint(0, 64, (1, 4)), ["0.attn.act_in"])
    assert not cache["0.attn.act_in"].any()


@pytest.mark.parametrize("override, message", [
    ("model.norm=batch", "model.norm must be 'rms' or 'layer'"),
    ("model.norm_bias=true", "model.norm_bias needs model.norm = 'layer'"),
    ("model.mlp_activation=swish", "model.mlp_activation must be"),
    ("model.residual_activation=gelu", "model.residual_activation must be"),
    ("model.keep_rounding=ceil", "model.keep_rounding must be"),
    ("model.site_keep_fraction.attn.q=none", "must be in (0, 1] or 'off'"),
    ("model.norm_eps=0", "model.norm_eps"),
    ("model.positional=concat", "model.d_pos .* must be set exactly when"),
    ("model.d_pos=4", "model.d_pos .* must be set exactly when"),
    ("model.residual_keep_fraction.after_everything=0.5", "unknown site kind 'model.residual_keep_fraction.after_everything'"),
])
def test_bad_option_values_are_refused_by_name(override, message):
    with pytest.raises(SparseCircuitsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny", [override])


def test_relu_residual_edges_are_marked():
    model = SparseGPT(_tiny(["model.residual_activation=relu", "model.keep_fraction=1", "model.n_layer=1"]))
    keep = {site: torch.ones(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    edges = circuit_edges(model, keep)
    crossing = [e for e in edges if e["kind"] in ("embed", "residual", "unembed")]
    assert crossing and all(("through" in e) == (e["src"]["site"] != "embed" or e["dst"]["site"] != "0.attn.act_in")
                            for e in crossing)
    plain = circuit_edges(SparseGPT(_tiny(["model.keep_fraction=1", "model.n_layer=1"])), keep)
    assert not any("through" in e for e in plain)


def test_sinusoidal_positions_stay_fixed_and_dense_through_training(data_dir, tmp_path):
    from sparsecircuits.model.gpt import sinusoidal_positions

    config = load_config("tiny", TINY_OVERRIDES + OPTIONS["sinusoidal_positions_and_residual_topk"])
    model = SparseGPT.from_pretrained(train(config, data_dir, tmp_path / "run", show_progress=False))
    assert torch.equal(model.wpe.weight, sinusoidal_positions(config.model.ctx_len, 6))
    assert not model.wpe.weight.requires_grad
    _, cache = model.run_with_cache(torch.randint(0, model.config.vocab_size, (2, 16)))
    assert int((cache["0.resid_mid"] != 0).sum(-1).max()) <= 16 and int((cache["1.resid_in"] != 0).sum(-1).max()) <= 8
    assert model.node_sites["0.attn.act_in"] == 32 + 6 and model.node_sites["1.mlp.act_in"] == 32 + 6


def test_position_channels_are_nodes_of_their_own_with_position_edges():
    model = SparseGPT(_tiny(["model.positional=concat", "model.d_pos=4", "model.keep_fraction=1", "model.n_layer=1",
                             "model.residual_keep_fraction.after_attn=0.5"]))
    keep = {site: torch.ones(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    keep["0.mlp.act_in"][32 + 2] = False  # one position channel of the MLP's input pruned
    edges = circuit_edges(model, keep)
    position = [e for e in edges if e["kind"] == "position"]
    assert {(e["dst"]["site"], e["dst"]["index"]) for e in position} == (
        {("0.attn.act_in", 32 + j) for j in range(4)} | {("0.mlp.act_in", 32 + j) for j in (0, 1, 3)})
    assert all(e["src"]["site"] == "position" and e["dst"]["index"] == 32 + e["src"]["index"] for e in position)
    residual = [e for e in edges if e["kind"] in ("embed", "residual", "unembed")]
    assert all(e["dst"]["site"] == "unembed" or e["dst"]["index"] < 32 for e in residual)
    assert {e.get("through") for e in residual if e["dst"]["site"] == "0.mlp.act_in"} == {"abstopk"}
    assert all("through" not in e for e in residual if e["dst"]["site"] == "0.attn.act_in")
