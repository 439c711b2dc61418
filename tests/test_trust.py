"""Nothing is trusted that was not checked: locks on the real folder, runs that prove their own files,
ranges in every schema, a Python API that refuses bad input, escaped Markdown, messages that say
what is wrong. One table per class; each case names the file or argument and fails without the check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsecircuits.cli import main
from sparsecircuits.config import load_config
from sparsecircuits.rundir import Run, read_run_config, write_model
from tests.conftest import TINY_OVERRIDES
from tests.test_cli import TINY_SET, fails
from tests.test_nothing_lost import _argv, _digest, _edit_json, world  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, data_dir):
    """A tiny run stopped at step 10 with its checkpoint (and a second one, for mixing folders)."""
    from sparsecircuits.train.trainer import train

    root = tmp_path_factory.mktemp("stopped")
    for name in ("run", "other"):
        train(load_config("tiny", TINY_OVERRIDES), data_dir, root / name, show_progress=False, stop_after=10)
    return root


@pytest.fixture
def stopped(tmp_path, stopped_run):
    shutil.copytree(stopped_run, tmp_path / "s")
    return tmp_path / "s"


def _hold_lock(folder: Path):
    """Another process holding the write lock of `folder` until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from sparsecircuits.io import directory_lock
        with directory_lock({str(folder)!r}):
            print("held", flush=True)
            while True:  # until the test kills it
                time.sleep(1)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


# --- 1. locks follow the real folder -------------------------------------------------------------

def test_two_processes_resuming_one_run_through_a_symlink_the_second_is_refused(capsys, stopped, data_dir):
    link = stopped / "link"
    link.symlink_to(stopped / "run")
    before = _digest(stopped / "run")
    holder = _hold_lock(stopped / "run")  # a resume writing through the real path
    try:
        fails(capsys, ["train", "--resume", "--out", str(link)], "being written by another sparsecircuits process")
        fails(capsys, ["train", "--config", "tiny", *TINY_SET, "--data", str(data_dir), "--out", str(stopped / "run"), "--force"],
              "being written by another sparsecircuits process")
    finally:
        holder.kill()
        holder.wait()
    assert _digest(stopped / "run") == before


def test_force_through_a_symlink_names_the_link_and_its_folder(capsys, stopped, data_dir):
    link = stopped / "link"
    link.symlink_to(stopped / "run")
    fails(capsys, ["train", "--config", "tiny", *TINY_SET, "--data", str(data_dir), "--out", str(link), "--force"],
          f"--out {link} is a symbolic link")
    assert (stopped / "run" / "checkpoint").is_dir()


def test_a_250_character_out_is_written_and_locked(tmp_path, data_dir):
    from sparsecircuits.io import directory_lock, staged_directory

    out = tmp_path / ("r" * 250)
    with directory_lock(out), staged_directory(out) as staging:
        (staging / "x").write_text("1")
    assert (out / "x").read_text() == "1"
    main(["train", "--config", "tiny", *TINY_SET, "--set", "train.steps=2", "--data", str(data_dir),
          "--out", str(tmp_path / ("t" * 250))])
    assert (tmp_path / ("t" * 250) / "model.safetensors").is_file()


# --- 2. a run proves its own files -------------------------------------------------------------------

def _overwrite_100_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100:] = os.urandom(100)
    path.write_bytes(bytes(data))


def _rewritten(change):
    """New weights written as a run writes them (run.json's digest updated): the digest passes, so
    what refuses them is the check of their content."""
    def damage(run: Path) -> None:
        tensors = load_file(run / "model.safetensors")
        write_model(run, {k: change(v) for k, v in tensors.items()}, read_run_config(run))
    return damage


RUN_FILES = [
    ("100 bytes of the weights overwritten", lambda r: _overwrite_100_bytes(r / "model.safetensors"),
     "is not the file the run wrote"),
    ("a byte flipped in the weights", lambda r: (r / "model.safetensors").write_bytes(
        (r / "model.safetensors").read_bytes()[:-1] + bytes([(r / "model.safetensors").read_bytes()[-1] ^ 1])),
     "is not the file the run wrote"),
    ("int64 zeros as weights", _rewritten(lambda v: torch.zeros(v.shape, dtype=torch.int64)), "is int64, the model's weights are float32"),
    ("a NaN in the weights", _rewritten(lambda v: v.clone().fill_(float("nan"))), "holds NaN or infinite values"),
    ("an infinity in the weights", _rewritten(lambda v: v.clone().fill_(float("inf"))), "holds NaN or infinite values"),
    ("finite weights whose activations overflow", _rewritten(lambda v: v.clone().fill_(1e30)), "overflow"),
]


