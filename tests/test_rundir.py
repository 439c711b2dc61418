"""The run directory moved or copied: the data is found beside it, or given with --data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sparsecircuits import SparseCircuitsError, SparseGPT
from sparsecircuits.cli import main
from sparsecircuits.rundir import MODEL_FILE, Run, file_sha256, read_run_info


def test_a_run_copied_with_its_data_finds_it_and_one_copied_alone_asks_for_it(trained_run, data_dir, tmp_path, capsys):
    info = read_run_info(trained_run)
    assert Run.open(trained_run).data_dir() == data_dir.resolve() and info["data_relative"]
    # the run and its data moved together, keeping their relative places: the relative path finds it
    relative = tmp_path / "together" / "runs" / "tiny"
    shutil.copytree(trained_run, relative)
    moved_data = (relative / info["data_relative"]).resolve()
    shutil.copytree(data_dir, moved_data)
    record = json.loads((relative / "run.json").read_text())
    record["data"] = str(tmp_path / "gone")  # as if on another machine
    (relative / "run.json").write_text(json.dumps(record))
    assert Run.open(relative).data_dir() == moved_data
    # the run alone: commands that read text ask for --data, and work with it
    alone = tmp_path / "alone"
    shutil.copytree(trained_run, alone)
    (alone / "run.json").write_text(json.dumps({**record, "data_relative": "../nowhere"}))
    with pytest.raises(SystemExit):
        main(["eval", str(alone)])
    assert "is gone: pass --data DATA_DIR" in capsys.readouterr().err
    main(["eval", str(alone), "--data", str(data_dir), "--json"])
    assert "val_loss" in json.loads(capsys.readouterr().out)


def test_a_run_opened_once_gives_its_model_data_and_digest(trained_run, data_dir):
    run = Run.open(trained_run)
    model = run.model()
    assert run.weights_sha256 == file_sha256(trained_run / MODEL_FILE) and run.config.model == model.config
    assert run.data().directory.resolve() == data_dir.resolve()
    # the model is a plain module: its tokenizer is its one run-given attribute, the run keeps the rest
    assert not hasattr(model, "run_config") and not hasattr(model, "weights_sha256")
    tokens = model.to_tokens("def f(x):\n    return x")
    assert tokens.shape[0] == 1 and model.to_string(tokens[0]) == "def f(x):\n    return x"
    torch.testing.assert_close(model(tokens), SparseGPT.from_pretrained(trained_run)(tokens), rtol=0, atol=0)
    with pytest.raises(SparseCircuitsError, match="has no tokenizer"):
        SparseGPT(run.config.model).to_tokens("x")


def test_opening_a_folder_that_is_not_a_run_says_what_it_is(tmp_path):
    with pytest.raises(SparseCircuitsError, match="run directory not found"):
        Run.open(tmp_path / "missing")
    with pytest.raises(SparseCircuitsError, match="is not a run directory"):
        Run.open(tmp_path)


def test_the_model_layer_imports_nothing_from_the_run_layer():
    import ast

    import sparsecircuits.model

    for path in Path(sparsecircuits.model.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "rundir" not in (node.module or "") and not (node.level == 2 and node.module is None), path
