import contextlib
import json
import math

import pytest

import torch
from safetensors.torch import load_file

from sparsecircuits.config import load_config
from sparsecircuits.data.dataset import TokenData
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.io import write_marker
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.model.sparsity import abs_topk, nonzeros_to_keep, sparse_parameters
from sparsecircuits.model.reference import reference_kernels
from sparsecircuits.train.trainer import lr_at, make_optimizer, model_objective, train, training_step
from tests.conftest import TINY_OVERRIDES


def test_prepare_writes_a_self_describing_data_dir(data_dir, corpus_dir):
    data = TokenData(data_dir)
    manifest = data.manifest
    assert manifest["skipped"]["undecodable"] == 1 and manifest["skipped"]["duplicates"] == 1
    assert manifest["tokens"]["train"] == len(data.splits["train"]) and manifest["tokens"]["val"] > 0
    splits = {f["split"] for f in manifest["files"]}
    assert splits == {"train", "val"}
    assert sum(f["tokens"] + 1 for f in manifest["files"] if f["split"] == "train") == manifest["tokens"]["train"]
    tokenizer = data.tokenizer()
    assert tokenizer.get_vocab_size() == 320 and tokenizer.token_to_id("<|endoftext|>") == data.eot_id
    text = "def f(x):\n    return x\n"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert (data.splits["train"] == data.eot_id).sum() == manifest["documents"]["train"]


def test_trained_matrices_hold_exactly_k_nonzeros(trained_run):
    model = SparseGPT.from_pretrained(trained_run)
    config = load_config("tiny", TINY_OVERRIDES)
    for name, param in sparse_parameters(model, config.sparsity).items():  # the minimum fits: exactly k everywhere
        assert int(param.count_nonzero()) == nonzeros_to_keep(param.numel(), config.sparsity.l0_fraction), name


def test_trained_abstopk_sites_keep_at_most_k(trained_run, data_dir):
    model = SparseGPT.from_pretrained(trained_run)
    tokens, _ = TokenData(data_dir).eval_windows("val", 32, 4 * 32)
    _, cache = model.run_with_cache(tokens, list(model.node_sites))
    for site, width in model.node_sites.items():
        counts = (cache[site] != 0).sum(-1)
        k = round(0.25 * width)
        assert counts.max() <= k, site
        assert counts.float().mean() >= 0.9 * k, site  # a site is only below k where its input has fewer nonzeros


def test_from_pretrained_gives_the_saved_logits(trained_run):
    model = SparseGPT.from_pretrained(trained_run)
    reference = SparseGPT(model.config)
    reference.load_state_dict(load_file(str(trained_run / "model.safetensors")))
    tokens = torch.randint(0, model.config.vocab_size, (2, 32))
    torch.testing.assert_close(model(tokens), reference.eval()(tokens), rtol=0, atol=0)
    assert model.tokenizer.get_vocab_size() == model.config.vocab_size


def test_metrics_log_losses_l0_nonzeros_and_dead_neurons(trained_run):
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert all("nonzeros" in r and "dead_neurons" in r and "l0_fraction" in r for r in evals)
    assert evals[-1]["l0_fraction"] == 0.25
    assert any("train_loss" in r and "tokens_per_s" in r for r in records)
    assert math.isfinite(evals[-1]["val_loss"])


def test_resume_is_bit_identical(tmp_path, data_dir):
    config = load_config("tiny", TINY_OVERRIDES)
    train(config, data_dir, tmp_path / "whole", show_progress=False)
    train(load_config("tiny", TINY_OVERRIDES), data_dir, tmp_path / "split", show_progress=False, stop_after=7)
    assert not (tmp_path / "split" / "model.safetensors").exists()
    train(load_config("tiny", TINY_OVERRIDES), data_dir, tmp_path / "split", resume=True, show_progress=False)
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert whole.keys() == split.keys()
    for name in whole:
        assert torch.equal(whole[name], split[name]), name
    steps = [json.loads(l)["step"] for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set((s, i) for i, s in enumerate(steps)))