@pytest.mark.parametrize("damage, message", [c[1:] for c in RUN_FILES], ids=[c[0] for c in RUN_FILES])
@pytest.mark.parametrize("command", [["sample", "@R", "--max-new-tokens", "1"], ["eval", "@R", "--data", "@R/data"],
                                     ["tasks", "eval", "@T", "--task", "@task"]])
def test_a_run_whose_weights_are_not_what_it_wrote_is_refused_on_every_load(capsys, world, damage, message, command):
    damage(world["R"])
    damage(world["T"])
    fails(capsys, _argv(command, world), message)


RESUME = [
    ("lr edited in config.json", "run/config.json", lambda d: {**d, "optim": {**d["optim"], "lr": 0.5}},
     "is not the config its checkpoint was trained with"),
    ("l0_fraction edited in config.json", "run/config.json",
     lambda d: {**d, "sparsity": {**d["sparsity"], "l0_fraction": 0.5}}, "is not the config its checkpoint was trained with"),
    ("steps edited in config.json", "run/config.json", lambda d: {**d, "train": {**d["train"], "steps": 15}},
     "is not the config its checkpoint was trained with"),
    ("a step of 1,000,000 in state.json", "run/checkpoint/state.json", lambda d: {**d, "step": 1_000_000},
     "past train.steps 20"),
    ("another run's id in state.json", "run/checkpoint/state.json", lambda d: {**d, "run_id": "0" * 32},
     "its checkpoint is another run's"),
    # found by tests/test_fuzz.py: the optimizer's settings went to torch unchecked
    ("a huge weight decay in state.json", "run/checkpoint/state.json",
     lambda d: {**d, "param_groups": [{**g, "weight_decay": 10**60} for g in d["param_groups"]]}, "the optimizer's weight_decay is"),
    ("a list as weight decay in state.json", "run/checkpoint/state.json",
     lambda d: {**d, "param_groups": [{**g, "weight_decay": []} for g in d["param_groups"]]}, "the optimizer's weight_decay is"),
]


