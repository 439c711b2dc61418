"""Bridges: identity bridges reproduce the model, bridged training lowers every term and resumes
bit for bit, and a bad pairing is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from sparsecircuits.bridges.bridge import BRIDGES_FILE, Bridges, bridge_sites, bridged_loss, nmse
from sparsecircuits.cli import main
from sparsecircuits.config import BridgeConfig, load_config
from sparsecircuits.io import load_tensors
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.rundir import METRICS_FILE, MODEL_FILE, read_run_info
from sparsecircuits.train.trainer import train

from .conftest import TINY_OVERRIDES

BRIDGED = TINY_OVERRIDES + ["train.steps=40", "train.log_interval=1", "train.checkpoint_interval=20", "bridge.final_site=true"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("bridges") / "dense"
    train(load_config("tiny", TINY_OVERRIDES + ["sparsity.l0_fraction=1.0", "model.d_model=48", "train.steps=30"]),
          data_dir, run_dir, show_progress=False)
    return run_dir


def identity_bridges(model: SparseGPT) -> Bridges:
    d = model.config.d_model
    bridges = Bridges(bridge_sites(model.config.n_layer, final_site=True), d, d, encoder_keep=d)
    with torch.no_grad():
        for linear in [*bridges.encoders, *bridges.decoders]:
            linear.weight.copy_(torch.eye(d))
            linear.bias.zero_()
    return bridges


def test_identity_bridges_make_every_hybrid_pass_equal_the_model(trained_run):
    model = SparseGPT.from_pretrained(trained_run)
    bridges = identity_bridges(model)
    tokens = torch.randint(0, model.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, bridges.sites)
        for site in bridges.sites:
            assert torch.equal(model(tokens, start=site, residual=bridges.encode(site, cache[site])), logits), site
            assert torch.equal(model(tokens, start=site, residual=bridges.decode(site, cache[site])), logits), site
        loss = bridged_loss(model, model, bridges, tokens[:, :-1], tokens[:, 1:], BridgeConfig(encoder_keep_fraction=1.0))
    terms = loss.terms()
    assert set(terms["nmse"]) == set(bridges.sites) and all(v == 0 for v in terms["nmse"].values())
    assert all(abs(v) < 1e-6 for key in ("kl_dense_to_sparse", "kl_sparse_to_dense") for v in terms[key].values())


def test_nmse_is_a_ratio_of_sums_and_not_detached():
    target = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]], requires_grad=True)
    prediction = torch.zeros(1, 2, 2)
    value = nmse(prediction, target)  # (1 + 9 + 4) / ((1 + 1) + (1 + 1))
    assert value.item() == pytest.approx(14 / 4)
    value.backward()
    assert target.grad is not None and target.grad.abs().sum() > 0


def _terms(run_dir, step):
    return next(r["bridge"] for r in map(json.loads, (run_dir / METRICS_FILE).read_text().splitlines())
                if r["step"] == step and "bridge" in r)


def test_bridged_training_lowers_every_term_and_writes_a_normal_run(tmp_path, data_dir, dense_run):
    run_dir = tmp_path / "bridged"
    train(load_config("tiny", BRIDGED), data_dir, run_dir, show_progress=False, dense_run=dense_run)
    first, last = _terms(run_dir, 1), _terms(run_dir, 40)
    sites = bridge_sites(2, final_site=True)
    for key in ("nmse", "kl_dense_to_sparse", "kl_sparse_to_dense"):
        assert list(first[key]) == sites
        for site in sites:
            assert last[key][site] < first[key][site], (key, site, first[key][site], last[key][site])
    assert last["pretrain_loss"] < first["pretrain_loss"]
    info = read_run_info(run_dir)["bridged_to"]
    assert info["run"] == str(dense_run.resolve()) and len(info["model_sha256"]) == 64
    assert set(load_tensors(run_dir / BRIDGES_FILE)) == {f"{part}.{i}.{p}" for part in ("encoders", "decoders")
                                                        for i in range(len(sites)) for p in ("weight", "bias")}
    model = SparseGPT.from_pretrained(run_dir)  # the sparse model alone, sparse as configured
    assert model.config.d_model == 32 and model.blocks[0].fc.weight.count_nonzero() <= 0.26 * model.blocks[0].fc.weight.numel()


def test_bridged_training_resumes_bit_for_bit(tmp_path, data_dir, dense_run):
    config = load_config("tiny", BRIDGED)
    train(config, data_dir, tmp_path / "whole", show_progress=False, dense_run=dense_run)
    train(config, data_dir, tmp_path / "split", show_progress=False, dense_run=dense_run, stop_after=20)
    train(config, data_dir, tmp_path / "split", show_progress=False, resume=True)  # the dense run comes from run.json
    for name in (MODEL_FILE, BRIDGES_FILE):
        whole, split = load_tensors(tmp_path / "whole" / name), load_tensors(tmp_path / "split" / name)
        assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole), name


def test_bad_pairings_are_refused_with_one_line(tmp_path, data_dir, dense_run, trained_run, capsys):
    cases = [
        (["--dense", str(tmp_path / "missing")], "run directory not found"),
        (["--dense", str(dense_run), "--set", "model.n_layer=3"], "same number of layers"),
        (["--dense", str(dense_run), "--set", "model.ctx_len=64"], "context"),
        (["--dense", str(dense_run), "--set", "bridge.encoder_keep_fraction=0"], "bridge.encoder_keep_fraction"),
        ([], "give --dense"),
    ]
    for extra, message in cases:
        out = tmp_path / f"run{len(message)}"
        with pytest.raises(SystemExit) as exit_info:
            main(["bridge", "train", "--config", "tiny", *[a for o in TINY_OVERRIDES for a in ("--set", o)],
                  "--data", str(data_dir), "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1, err
        assert not (out / MODEL_FILE).exists()
    with pytest.raises(SystemExit):
        main(["bridge", "train", "--dense", str(dense_run), "--resume", "--out", str(trained_run)])
    assert "trained without bridges" in capsys.readouterr().err