def test_sharkfin_schedule():
    optim = load_config("tiny").optim
    optim.warmup_fraction = 0.1
    assert lr_at(0, 100, 1.0, optim) == optim.lr * 0.1
    assert lr_at(9, 100, 1.0, optim) == optim.lr
    assert abs(lr_at(55, 100, 1.0, optim) - optim.lr * 0.5) < 1e-12
    assert abs(lr_at(55, 100, 0.25, optim) - optim.lr) < 1e-12  # times 1/sqrt(L0 fraction)


def test_pipelines_restart_a_run_stopped_before_its_first_checkpoint(tmp_path, data_dir):
    from sparsecircuits.train.trainer import train_or_continue

    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, "train")  # what a run killed before its first checkpoint leaves
    (run / "config.json").write_text("{}")
    train_or_continue(load_config("tiny", TINY_OVERRIDES), data_dir, run, show_progress=False)
    assert (run / "model.safetensors").is_file()
    stamp = (run / "model.safetensors").stat().st_mtime
    train_or_continue(load_config("tiny", TINY_OVERRIDES), data_dir, run, show_progress=False)
    assert (run / "model.safetensors").stat().st_mtime == stamp  # a finished run is left alone

    other = tmp_path / "thesis"
    other.mkdir()
    (other / "config.json").write_text("{}")  # not made by train: never replaced
    with pytest.raises(SparseCircuitsError, match="refusing to replace"):
        train_or_continue(load_config("tiny", TINY_OVERRIDES), data_dir, other, show_progress=False)
    assert (other / "config.json").read_text() == "{}"


