"""Nothing lost: an output never destroys an input, --force replaces only what the command made, a
file of a run, data or circuit folder is never written over, a full disk or a torn write leaves the
last good state and one `error:` line, circuits work from any folder, and messages say what to do."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sparsecircuits.cli import main
from tests.test_cli import TINY_SET, fails


@pytest.fixture
def world(tmp_path, trained_run, task_run, circuit_dir, data_dir):
    """Copies a test may damage: R a finished tiny run with its data inside it (R/data, made by
    prepare), T the task model's run, C a circuit of T holding its task file and the user's notes."""
    run = tmp_path / "R"
    shutil.copytree(trained_run, run)
    shutil.copytree(data_dir, run / "data")
    task_model = tmp_path / "T"
    shutil.copytree(task_run[0], task_model)
    circuit = tmp_path / "C"
    shutil.copytree(circuit_dir, circuit)
    shutil.copyfile(task_run[1], circuit / "my_task.jsonl")
    (circuit / "notes.txt").write_text("my notes")
    return {"tmp": tmp_path, "R": run, "T": task_model, "C": circuit, "task": task_run[1], "data": data_dir}


def _argv(template, world):
    return [str(world[a[1:].split("/")[0]]) + a[1 + len(a[1:].split("/")[0]):] if a.startswith("@") else a for a in template]


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# Each case: the command, the message, and what it must leave exactly as it was.
DATA_LOSS = [
    # 1. an output that is an input
    (["bridge", "train", "--dense", "@R", "--config", "tiny", *TINY_SET, "--out", "@R", "--force"],
     "is --dense", "R"),
    (["bridge", "train", "--dense", "@T", "--init", "@R", "--config", "tiny", *TINY_SET, "--out", "@R", "--force"],
     "is --init", "R"),
    # 2. --force on a run folder that holds the data folder prepare made
    (["train", "--config", "tiny", *TINY_SET, "--data", "@R/data", "--out", "@R", "--force"], "contains --data", "R"),
    # 3. a file of a run folder, and a file the user has
    (["label", "@R", "--node", "0.attn.q:0", "--out", "@R/model.safetensors"], "which `sparsecircuits train` made", "R"),
    (["label", "@R", "--node", "0.attn.q:0", "--out", "@C/notes.txt"], "which `sparsecircuits prune` made", "C"),
    (["label", "@R", "--node", "0.attn.q:0", "--out", "@R/checkpoint/state.json", "--force"],
     "which `sparsecircuits train` made", "R"),
    (["evolve", "@T", "--task", "@task", "--out", "@T/evolution"], "lies inside the run", "T"),
    # 4. --force on a circuit folder that holds the task file being read and the user's notes
    (["prune", "@T", "--task", "@C/my_task.jsonl", "--out", "@C", "--force"], "contains the task file", "C"),
    (["prune", "@T", "--task", "@task", "--out", "@C", "--force"], "was not made by `sparsecircuits prune`", "C"),
    (["prepare", "--corpus", "@C", "--out", "@C", "--force"], "is --corpus", "C"),
    (["export-openai", "@R", "--out", "@R/exported"], "lies inside RUN_DIR", "R"),
]


@pytest.mark.parametrize("argv, message, kept", DATA_LOSS, ids=[" ".join(a[:2]) + f" ({m})" for a, m, _ in DATA_LOSS])
def test_no_command_destroys_what_it_reads_or_what_it_did_not_make(capsys, world, argv, message, kept):
    before = _digest(world[kept])
    fails(capsys, _argv(argv, world), message)
    assert _digest(world[kept]) == before


def test_label_asks_for_force_to_replace_a_file_and_makes_a_missing_folder(capsys, world):
    notes = world["tmp"] / "notes.json"
    notes.write_text("mine")
    fails(capsys, ["label", str(world["R"]), "--node", "0.attn.q:0", "--out", str(notes)], "pass --force")
    assert notes.read_text() == "mine"
    main(["label", str(world["R"]), "--node", "0.attn.q:0", "--out", str(notes), "--force", "--tokens", "512"])
    assert json.loads(notes.read_text())["nodes"][0]["site"] == "0.attn.q"
    deep = world["tmp"] / "new" / "folder" / "labels.json"
    main(["label", str(world["R"]), "--node", "0.attn.q:0", "--out", str(deep), "--tokens", "512"])
    assert deep.is_file()


def test_a_torn_last_metrics_line_is_dropped_on_resume(capsys, tmp_path, data_dir):
    run = tmp_path / "run"
    main(["train", "--config", "tiny", *TINY_SET, "--data", str(data_dir), "--out", str(run), "--stop-after", "10"])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "train_lo')  # what a full disk leaves
    capsys.readouterr()
    main(["train", "--out", str(run), "--resume"])
    assert "last line is incomplete" in capsys.readouterr().err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["step"] <= 20 for line in lines) and (run / "model.safetensors").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system where this test may mount one (root, tmpfs), else skipped with the reason."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'mount failed'})")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_one_error_line_naming_the_path_and_leaves_nothing_half_written(capsys, small_disk, corpus_dir,
                                                                                        data_dir, trained_run):
    (small_disk / "filler").write_bytes(b"\0" * 2_600_000)
    fails(capsys, ["prepare", "--corpus", str(corpus_dir), "--vocab-size", "300", "--out", str(small_disk / "data")],
          "no space left on the device holding")
    assert sorted(p.name for p in small_disk.iterdir() if not p.name.endswith(".lock")) == ["filler"]
    (small_disk / "filler").unlink()
    (small_disk / "filler").write_bytes(b"\0" * 2_900_000)
    fails(capsys, ["train", "--config", "tiny", *TINY_SET, "--data", str(data_dir), "--out", str(small_disk / "run")],
          "no space left on the device holding")
    err = capsys.readouterr().err
    assert ".tmp-" not in err


def validates(capsys, args: list[str]) -> None:
    """`validate` read the circuit's task and ran to a verdict: exit 0 (evidence) or 1 (not evidence; a
    30-step mask on the tiny fixture lands within a hundredth of its target either side)."""
    try:
        main(args)
    except SystemExit as exit:
        assert exit.code == 1
    assert "verdict:" in capsys.readouterr().out


def test_a_circuit_works_from_any_folder_and_a_moved_task_file_is_given_with_task(capsys, tmp_path, task_run, monkeypatch):
    run, task = task_run
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(task, work / "mine.jsonl")
    monkeypatch.chdir(work)
    main(["prune", str(run), "--task", "mine.jsonl", "--out", "circuit", "--target-loss", "0.66", "--steps", "30"])
    assert json.loads((work / "circuit" / "circuit.json").read_text())["task_source"] == str(work / "mine.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    validates(capsys, ["validate", str(work / "circuit"), "--no-control"])
    shutil.move(work / "mine.jsonl", elsewhere / "moved.jsonl")
    capsys.readouterr()
    fails(capsys, ["validate", str(work / "circuit"), "--no-control"], "pass --task FILE")
    validates(capsys, ["validate", str(work / "circuit"), "--no-control", "--task", "moved.jsonl"])
    (elsewhere / "other.jsonl").write_text((elsewhere / "moved.jsonl").read_text().replace("lambda", "lambda ", 1))
    fails(capsys, ["view", str(work / "circuit"), "--task", "other.jsonl"], "holds other records")


def test_a_refused_bridge_train_writes_nothing(capsys, tmp_path, trained_run):
    out = tmp_path / "bridged"
    fails(capsys, ["bridge", "train", "--dense", str(trained_run), "--config", "tiny", *TINY_SET, "--set", "model.n_layer=3",
                   "--out", str(out)], "need the same number of layers")
    assert not out.exists()


def test_messages_a_new_user_can_act_on(capsys, tmp_path, task_run, circuit_dir, data_dir):
    run, task = task_run
    lines = task.read_text().splitlines()
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    main(["tasks", "eval", str(run), "--task", str(bom)])
    assert "bom" in capsys.readouterr().out
    short = tmp_path / "short.jsonl"
    short.write_text(lines[0] + "\n")
    fails(capsys, ["tasks", "eval", str(run), "--task", str(short)], "a task file needs at least 160 distinct records")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fails(capsys, ["tasks", "eval", str(run), "--task", str(empty)], "has 0 records in its test split")
    fails(capsys, ["validate", str(circuit_dir), "--run-dir", str(data_dir)], "is a prepared data folder, not a run")
    fails(capsys, ["bridge", "train", "--dense", str(data_dir), "--config", "tiny", "--out", str(tmp_path / "b")],
          "is a prepared data folder, not a run")


def test_ctrl_c_in_train_says_one_thing(capsys, tmp_path, data_dir, monkeypatch):
    from sparsecircuits.train import trainer

    def interrupted_step(self):
        os.kill(os.getpid(), 2)  # SIGINT arrives during a step: the loop finishes it, checkpoints and stops
        return original(self)

    original = trainer.Trainer.train_step
    monkeypatch.setattr(trainer.Trainer, "train_step", interrupted_step)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "tiny", *TINY_SET, "--data", str(data_dir), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and err.count("interrupted") == 1 and "continue with --resume" in err
    assert (tmp_path / "run" / "checkpoint" / "state.json").is_file()


def test_prepare_with_a_runs_tokenizer_makes_data_that_run_accepts(capsys, tmp_path, trained_run, corpus_dir):
    from sparsecircuits.rundir import Run

    out = tmp_path / "data"
    main(["prepare", "--corpus", str(corpus_dir), "--tokenizer", str(trained_run), "--out", str(out)])
    assert (out / "tokenizer.json").read_bytes() == (trained_run / "tokenizer.json").read_bytes()
    assert Run.open(trained_run).data(out).manifest["tokenizer_sha256"] == Run.open(trained_run).info["tokenizer_sha256"]
    fails(capsys, ["prepare", "--corpus", str(corpus_dir), "--tokenizer", str(trained_run), "--vocab-size", "300",
                   "--out", str(tmp_path / "d2")], "drop --vocab-size")
    fails(capsys, ["prepare", "--corpus", str(corpus_dir), "--tokenizer", str(tmp_path), "--out", str(tmp_path / "d3")],
          "no tokenizer.json there")


OPENAI = Path(__file__).parent / "fixtures" / "openai" / "relu_mlp_and_residual"


def _edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


# Each case: (file to damage, how, the command that reads it, the message naming the field)
DAMAGED = [
    ("R/config.json", lambda p: p.write_text("null"), ["eval", "@R"], "config.json: the file must be an object"),
    ("R/config.json", lambda p: p.write_bytes(os.urandom(64)), ["eval", "@R"], "config.json is not valid JSON"),
    ("R/run.json", lambda p: _edit_json(p, lambda d: {**d, "data": 5}), ["eval", "@R"], "run.json: data must be a string or null"),
    ("R/data/manifest.json", lambda p: p.write_text("[]"), ["eval", "@R", "--data", "@R/data"], "the file must be an object"),
    ("R/data/manifest.json", lambda p: _edit_json(p, lambda d: {k: v for k, v in d.items() if k != "vocab_size"}),
     ["eval", "@R", "--data", "@R/data"], "'vocab_size' is missing"),
    ("R/data/val.bin", lambda p: p.write_bytes(b"\xff\xff" * (p.stat().st_size // 2)), ["eval", "@R", "--data", "@R/data"],
     "outside the"),
    ("R/checkpoint/state.json", lambda p: p.write_text("{}"), ["train", "--out", "@R", "--resume"], "'step' is missing"),
    ("R/checkpoint/state.json", lambda p: _edit_json(p, lambda d: {**d, "step": "20"}), ["train", "--out", "@R", "--resume"],
     "step must be a whole number >= 0"),
    ("R/checkpoint/state.json", lambda p: _edit_json(p, lambda d: {**d, "step": -5}), ["train", "--out", "@R", "--resume"],
     "step must be a whole number >= 0"),
    ("C/circuit.json", lambda p: p.write_text("[]"), ["validate", "@C"], "the file must be an object"),
    ("C/circuit.json", lambda p: _edit_json(p, lambda d: {**d, "nodes": [{"site": "0.attn.q", "index": "3"}]}),
     ["validate", "@C"], "nodes[0].index must be a whole number"),
    ("C/circuit.json", lambda p: _edit_json(p, lambda d: {**d, "nodes": [{"site": "0.attn.q", "index": 3.5}]}),
     ["view", "@C"], "nodes[0].index must be a whole number"),
    ("C/circuit.json", lambda p: _edit_json(p, lambda d: {k: v for k, v in d.items() if k != "model"}),
     ["validate", "@C"], "'model' is missing"),
    ("C/validation.json", lambda p: p.write_text('{"sufficient": tr'), ["view", "@C"], "validation.json is not valid JSON"),
    ("M/beeg_config.json", lambda p: _edit_json(p, lambda d: {**d, "d_mlp": 64.0}), ["import-openai", "@M", "--out", "@tmp/i"],
     "d_mlp must be a whole number >= 1"),
    ("M/tokenizer.json", lambda p: p.write_text("{not json"), ["import-openai", "@M", "--out", "@tmp/i"],
     "is not a valid tokenizer.json"),
]


@pytest.mark.parametrize("target, damage, argv, message", DAMAGED, ids=[f"{t} ({m})" for t, _, _, m in DAMAGED])
def test_a_damaged_file_is_one_error_naming_the_file_and_the_field(capsys, world, target, damage, argv, message):
    shutil.copytree(OPENAI, world["tmp"] / "M")
    (world["tmp"] / "M" / "tokenizer.json").write_text((world["T"] / "tokenizer.json").read_text())
    world["M"] = world["tmp"] / "M"
    if not (world["C"] / "validation.json").is_file():
        (world["C"] / "validation.json").write_text("{}")
    name, _, rest = target.partition("/")
    damage(world[name] / rest)
    fails(capsys, _argv(argv, world), message)


def test_a_damaged_labels_file_is_labelled_again(world):
    from sparsecircuits.circuits.labels import read_labels

    labels = world["C"] / "labels.json"
    labels.write_text(json.dumps({"weights_sha256": "x", "threshold": 0.6, "tokens_read": 1}))
    assert read_labels(world["C"], "x") is None
