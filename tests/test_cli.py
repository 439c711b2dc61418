"""Every bad input gives one line saying what is wrong, exit status 2, and no half-written output."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sparsecircuits.cli import main
from tests.conftest import TINY_OVERRIDES

TINY_SET = [arg for o in TINY_OVERRIDES for arg in ("--set", o)]


def fails(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_every_subcommand_has_help(capsys):
    for command in ("prepare", "train", "eval", "sample", "configs"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: sparsecircuits " + command in capsys.readouterr().out


def test_prepare_bad_corpora(capsys, tmp_path):
    fails(capsys, ["prepare", "--out", str(tmp_path / "d"), "--corpus", str(tmp_path / "nope")], "corpus path not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(capsys, ["prepare", "--out", str(tmp_path / "d"), "--corpus", str(empty)], "has no non-empty")
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.py").write_text("   \n")
    (blank / "b.py").write_text("\n")
    fails(capsys, ["prepare", "--out", str(tmp_path / "d"), "--corpus", str(blank)], "has no non-empty")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "x = 1"}\n{"txt": 3}\n')
    fails(capsys, ["prepare", "--out", str(tmp_path / "d"), "--corpus", str(bad_jsonl)], "bad.jsonl:2")
    assert not (tmp_path / "d").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.")]  # no staging left behind


def test_prepare_refuses_to_overwrite(capsys, data_dir, corpus_dir):
    fails(capsys, ["prepare", "--out", str(data_dir), "--corpus", str(corpus_dir)], "already exists")


def test_prepare_reads_jsonl_and_txt(tmp_path, corpus_dir):
    from sparsecircuits.data.prepare import prepare

    texts = sorted(corpus_dir.glob("*.py"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": p.read_text()}) + "\n" for p in texts[:6]))
    (tmp_path / "notes.txt").write_text(texts[7].read_text())
    manifest = prepare(tmp_path / "out", corpus=[tmp_path / "docs.jsonl", tmp_path / "notes.txt"], vocab_size=300,
                       show_progress=False)
    assert manifest["documents"]["train"] + manifest["documents"]["val"] == 7


def test_train_bad_configs(capsys, tmp_path, data_dir):
    base = ["train", "--data", str(data_dir), "--out", str(tmp_path / "run")]
    fails(capsys, base + ["--config", "tiny", "--set", "model.widht=3"], "unknown config key 'model.widht'")
    fails(capsys, base + ["--config", "tiny", "--set", "optim.lr=-1"], "optim.lr")
    fails(capsys, base + ["--config", "tiny", "--set", "model.vocab_size=999"], "model.vocab_size is 999")
    fails(capsys, base + ["--config", "nonexistent.toml"], "config file not found")
    fails(capsys, base + ["--config", "tiny", "--set", "model.ctx_len=100000"], "fewer than model.ctx_len")
    (tmp_path / "empty").mkdir()
    fails(capsys, ["train", "--config", "tiny", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")],
          "not a prepared data directory")
    assert not (tmp_path / "run").exists()


def test_not_a_run_directory(capsys, tmp_path):
    fails(capsys, ["eval", str(tmp_path)], "not a run directory")
    fails(capsys, ["sample", str(tmp_path / "missing")], "run directory not found")


def test_damaged_runs(capsys, tmp_path, trained_run):
    truncated = tmp_path / "truncated"
    shutil.copytree(trained_run, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    fails(capsys, ["eval", str(truncated)], "is not the file the run wrote")

    mismatched = tmp_path / "mismatched"
    shutil.copytree(trained_run, mismatched)
    tokenizer = json.loads((mismatched / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["extra-token"] = len(tokenizer["model"]["vocab"])
    (mismatched / "tokenizer.json").write_text(json.dumps(tokenizer))
    fails(capsys, ["sample", str(mismatched)], "is not the tokenizer this run was trained with")

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["d_model"] = 48
    (other / "config.json").write_text(json.dumps(config))
    fails(capsys, ["eval", str(other)], "does not fit the model")

    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained_run, unfinished)
    (unfinished / "model.safetensors").unlink()
    fails(capsys, ["eval", str(unfinished)], "--resume")


def test_resume_with_a_different_config(capsys, tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    fails(capsys, ["train", "--config", "tiny", "--out", str(run), "--resume"] + TINY_SET + ["--set", "train.steps=99"],
          "different config")
    fails(capsys, ["train", "--config", "tiny", "--out", str(run)] + TINY_SET, "already exists")
    fails(capsys, ["train", "--out", str(tmp_path / "fresh"), "--resume"], "not a run directory")


def test_ctrl_c_checkpoints_and_resume_finishes(tmp_path, data_dir):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sparsecircuits", "train", "--config", "tiny", "--data", str(data_dir), "--out", str(run)]
    cmd += TINY_SET + ["--set", "train.steps=300", "--set", "train.log_interval=1", "--set", "train.eval_interval=100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and not (metrics.is_file() and metrics.stat().st_size > 0):  # a step is logged
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "continue with --resume" in err
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert 0 < state["step"] < 300 and not (run / "model.safetensors").exists()
    result = subprocess.run([sys.executable, "-m", "sparsecircuits", "train", "--out", str(run), "--resume"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (run / "model.safetensors").is_file() and "validation loss" in result.stdout
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 300


def test_cli_eval_and_sample(capsys, trained_run):
    main(["eval", str(trained_run), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert {"val_loss", "bigram_loss", "unigram_loss", "dead_neurons", "nonzero_weights", "l0_fraction_measured"} <= set(result)
    assert abs(result["l0_fraction_measured"] - 0.25) < 0.01  # TINY_OVERRIDES' l0_fraction, counted from the weights
    main(["sample", str(trained_run), "--prompt", "def ", "--max-new-tokens", "8"])
    assert capsys.readouterr().out.startswith("def ")


def test_no_traceback_from_the_real_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sparsecircuits", "eval", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_ctrl_c_in_a_resumable_command_exits_130_with_a_message_not_a_traceback(capsys, tmp_path, data_dir, monkeypatch):
    import sparsecircuits.experiments.sweep as sweep_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep_module, "sweep", interrupted)
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--grid", "cpu-frontier", "--out", str(tmp_path / "grid"), "--data", str(data_dir)])
    assert info.value.code == 130
    assert "run the same command again to continue" in capsys.readouterr().err


def _help_text(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_texts_say_what_the_commands_do(capsys):
    """No literal '%%'; --no-control names both controls; sweep lists every built-in grid; bridge names its demo;
    steer's --node auto is described as steer picks it."""
    from sparsecircuits.cli import ORDER
    from sparsecircuits.config import builtin_grids

    for argv in [[c] for c in ORDER] + [["tasks", "audit"], ["tasks", "list"], ["bridge", "demo"], ["bridge", "train"]]:
        assert "%%" not in _help_text(capsys, argv), argv
    assert "both pruning controls" in _help_text(capsys, ["validate"])
    sweep_help = re.sub(r"-\n\s+", "-", _help_text(capsys, ["sweep"]))  # argparse wraps after a hyphen
    assert "cpu-frontier" in builtin_grids() and all(g in sweep_help for g in builtin_grids())
    assert "demo" in _help_text(capsys, ["bridge"])
    assert "moves the sparse model's own log-odds" in " ".join(_help_text(capsys, ["steer"]).split())