@pytest.mark.parametrize("target, change, message", [c[1:] for c in RESUME], ids=[c[0] for c in RESUME])
def test_resume_refuses_a_folder_edited_or_mixed_since_its_checkpoint(capsys, stopped, target, change, message):
    _edit_json(stopped / target, change)
    fails(capsys, ["train", "--resume", "--out", str(stopped / "run")], message)
    assert not (stopped / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("part, message", [("checkpoint", "its checkpoint is another run's"),
                                           ("metrics.jsonl", "is the log of another run")])
def test_resume_refuses_a_folder_holding_another_runs_checkpoint_or_log(capsys, stopped, part, message):
    target = stopped / "run" / part
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    (shutil.copytree if (stopped / "other" / part).is_dir() else shutil.copyfile)(stopped / "other" / part, target)
    fails(capsys, ["train", "--resume", "--out", str(stopped / "run")], message)


def test_a_run_from_before_digests_loads_with_a_warning(capsys, world):
    _edit_json(world["R"] / "run.json", lambda d: {k: v for k, v in d.items() if k != "weights"})
    main(["sample", str(world["R"]), "--max-new-tokens", "1"])
    assert capsys.readouterr().err.count("records no digest") == 1
    main(["sample", str(world["R"]), "--max-new-tokens", "1"])  # said once per process, not at every opening
    assert "records no digest" not in capsys.readouterr().err


def test_a_resumed_run_finishes_and_its_weights_pass_their_check(stopped):
    main(["train", "--resume", "--out", str(stopped / "run")])
    run = Run.open(stopped / "run")
    assert run.info["weights"]["dtype"] == "float32" and run.weights_sha256 == run.info["weights"]["sha256"]
    run.model()


# --- 3. schemas check ranges and nesting -------------------------------------------------------------

def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _write_grid(world, lists):
    path = world["tmp"] / "grid.toml"
    path.write_text(f"[grid]\nd_model = {lists}\nl0_fraction = [0.25]\n")
    return path


SCHEMAS = [
    ("eot_id at the vocabulary's size", "R/data/manifest.json", lambda p: _edit_json(p, lambda d: {**d, "eot_id": d["vocab_size"]}),
     ["eval", "@R", "--data", "@R/data"], "is not a token of its vocabulary"),
    ("vocab_size 1e30", "R/data/manifest.json", lambda p: _edit_json(p, lambda d: {**d, "vocab_size": 1e30}),
     ["eval", "@R", "--data", "@R/data"], "vocab_size must be a whole number from 1 to 65536"),
    ("a 5,000-digit integer", "R/config.json", lambda p: p.write_text('{"train": {"steps": ' + "9" * 5000 + "}}"),
     ["eval", "@R"], "config.json is not valid JSON"),
    ("an integer too large for a float", "R/config.json", lambda p: _edit_json(p, lambda d: {**d, "optim": {**d["optim"], "lr": 10**400}}),
     ["eval", "@R"], "a number of more than 30 digits is not a finite number"),  # found by tests/test_fuzz.py
    ("ablation bogus", "C/circuit.json", lambda p: _edit_json(p, lambda d: {**d, "ablation": "bogus"}),
     ["validate", "@C"], 'ablation must be "mean" or "zero"'),
    ("an unknown settings key", "C/circuit.json", lambda p: _edit_json(p, lambda d: {**d, "settings": {**d["settings"], "x": 1}}),
     ["validate", "@C"], "settings.x is not a pruning setting"),
    ("a settings value of the wrong type", "C/circuit.json",
     lambda p: _edit_json(p, lambda d: {**d, "settings": {**d["settings"], "steps": "many"}}), ["validate", "@C"],
     "settings.steps must be int"),
    ("a target loss above chance", "C/circuit.json", lambda p: _edit_json(p, lambda d: {**d, "target_loss": 5}),
     ["validate", "@C"], "target_loss must be a number between 0 and ln 2"),
    # found by tests/test_fuzz.py: keys the readers use that the schema did not name
    ("format as a list", "C/circuit.json", lambda p: _edit_json(p, lambda d: {**d, "format": []}), ["validate", "@C"],
     "format must be a whole number >= 1"),
    ("means_data as a number", "C/circuit.json", lambda p: _edit_json(p, lambda d: {**d, "means_data": 0}),
     ["validate", "@C"], "means_data must be a string or null"),
    ("n_edges as a string", "C/circuit.json", lambda p: _edit_json(p, lambda d: {**d, "metrics": {**d["metrics"], "n_edges": "5"}}),
     ["validate", "@C"], "metrics.n_edges must be a whole number"),
    ("optimizer state without rng.torch", "S/run/checkpoint/optimizer.safetensors",
     lambda p: save_file({k: v for k, v in load_file(p).items() if k != "rng.torch"}, p),
     ["train", "--resume", "--out", "@S/run"], "has no random-number state"),
    ("JSON nested 5,000 deep in circuit.json", "C/circuit.json", lambda p: p.write_text(_nested(5000)),
     ["validate", "@C"], "is not valid JSON"),
    ("JSON nested 5,000 deep in run.json", "R/run.json", lambda p: p.write_text(_nested(5000)), ["eval", "@R"], "is not valid JSON"),
    ("JSON nested 5,000 deep in state.json", "S/run/checkpoint/state.json", lambda p: p.write_text(_nested(5000)),
     ["train", "--resume", "--out", "@S/run"], "is not valid JSON"),
    ("JSON nested 5,000 deep in a task file", "tmp/task.jsonl", lambda p: p.write_text(_nested(5000) + "\n"),
     ["tasks", "eval", "@R", "--task", "@tmp/task.jsonl"], "bad JSON"),
    ("TOML nested 5,000 deep in a config", "tmp/deep.toml", lambda p: p.write_text("x = " + _nested(5000) + "\n"),
     ["train", "--config", "@tmp/deep.toml", "--out", "@tmp/new"], "is not valid TOML"),
    ("a sweep grid with an empty list", "tmp/grid.toml", lambda p: p.write_text("[grid]\nd_model = []\nl0_fraction = [0.25]\n"),
     ["sweep", "--grid", "@tmp/grid.toml", "--out", "@tmp/sw", "--data", "@R/data"], "d_model must be a non-empty list"),
]


@pytest.mark.parametrize("target, damage, argv, message", [c[1:] for c in SCHEMAS], ids=[c[0] for c in SCHEMAS])
def test_a_value_out_of_range_or_nested_too_deep_is_one_error(capsys, world, stopped, target, damage, argv, message):
    world["S"] = stopped
    name, _, rest = target.partition("/")
    damage(world[name] / rest)
    fails(capsys, _argv(argv, world), message)


OPTIONS = [
    (["sample", "@R", "--seed", str(2**64)], "too large"),
    (["sample", "@R", "--seed", "²"], "is not a whole number"),
    (["sample", "@R", "--max-new-tokens", "9" * 5000], "is not a whole number"),
    (["explain", "@R", "--node", "0.mlp.post_act:²"], "bad node"),
    (["train", "--config", "tiny", "--set", "model.site_keep_fraction=0.5", "--set", "model.site_keep_fraction.attn.q=0.3",
      "--out", "@tmp/n"], "set either model.site_keep_fraction.KIND or nothing"),
    (["train", "--config", "tiny", "--set", "train.steps=" + "9" * 5000, "--out", "@tmp/n"], "cannot be read"),
    (["train", "--config", "tiny", "--set", "train.steps=" + _nested(5000), "--out", "@tmp/n"], "cannot be read"),
]


@pytest.mark.parametrize("argv, message", OPTIONS, ids=[" ".join(a[:2] + a[-2:])[:60] for a, _ in OPTIONS])
def test_an_odd_option_value_is_one_error(capsys, world, argv, message):
    fails(capsys, _argv(argv, world), message)


# --- 4. the Python API checks its arguments ------------------------------------------------------------

def _api_cases(run: Path):
    model = Run.open(run).model()
    v = model.config.vocab_size
    return [
        ("an empty sequence", lambda: model(torch.zeros(1, 0, dtype=torch.long)), ValueError, "B, T >= 1"),
        ("float token ids", lambda: model(torch.zeros(1, 4)), TypeError, "integer dtype"),
        ("a token id beyond the vocabulary", lambda: model(torch.tensor([[v]])), ValueError, f"token id {v} is not in"),
        ("a negative token id", lambda: model(torch.tensor([[-1]])), ValueError, "token id -1 is not in"),
        ("a list of floats", lambda: model([[0.5, 1.0]]), TypeError, "whole numbers"),
        ("a dict as tokens", lambda: model({"a": 1}), TypeError, "not dict"),
        ("one site name as a string", lambda: model.run_with_cache("x = 1", sites="0.attn.qq"), ValueError, "unknown site '0.attn.qq'"),
        ("a number as sites", lambda: model.run_with_cache("x = 1", sites=5), TypeError, "sites must be"),
        ("a hook returning a torch.Size", lambda: model.run_with_hooks("x = 1", [("0.attn.q", lambda x, s: x.shape)]),
         TypeError, "the hook"),
        ("a hook returning a tensor of the wrong shape",
         lambda: model.run_with_hooks("x = 1", [("0.attn.q", lambda x, s: x[..., :1])]), TypeError, "the hook"),
        ("to_string of an id beyond the vocabulary", lambda: model.to_string([999999]), ValueError, "999999 is not a token id"),
        ("load_config with a string of overrides", lambda: load_config("tiny", overrides="t"), TypeError, "list of"),
        ("load_config with a number", lambda: load_config(5), TypeError, "name_or_path"),
        ("Run.open(5)", lambda: Run.open(5), TypeError, "Run.open's path must be a path"),
        ("a lone surrogate in a task prompt",
         lambda: __import__("sparsecircuits.tasks.records", fromlist=["x"]).tokenize_records(
             "t", "train", [{"prompt": "a\ud800", "correct": "b", "incorrect": "c"}], model.tokenizer),
         ValueError, "lone surrogate"),
    ]


def test_the_python_api_refuses_bad_arguments_by_name(trained_run):
    for name, call, error, message in _api_cases(trained_run):
        with pytest.raises(error) as raised:
            call()
        assert message in str(raised.value), (name, str(raised.value))


def test_a_lone_surrogate_in_a_task_file_is_one_error_naming_the_line(capsys, world):
    task = world["tmp"] / "t.jsonl"
    task.write_text('{"prompt": "a\\ud800", "correct": "b", "incorrect": "c"}\n')
    fails(capsys, ["tasks", "eval", str(world["R"]), "--task", str(task)], "t.jsonl:1: field 'prompt' holds a lone surrogate")


# --- 5. Markdown is escaped --------------------------------------------------------------------------

def test_the_markdown_summary_cannot_be_broken_out_of():
    from markdown_it import MarkdownIt

    from sparsecircuits.viewer.render import md_code, md_text

    hostile = "q`` <svg onload=alert(1)> | x"
    for rendered in (md_code(hostile), md_text(hostile), md_code("`"), md_code("a\nb")):
        page = MarkdownIt("commonmark", {"html": True}).enable("table").render(f"| a |\n|---|\n| {rendered} |\n")
        assert "<svg" not in page and page.count("<td>") == 1, page
    assert "&lt;svg" in MarkdownIt("commonmark", {"html": True}).render(md_code(hostile))


def test_a_circuit_md_of_a_hostile_task_name_holds_no_raw_html(world):
    from markdown_it import MarkdownIt

    _edit_json(world["C"] / "circuit.json", lambda d: {**d, "task": "t`<svg onload=alert(1)>`"})
    main(["view", str(world["C"]), "--task", str(world["C"] / "my_task.jsonl")])
    page = MarkdownIt("commonmark", {"html": True}).enable("table").render((world["C"] / "circuit.md").read_text())
    assert "<svg" not in page


# --- 6. messages that say what is wrong ------------------------------------------------------------------

def test_a_circuit_of_no_nodes_is_viewed(world):
    _edit_json(world["C"] / "circuit.json", lambda d: {**d, "nodes": [], "edges": []})
    main(["view", str(world["C"]), "--task", str(world["C"] / "my_task.jsonl")])
    assert "0 of 0 nodes" in (world["C"] / "circuit.md").read_text()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "run.json is a folder, not a file"),
    (lambda p: os.mkfifo(p), "is not a regular file"),
    (lambda p: p.symlink_to(p), "is a symbolic link loop"),
])
def test_run_json_that_is_not_a_file_is_named_for_what_it_is(capsys, world, make, message):
    (world["R"] / "run.json").unlink()
    make(world["R"] / "run.json")
    fails(capsys, ["eval", str(world["R"])], message)