def test_fast_training_step_matches_the_straightforward_one(tiny_config):
    """Same losses and same weights after several steps of the fast and the reference kernels."""
    tiny_config.model.vocab_size = 96
    tiny_config.sparsity.l0_fraction = 0.2
    models = []
    for _ in range(2):
        torch.manual_seed(1)
        model = SparseGPT(tiny_config.model)
        for param in model.parameters():  # random biases and sinks too, so no activation ties at zero
            param.data.normal_(0, 0.2)
        models.append(model)
    tokens = torch.randint(0, 96, (4, 33))
    x, y = tokens[:, :-1], tokens[:, 1:]
    losses = []
    for model, kernels in zip(models, [reference_kernels(), contextlib.nullcontext()]):
        optimizer = make_optimizer(model, tiny_config.optim)
        sparse = sparse_parameters(model, tiny_config.sparsity)
        with kernels:
            losses.append([float(training_step(model, optimizer, sparse, x, y, 3e-3, 0.2, tiny_config)[0]) for _ in range(4)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[0][-1] < losses[0][0]
    for (name, slow), fast in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(fast != 0, slow != 0), name


def test_cpu_bf16_steps_run_the_matmuls_in_bf16_and_keep_exactly_k_per_token(tiny_config):
    tiny_config.train.cpu_bf16 = True
    tiny_config.model.vocab_size = 96
    torch.manual_seed(0)
    model = SparseGPT(tiny_config.model)
    optimizer, sparse = make_optimizer(model, tiny_config.optim), sparse_parameters(model, tiny_config.sparsity)
    seen = {}
    sites = ["0.attn.q", "1.mlp.post_act"]

    def record(x, site):
        seen[site] = (x.dtype, (x != 0).sum(-1).unique().tolist())
    tokens = torch.randint(0, 96, (4, 33))
    losses = []
    for step in range(12):
        with model.hooks({s: record for s in sites}) if step == 0 else contextlib.nullcontext():
            losses.append(float(training_step(model, optimizer, sparse, tokens[:, :-1], tokens[:, 1:], 3e-3, 1.0, tiny_config)[0]))
    for site in sites:
        dtype, counts = seen[site]
        assert dtype == torch.bfloat16 and counts == [model.blocks[int(site[0])].keep[site]], (site, seen[site])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
    assert losses[-1] < losses[0]


def test_compiled_steps_match_eager_ones_and_keep_exactly_k(tiny_config):
    """train.compile: the loss through torch.compile, AbsTopK's selection one opaque operator."""
    x = torch.randn(64, 48)
    x[3, :10] = 1.5  # ties at the k-th value
    compiled_abs_topk = torch.compile(abs_topk, fullgraph=True)  # fullgraph: the selection does not break the graph
    assert torch.equal(compiled_abs_topk(x, 12), abs_topk(x, 12)) and set((compiled_abs_topk(x, 12) != 0).sum(-1).tolist()) == {12}

    tiny_config.model.vocab_size = 96
    tokens = torch.randint(0, 96, (4, 33), generator=torch.Generator().manual_seed(1))
    runs = []
    for compiled in (False, True):
        tiny_config.train.compile = compiled
        torch.manual_seed(0)
        model = SparseGPT(tiny_config.model)
        optimizer, sparse = make_optimizer(model, tiny_config.optim), sparse_parameters(model, tiny_config.sparsity)
        objective = model_objective(model, tiny_config)
        losses = [float(training_step(model, optimizer, sparse, tokens[:, :-1], tokens[:, 1:], 3e-3, 0.25, tiny_config,
                                      objective=objective)[0]) for _ in range(4)]
        runs.append((losses, sparse))
    (eager_losses, eager_weights), (compiled_losses, compiled_weights) = runs
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    for name, weight in compiled_weights.items():
        assert int(weight.count_nonzero()) == nonzeros_to_keep(weight.numel(), 0.25), name
        assert torch.allclose(weight, eager_weights[name], atol=1e-5), name


def test_compile_is_refused_for_bridged_training(tmp_path, task_run):
    dense_run, _ = task_run
    config = load_config("tiny", TINY_OVERRIDES + ["model.ctx_len=64", "train.compile=true"])
    with pytest.raises(SparseCircuitsError, match="train.compile applies to plain training"):
        train(config, dense_run.parent / "data", tmp_path / "bridged", dense_run=dense_run, show_progress=False)
    assert not (tmp_path / "bridged").exists()


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="train.keep_freed_memory tunes glibc's malloc")
def test_keep_freed_memory_stops_large_tensors_faulting_in_again():
    """64 MiB tensors are beyond glibc's own mmap threshold: each is mapped and faulted in afresh,
    until train.keep_freed_memory keeps freed memory in the heap for the next one."""
    import subprocess
    import sys

    script = """
import resource, torch
from sparsecircuits.train.runtime import keep_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):  # many, so that a page or two reclaimed by the kernel meanwhile does not decide it
        torch.ones(16 << 20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
plain = faults()
assert keep_freed_memory()
faults()
print(plain, faults())
"""
    plain, kept = map(int, subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                          check=True).stdout.split())
    assert plain >= 20 * 32 and kept * 10 < plain  # 64 MiB is 16,384 pages of 4 KiB (32 huge pages)


def test_train_logs_to_tensorboard_when_asked_and_says_what_to_install_when_it_cannot(data_dir, tmp_path, monkeypatch):
    import builtins

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sparsecircuits.config import load_config
    from sparsecircuits.errors import SparseCircuitsError
    from sparsecircuits.train.trainer import train
    from tests.conftest import TINY_OVERRIDES

    config = load_config("tiny", TINY_OVERRIDES + ["train.tensorboard=true"])
    run = train(config, data_dir, tmp_path / "run", show_progress=False)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train_loss", "val_loss", "lr", "l0_fraction"} <= set(tags) and any(t.startswith("nonzeros/") for t in tags)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("val_loss")] == [r["step"] for r in logged if "val_loss" in r]

    real_import = builtins.__import__

    def without_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboard)
    with pytest.raises(SparseCircuitsError, match=r"pip install 'sparsecircuits\[tensorboard\]'"):
        train(config, data_dir, tmp_path / "other", show_progress=False)
    assert not (tmp_path / "other").exists()  # refused before the run directory is written
