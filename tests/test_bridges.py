"""Bridges: identity bridges reproduce the model, bridged training lowers every term and resumes
bit for bit, and a bad pairing is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from sparsecircuits.bridges.bridge import (BRIDGES_FILE, Bridges, DenseDistribution, bridge_sites, bridged_loss,
                                          kl_from, nmse)
from sparsecircuits.cli import main
from sparsecircuits.config import BridgeConfig, load_config
from sparsecircuits.errors import SparseCircuitsError
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


def test_kl_is_the_full_vocabulary_kl_from_the_detached_dense_distribution():
    torch.manual_seed(0)
    dense_logits = torch.randn(2, 5, 300, requires_grad=True)
    logits = torch.randn(2, 5, 300, requires_grad=True)
    value = kl_from(DenseDistribution(dense_logits), logits)
    p = dense_logits.detach().softmax(-1)
    expected = (p * (p.log() - logits.log_softmax(-1))).sum(-1).mean()  # the definition, in float64 below
    assert value.item() == pytest.approx(expected.double().item(), rel=1e-5)
    value.backward()
    assert dense_logits.grad is None  # the dense side is a fixed target
    torch.testing.assert_close(logits.grad, (logits.detach().softmax(-1) - p) / 10)
    same = kl_from(DenseDistribution(logits.detach()), logits.detach())
    assert same.item() == 0.0


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
        (["--dense", str(dense_run), "--init", str(dense_run)], "differs from the config's in model.d_model"),
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


def test_bridged_training_can_start_from_a_trained_sparse_run(tmp_path, data_dir, dense_run, trained_run):
    out = tmp_path / "from-trained"
    main(["bridge", "train", "--config", "tiny", *[a for o in TINY_OVERRIDES for a in ("--set", o)], "--set", "train.steps=2",
          "--set", "optim.lr=1e-9", "--data", str(data_dir), "--dense", str(dense_run), "--init", str(trained_run),
          "--out", str(out)])
    started, trained = load_tensors(out / MODEL_FILE), load_tensors(trained_run / MODEL_FILE)
    assert started.keys() == trained.keys()
    for name in trained:  # a learning rate of 1e-9 leaves the trained weights as they were
        torch.testing.assert_close(started[name], trained[name], rtol=0, atol=1e-6, msg=name)
    assert read_run_info(out)["initialised_from"]["run"] == str(trained_run.resolve())
    with pytest.raises(SparseCircuitsError, match="drop --init"):
        train(load_config("tiny", TINY_OVERRIDES), data_dir, out, resume=True, dense_run=dense_run, init_from=trained_run)
    with pytest.raises(SparseCircuitsError, match="is --init"):  # --force would delete it first
        train(load_config("tiny", TINY_OVERRIDES), data_dir, out, force=True, dense_run=dense_run, init_from=out)
    assert (out / MODEL_FILE).is_file()


def test_steering_through_an_identity_bridge_is_patching_the_node_to_its_counterfactual(trained_run):
    from sparsecircuits.bridges.steer import patch_node, steering

    model = SparseGPT.from_pretrained(trained_run)
    bridges = identity_bridges(model)
    generator = torch.Generator().manual_seed(4)
    presented = torch.randint(0, model.config.vocab_size, (4, 14), generator=generator)
    counterfactual = torch.randint(0, model.config.vocab_size, (4, 14), generator=generator)
    site = "1.attn.act_in"
    with torch.no_grad():
        _, here = model.run_with_cache(presented, [site])
        _, there = model.run_with_cache(counterfactual, [site])
        moved = (there[site] - here[site]).abs().sum((0, 1))
        index = int(moved.argmax())  # a channel whose value differs between the prompts
        assert moved[index] > 0

        def patch(x, _site):
            x = x.clone()
            x[..., index] = there[site][..., index]
            return x
        with model.hooks({site: patch}):
            patched = model(presented)
        with steering(model, model, bridges, (site, index), presented, counterfactual, strength=1.0):
            steered = model(presented)
        with steering(model, model, bridges, (site, index), presented, counterfactual, strength=0.0):
            unsteered = model(presented)
        with model.hooks({site: patch_node(index, there[site][..., index] - here[site][..., index], 1.0)}):
            patched_by_delta = model(presented)  # the sparse model's own curve in `steer`
    assert torch.allclose(steered, patched, atol=1e-5, rtol=0)
    assert torch.allclose(patched_by_delta, patched, atol=1e-5, rtol=0)
    assert torch.equal(unsteered, model(presented))
    assert not torch.allclose(steered, unsteered, atol=1e-3)


def test_bridge_eval_and_steer_from_the_command_line(tmp_path, task_run, capsys):
    from .conftest import idiom_records

    dense_run, _ = task_run
    data = dense_run.parent / "data"
    out = tmp_path / "bridged"
    main(["bridge", "train", "--dense", str(dense_run), "--config", "tiny", "--set", "model.ctx_len=64",
          "--set", "train.steps=12", "--set", "train.eval_interval=6", "--set", "train.batch_size=4", "--out", str(out)])
    assert (out / BRIDGES_FILE).is_file() and read_run_info(out)["data"] == str(data.resolve())
    main(["bridge", "eval", str(out), "--max-tokens", "2048"])
    table = capsys.readouterr().out
    result = json.loads((out / "bridge_eval.json").read_text())
    assert [row["site"] for row in result["sites"]] == bridge_sites(2, final_site=False)
    assert all(row["nmse_dense_to_sparse"] > 0 and row["loss_sparse_to_dense"] > 0 for row in result["sites"])
    assert "0.resid_mid" in table and (out / "bridge_eval.png").stat().st_size > 1000
    main(["bridge", "eval", str(out), "--max-tokens", "2048", "--device", "auto"])  # the CPU on a machine without CUDA
    assert table.endswith(capsys.readouterr().out) and json.loads((out / "bridge_eval.json").read_text()) == result

    task = tmp_path / "while.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in idiom_records("while", 120, 3)))
    main(["steer", str(out), "--node", "1.mlp.act_in:5", "--task", str(task), "--split", "test",
          "--strengths", "0,0.5,1", "--out", str(tmp_path / "steer")])
    printed = capsys.readouterr().out
    steer = json.loads((tmp_path / "steer" / "steer.json").read_text())
    assert steer["strengths"] == [0, 0.5, 1] and steer["records"] >= 8 and steer["control_node"] != "1.mlp.act_in:5"
    assert set(steer["curves"]) == {"node", "random_direction", "random_node", "sparse_model"}
    for curve in steer["curves"].values():
        assert curve["mean_shift"][0] == 0 and len(curve["shift_interval"]) == 3
        assert all(low <= mean <= high for (low, high), mean in zip(curve["shift_interval"], curve["mean_shift"]))
    # a ratio and a shape only for an effect whose interval excludes zero (this tiny model's is often null)
    assert ("ratio to the random direction" in printed) == steer["effect"] != ("no effect" in printed)
    assert (tmp_path / "steer" / "steer.png").is_file()

    main(["steer", str(out), "--node", "1.mlp.act_in:5", "--task", str(task), "--correct", ":", "--strengths", "0,1",
          "--out", str(tmp_path / "steer-colon"), "--device", "auto"])
    colon = json.loads((tmp_path / "steer-colon" / "steer.json").read_text())
    assert colon["records"] == steer["records"] // 2 and colon["correct"] == ":"

    from sparsecircuits.bridges.steer import pick_node, sparse_shifts

    sparse = SparseGPT.from_pretrained(out)
    candidates = {("0.attn.act_in", i) for i in range(8)} | {("1.attn.q", 0)}
    chosen = pick_node(sparse, str(task), candidates)
    assert chosen in candidates and chosen[0] == "0.attn.act_in"
    shifts = sparse_shifts(sparse, str(task), sorted(candidates - {("1.attn.q", 0)}))
    assert shifts[chosen] == min(shifts.values()) and len(set(shifts.values())) > 1  # the furthest toward the twins
    with pytest.raises(SparseCircuitsError, match="no node at a sublayer input"):
        pick_node(sparse, str(task), {("1.attn.q", 0)})

    with pytest.raises(SystemExit) as exit_info:
        main(["steer", str(dense_run), "--node", "1.mlp.act_in:5", "--task", str(task)])
    assert exit_info.value.code == 2 and "not a bridged run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["steer", str(out), "--node", "1.mlp.q:5", "--task", str(task)])
    assert "input of a sublayer" in capsys.readouterr().err


def test_bridge_demo_second_task_is_one_the_sparse_model_can_be_pruned_on():
    from sparsecircuits.experiments.bridge_demo import choose_second_task

    losses = {"sparse": {"first": {"loss": 0.01}, "a": {"loss": 0.05}, "b": {"loss": 0.12}, "c": {"loss": 0.4},
                         "d": {"error": "not single tokens"}},
              "dense": {"first": {"loss": 0.01}, "a": {"loss": 0.3}, "b": {"loss": 0.1}, "c": {"loss": 0.01},
                        "d": {"loss": 0.0}}}
    assert choose_second_task(losses, "first", 0.15) == "b"  # a: the dense model does it worse; c: over the target
    assert choose_second_task(losses, "first", 0.04) is None
    # a task whose pairs do not tokenise to one length cannot be steered: the next best is taken
    assert choose_second_task(losses, "first", 0.15, steerable=lambda task: task != "b") == "a"


def test_steer_headline_gives_a_ratio_and_a_shape_only_for_an_effect_whose_interval_excludes_zero():
    from sparsecircuits.bridges.steer import steer_headline

    curve = lambda shift, interval: {"mean_shift": [0.0, shift], "shift_interval": [(0.0, 0.0), interval]}
    result = {"task": "t", "records": 10, "node": "0.attn.act_in:1", "strengths": [0, 1], "control_node": "0.attn.act_in:2",
              "curves": {"node": curve(0.0003, (-0.0002, 0.0009)), "random_direction": curve(0.00004, (-0.001, 0.001)),
                         "random_node": curve(0.0, (0, 0)), "sparse_model": curve(0.1, (0.05, 0.15))},
              "shift_ratio_to_random_direction": 8.1, "monotonic": True, "effect": False}
    null = steer_headline(result)
    assert "no effect" in null and "ratio" not in null and "monotonic" not in null
    result.update(effect=True)
    assert "ratio to the random direction 8.1; monotonic" in steer_headline(result)