def test_a_kept_model_with_an_edited_step_says_so(capsys, world):
    kept = world["T"] / "checkpoints" / "step_000100" / "checkpoint.json"
    _edit_json(kept, lambda d: {**d, "step": 7})
    fails(capsys, ["tasks", "eval", str(world["T"]), "--step", "100", "--task", str(world["task"])],
          "says step 7, but its folder is step 100")


class Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_is_refused_without_suggesting_to_load_it_unsafely(capsys, world):
    model = world["tmp"] / "M"
    shutil.copytree(Path(__file__).parent / "fixtures" / "openai" / "relu_mlp_and_residual", model)
    torch.save({"x": Evil()}, model / "final_model.pt")  # a pickle of an object: loading it would run its code
    with pytest.raises(SystemExit):
        main(["import-openai", str(model), "--tokenizer", str(world["R"] / "tokenizer.json"), "--out", str(world["tmp"] / "i")])
    err = capsys.readouterr().err
    assert "weights_only" not in err and "holds Python objects besides tensors" in err and "this ran" not in err


def test_a_full_disk_names_sizes_people_read():
    import errno

    from sparsecircuits.io import disk_error, human_bytes

    assert [human_bytes(n) for n in (0, 1, 999, 12_345, 4_500_000, 1_200_000_000)] == [
        "0 bytes", "1 byte", "999 bytes", "12.3 kB", "4.5 MB", "1.2 GB"]
    message = str(disk_error(OSError(errno.ENOSPC, "No space left on device"), Path("/tmp/x"), 2048))
    assert "it needs 2.0 kB" in message and "0.0 MB" not in message