def test_version_and_a_closed_pipe_and_a_fast_start(capsys):
    from sparsecircuits import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"sparsecircuits {__version__}"
    command = [sys.executable, "-m", "sparsecircuits"]
    reader_gone = subprocess.Popen([*command, "configs", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader_gone.stdout.close()  # `configs tiny | head`: the reader leaves before the first write
    assert reader_gone.wait(timeout=60) == 0 and reader_gone.stderr.read() == b""
    # listing tasks and --help load no torch (they took 19 s and 2 s)
    for argv in (["--help"], ["tasks", "list"]):
        code = ("import sys, runpy; sys.argv = ['sparsecircuits', *%r]\ntry:\n    runpy.run_module('sparsecircuits', run_name='__main__')\n"
                "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)") % (argv,)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.stderr.strip().splitlines()[-1] == "False", (argv, done.stderr)


def test_every_command_is_a_function_at_the_package_root():
    import sparsecircuits

    for name in ("prepare", "train", "prune", "validate", "cleanup", "paths", "view", "label", "explain", "evolve", "compare",
                 "sweep", "demo", "evaluate", "score_tasks", "audit_task", "bridge_eval", "bridge_demo", "steer", "import_openai",
                 "import_openai_circuit", "export_openai", "Run", "SparseGPT", "Circuit", "PruneSettings"):
        assert callable(getattr(sparsecircuits, name)), name
        assert name in sparsecircuits.__all__ and name in dir(sparsecircuits)


MODEL_COMMANDS = [["train"], ["eval"], ["sample"], ["tasks", "eval"], ["prune"], ["validate"], ["cleanup"], ["paths"], ["view"],
                  ["evolve"], ["explain"], ["label"], ["demo"], ["compare"], ["sweep"], ["bridge", "train"], ["bridge", "eval"],
                  ["bridge", "demo"], ["steer"]]


def test_every_command_that_runs_a_model_takes_a_device(capsys, task_run, circuit_dir, tmp_path):
    """--device cpu|cuda|auto on each such command; cpu and auto (the CPU on this machine) give the default's
    figures; cuda without a CUDA device is one error line."""
    import torch

    for argv in MODEL_COMMANDS:
        assert "--device {cpu,cuda,auto}" in _help_text(capsys, argv), argv
    run, task = task_run
    outputs = []
    for device in ([], ["--device", "cpu"], ["--device", "auto"]):
        main(["tasks", "eval", str(run), "--task", str(task), "--json", *device])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and json.loads(outputs[0])
    copy = tmp_path / "circuit"
    shutil.copytree(circuit_dir, copy)
    main(["paths", str(copy), "--device", "auto"])
    on_auto = json.loads((copy / "paths.json").read_text())
    main(["paths", str(copy)])
    assert json.loads((copy / "paths.json").read_text()) == on_auto
    if not torch.cuda.is_available():
        fails(capsys, ["tasks", "eval", str(run), "--task", str(task), "--device", "cuda"],
              "--device is 'cuda' but no CUDA device is available: use 'auto' or 'cpu'")
        fails(capsys, ["prune", str(run), "--task", str(task), "--out", str(tmp_path / "c"), "--device", "cuda"],
              "no CUDA device is available")
        assert not (tmp_path / "c").exists()


def test_the_python_api_takes_a_device(task_run, tmp_path):
    import torch

    from sparsecircuits import PruneSettings, prune
    from sparsecircuits.circuits.workbench import Workbench

    run, task = task_run
    assert Workbench(run, "auto").device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert Workbench(run, "cpu").model.wte.weight.device == torch.device("cpu")
    settings = PruneSettings(target_loss=0.6, steps=20, calibration_steps=4)
    circuits = [prune(run, str(task), tmp_path / device, settings, show_progress=False, device=device) for device in ("cpu", "auto")]
    assert circuits[0].nodes == circuits[1].nodes and circuits[0].metrics["loss_circuit"] == circuits[1].metrics["loss_circuit"]
