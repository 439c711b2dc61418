"""Bad input and faults: one `error:` line and status 2, nothing lost, nothing half-written, no
number that is silently wrong. Each case names the defect it guards against."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsecircuits.cli import main
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.io import MARKER, directory_lock
from sparsecircuits.rundir import read_run_config, write_model
from tests.conftest import TINY_OVERRIDES
from tests.test_cli import TINY_SET, fails


def _argv(template: list[str], paths: dict[str, Path]) -> list[str]:
    """'@name' is the path of that name, '@name/rest' a path inside it."""
    def resolve(arg: str) -> str:
        name, _, rest = arg[1:].partition("/")
        return str(paths[name] / rest if rest else paths[name])
    return [resolve(a) if a.startswith("@") else a for a in template]


@pytest.fixture
def paths(tmp_path, trained_run, task_run, circuit_dir, data_dir) -> dict[str, Path]:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "caf\xe9", "correct": "a", "incorrect": "b"}\n')
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "x = ", "correct": "1", "incorrect": "1"}) + "\n")
    (tmp_path / "folder.html").mkdir()
    return {"tmp": tmp_path, "run": trained_run, "task_run": task_run[0], "task": task_run[1], "circuit": circuit_dir,
            "data": data_dir, "file": a_file, "latin1": latin1, "same": same, "folder_html": tmp_path / "folder.html"}


# (argv with @name for a path, what the one error line must say)
BAD_INPUT = [
    # numbers that were silently ignored or nonsensical
    (["eval", "@run", "--max-tokens", "0"], "--max-tokens: 0 is too small"),
    (["explain", "@run", "--node", "0.mlp.post_act:1", "--tokens", "0"], "--tokens: 0 is too small"),
    (["explain", "@run", "--node", "0.mlp.post_act:1", "--top", "0"], "--top: 0 is too small"),
    (["sample", "@run", "--temperature", "-1"], "--temperature: -1 is out of range"),
    (["sample", "@run", "--temperature", "nan"], "--temperature: nan is not a finite number"),
    (["sample", "@run", "--max-new-tokens", "-3"], "--max-new-tokens: -3 is too small"),
    (["sample", "@run", "--num-samples", "0"], "--num-samples: 0 is too small"),
    (["prune", "@run", "--task", "lambda_func", "--out", "@tmp/c", "--search", "-2"], "--search: -2 is too small"),
    (["prune", "@run", "--task", "lambda_func", "--out", "@tmp/c", "--csr-max-density", "-1"], "--csr-max-density: -1 is out of range"),
    (["prune", "@run", "--task", "lambda_func", "--out", "@tmp/c", "--target-loss", "inf"], "--target-loss: inf is not a finite"),
    (["train", "--config", "tiny", "--out", "@tmp/r", "--stop-after", "-1"], "--stop-after: -1 is too small"),
    (["compare", "@run", "@run", "--targets", "0.3,abc"], "'abc' is not a number"),
    (["compare", "@run", "@run", "--targets", "0.3,,0.1"], "has an empty item"),
    (["demo", "--minutes", "0"], "--minutes: 0 is out of range"),
    # config values that trained NaN or were absurd
    (["train", "--config", "tiny", "--data", "@data", "--out", "@tmp/r", "--set", "optim.lr=inf"], "'optim.lr': inf is not a finite number"),
    (["train", "--config", "tiny", "--data", "@data", "--out", "@tmp/r", "--set", "model.init_std=inf"], "'model.init_std': inf"),
    (["train", "--config", "tiny", "--data", "@data", "--out", "@tmp/r", "--set", "train.steps=1e23"], "bad value for 'train.steps'"),
    (["train", "--config", "tiny", "--data", "@data", "--out", "@tmp/r", "--set", "train.steps=100000000000000000000000"],
     "train.steps = 100000000000000000000000 is out of range"),
    (["train", "--config", "tiny", "--data", "@data", "--out", "@tmp/r", "--set", "optim.eps=1e308"], "optim.eps = 1e+308 is out of range"),
    (["train", "--config", "tiny", "--data", "@data", "--out", "@tmp/r", "--set", "model.d_model=100000000"], "model.d_model = 100000000 is out of range"),
    # memory estimated from the config before anything is allocated
    (["train", "--config", "tiny", "--data", "@data", "--out", "@tmp/r", "--set", "model.d_model=65536"], "needs at least"),
    (["train", "--config", "tiny", "--data", "@data", "--out", "@tmp/r", "--set", "model.ctx_len=32",
      "--set", "train.batch_size=1048576"], "GiB of activations"),
    # outputs that are files, folders or not writable
    (["prepare", "--out", "@file", "--corpus", "@data"], "is a file, not a folder"),
    (["train", "--config", "tiny", "--data", "@data", "--out", "@file"], "is a file, not a folder"),
    (["prune", "@task_run", "--task", "@task", "--out", "@file"], "is a file, not a folder"),
    (["prune", "@task_run", "--task", "@task", "--out", "@file/c"], "is a file, not a folder"),
    (["view", "@circuit", "--out", "@folder_html"], "is a folder"),
    (["compare", "@run", "@run", "--out", "@file"], "is a file, not a folder"),
    (["demo", "--out", "@file"], "is a file, not a folder"),
    (["sweep", "--grid", "cpu-overnight", "--data", "@data", "--out", "@file"], "is a file, not a folder"),
    (["train", "--config", "tiny", "--out", "@tmp/r", "--resume", "--force"], "give one of them"),
    # tasks
    (["tasks", "eval", "@run", "--task", "@latin1"], "is not UTF-8 text"),
    (["tasks", "eval", "@run", "--task", "@same"], "same.jsonl:1: 'correct' and 'incorrect' are the same"),
    # sites that exist but only record
    (["explain", "@run", "--node", "0.resid_in:999"], "0.resid_in has 32 channels"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a[:1] + a[2:5]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_error_line(capsys, paths, argv, message):
    before = sorted(p.name for p in paths["tmp"].iterdir())
    fails(capsys, _argv(argv, paths), message)
    assert sorted(p.name for p in paths["tmp"].iterdir()) == before  # nothing half-written


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder nobody may create files in: a read-only one for a normal user; root may write anywhere
    but in /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        (Path("/sys") / "sparsecircuits-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no unwritable folder on this machine")


def test_unwritable_output_fails_before_any_work(capsys, tmp_path, corpus_dir, trained_run, task_run, data_dir):
    folder = _unwritable_folder(tmp_path)
    started = time.perf_counter()
    fails(capsys, ["prepare", "--out", str(folder / "data"), "--corpus", str(corpus_dir)], "is not writable")
    fails(capsys, ["train", "--config", "tiny", "--data", str(data_dir), "--out", str(folder / "run")] + TINY_SET, "is not writable")
    fails(capsys, ["prune", str(task_run[0]), "--task", str(task_run[1]), "--out", str(folder / "c")], "is not writable")
    assert time.perf_counter() - started < 5  # refused up front, not after the work


def test_force_replaces_only_what_the_same_command_made(capsys, tmp_path, trained_run, task_run, circuit_dir, corpus_dir,
                                                       data_dir):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    run_files = sorted(p.name for p in run_copy.iterdir())
    for target in (thesis, run_copy):
        fails(capsys, ["prepare", "--out", str(target), "--corpus", str(corpus_dir), "--force"], f"refusing to replace {target}")
        fails(capsys, ["prune", str(task_run[0]), "--task", str(task_run[1]), "--out", str(target), "--force"],
              f"refusing to replace {target}")
    fails(capsys, ["train", "--config", "tiny", "--data", str(data_dir), "--out", str(thesis), "--force"] + TINY_SET,
          f"refusing to replace {thesis}")
    assert (thesis / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in run_copy.iterdir()) == run_files
    # a circuit folder made by prune is replaced by prune --force
    circuit_copy = tmp_path / "circuit"
    shutil.copytree(circuit_dir, circuit_copy)
    assert json.loads((circuit_copy / MARKER).read_text())["made_by"] == "prune"
    fails(capsys, ["prepare", "--out", str(circuit_copy), "--corpus", str(corpus_dir), "--force"], "refusing to replace")


def test_prepare_force_replaces_its_own_data_and_cleans_a_killed_staging_folder(tmp_path, corpus_dir, capsys):
    out = tmp_path / "data"
    main(["prepare", "--out", str(out), "--corpus", str(corpus_dir), "--vocab-size", "300"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs, as after `kill -9`
    stale = tmp_path / f".data.tmp-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0" * 64)
    alive = tmp_path / f".data.tmp-{os.getppid()}-abcd"  # a running process's staging is left alone
    alive.mkdir()
    main(["prepare", "--out", str(out), "--corpus", str(corpus_dir), "--vocab-size", "300", "--force"])
    assert (out / "manifest.json").is_file() and not stale.exists() and alive.exists()


def test_small_corpora_are_called_out(capsys, tmp_path):
    from sparsecircuits.data.prepare import prepare

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    manifest = prepare(tmp_path / "data", corpus=[corpus], vocab_size=2048, show_progress=False)
    err = capsys.readouterr().err
    assert "warning: the tokenizer learned only" in err and "warning: the validation split has only" in err
    assert len(manifest["warnings"]) == 2


def test_view_does_not_overwrite_other_files(capsys, tmp_path, circuit_dir):
    notes = tmp_path / "notes.html"
    notes.with_suffix(".md").write_text("my notes")
    fails(capsys, ["view", str(circuit_dir), "--out", str(notes)], "notes.md already exists: pass --force")
    assert notes.with_suffix(".md").read_text() == "my notes" and not notes.exists()
    main(["view", str(circuit_dir), "--out", str(notes), "--force"])
    assert notes.with_suffix(".md").read_text().startswith("# Circuit for")


def _hold_lock(directory: Path) -> subprocess.Popen:
    code = ("import sys, time; from pathlib import Path; from sparsecircuits.io import directory_lock\n"
            "with directory_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_free(capsys, tmp_path, trained_run, circuit_dir):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    holder = _hold_lock(run)
    try:
        fails(capsys, ["train", "--out", str(run), "--resume"], f"being written by another sparsecircuits process (pid {holder.pid})")
    finally:
        holder.kill()  # kill -9: the lock file stays behind, its lock does not
        holder.wait()
    assert (tmp_path / ".run.lock").is_file()
    with directory_lock(run):
        with directory_lock(run):  # one process may nest its own lock
            pass
    assert not (tmp_path / ".run.lock").exists()

    circuit = tmp_path / "circuit"
    shutil.copytree(circuit_dir, circuit)
    holder = _hold_lock(circuit)
    try:
        fails(capsys, ["validate", str(circuit), "--no-control"], f"(pid {holder.pid})")
        fails(capsys, ["view", str(circuit)], f"(pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()


def test_foreign_tokenizer_and_data_are_refused(capsys, tmp_path, trained_run, data_dir):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    tokenizer = json.loads((run / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = sorted(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, other ids: garbage that loads without a word
    (run / "tokenizer.json").write_text(json.dumps(tokenizer))
    fails(capsys, ["sample", str(run)], "is not the tokenizer this run was trained with")

    other = tmp_path / "other_data"
    shutil.copytree(data_dir, other)
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    manifest = json.loads((other / "manifest.json").read_text())
    from sparsecircuits.rundir import file_sha256

    manifest["tokenizer_sha256"] = file_sha256(other / "tokenizer.json")
    (other / "manifest.json").write_text(json.dumps(manifest))
    for argv in (["explain", str(trained_run), "--node", "0.mlp.post_act:1", "--data", str(other)],
                 ["eval", str(trained_run), "--data", str(other)]):
        fails(capsys, argv, "was tokenised with another tokenizer")


def test_a_circuit_is_tied_to_its_weights(capsys, tmp_path, task_run, circuit_dir):
    twin = tmp_path / "twin"  # same config, same tokenizer, one weight changed
    shutil.copytree(task_run[0], twin)
    tensors = load_file(twin / "model.safetensors")
    tensors["lm_head.bias"][0] += 1.0
    write_model(twin, tensors, read_run_config(twin))  # a run of its own: its run.json records these weights
    circuit = tmp_path / "circuit"
    shutil.copytree(circuit_dir, circuit)
    before = {p.name: p.read_bytes() for p in circuit.iterdir()}
    for argv in (["validate", str(circuit), "--run-dir", str(twin), "--no-control"],
                 ["view", str(circuit), "--run-dir", str(twin)]):
        fails(capsys, argv, "pruned from other weights")
    assert {p.name: p.read_bytes() for p in circuit.iterdir()} == before


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    from sparsecircuits.config import load_config
    from sparsecircuits.model.gpt import SparseGPT
    from sparsecircuits.train.trainer import train

    real_loss, calls = SparseGPT.loss, []

    def loss_that_blows_up(self, tokens, targets):
        if self.training:
            calls.append(1)
        value = real_loss(self, tokens, targets)
        return value * float("nan") if self.training and len(calls) > 13 else value

    monkeypatch.setattr(SparseGPT, "loss", loss_that_blows_up)
    run = tmp_path / "run"
    with pytest.raises(SparseCircuitsError, match="diverged at step 14.*checkpoint of step 10"):
        train(load_config("tiny", TINY_OVERRIDES), data_dir, run, show_progress=False)
    assert not (run / "model.safetensors").exists()
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10
    assert all(torch.isfinite(t).all() for t in load_file(run / "checkpoint" / "model.safetensors").values())
    monkeypatch.setattr(SparseGPT, "loss", real_loss)
    train(load_config("tiny", TINY_OVERRIDES), data_dir, run, show_progress=False, force=True)  # --force starts again
    assert (run / "model.safetensors").is_file()


def test_validate_exits_non_zero_when_the_circuit_fails(capsys, tmp_path, circuit_dir):
    empty = tmp_path / "empty"
    shutil.copytree(circuit_dir, empty)
    data = json.loads((empty / "circuit.json").read_text())
    data["nodes"], data["edges"] = [], []  # nothing kept: cannot be sufficient
    (empty / "circuit.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit) as info:
        main(["validate", str(empty), "--no-control"])
    assert info.value.code == 1
    assert "FAIL" in capsys.readouterr().out


def test_repeated_task_records_are_dropped_and_splits_stay_disjoint(capsys, tmp_path, task_run):
    from sparsecircuits.tasks.records import task_records

    records = [json.loads(line) for line in task_run[1].read_text().splitlines()]
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text("".join(json.dumps(r) + "\n" for r in records + records[:50]))
    _, splits = task_records(str(repeated))
    distinct = len({json.dumps(r, sort_keys=True) for r in records})
    assert f"dropped {len(records) + 50 - distinct} repeated records" in capsys.readouterr().err
    prompts = [{r["prompt"] for r in splits[s]} for s in ("train", "choose", "test")]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert sum(map(len, splits.values())) <= distinct


def test_residual_sites_can_be_explained(capsys, trained_run):
    main(["explain", str(trained_run), "--node", "0.resid_in:3", "--node", "final_resid:3", "--top", "2", "--no-color"])
    out = capsys.readouterr().out
    assert "== 0.resid_in:3" in out and "== final_resid:3" in out


def test_checkpoint_files_have_the_usual_permissions(trained_run):
    expected = 0o666 & ~_umask()
    for path in [trained_run / "model.safetensors", *(trained_run / "checkpoint").iterdir()]:
        assert path.stat().st_mode & 0o777 == expected, path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