def test_special_files_inside_a_corpus_folder_are_skipped_by_name(capsys, tmp_path, corpus_dir):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    os.mkfifo(corpus / "pipe.py")  # reading it would wait forever
    (corpus / "loop.py").symlink_to(corpus / "loop.py")
    main(["prepare", "--corpus", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert "skipped" in err and "pipe.py" in err and "loop.py" in err and (tmp_path / "data" / "manifest.json").is_file()


def test_an_audit_of_a_task_with_too_few_records_is_an_error_not_a_pass(capsys, tmp_path):
    task = tmp_path / "few.jsonl"
    task.write_text('{"prompt": "x = 1\\nif x", "correct": ":", "incorrect": " ="}\n'
                    '{"prompt": "y = 2\\nwhile y", "correct": " =", "incorrect": ":"}\n')
    fails(capsys, ["tasks", "audit", str(task)], "too few to audit")


@pytest.mark.parametrize("make", ["fifo", "folder"])
def test_resume_with_a_log_that_is_not_a_file_is_refused_not_left_waiting(capsys, stopped, make):
    log = stopped / "run" / "metrics.jsonl"  # found by tests/test_fuzz.py: a pipe here blocked --resume forever
    log.unlink()
    os.mkfifo(log) if make == "fifo" else log.mkdir()
    fails(capsys, ["train", "--resume", "--out", str(stopped / "run")], "metrics.jsonl is ")
