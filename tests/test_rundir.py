"""The run directory moved or copied: the data is found beside it, or given with --data."""

from __future__ import annotations

import json
import shutil

import pytest

from sparsecircuits.cli import main
from sparsecircuits.rundir import read_run_info, recorded_data_dir


def test_a_run_copied_with_its_data_finds_it_and_one_copied_alone_asks_for_it(trained_run, data_dir, tmp_path, capsys):
    info = read_run_info(trained_run)
    assert recorded_data_dir(trained_run) == data_dir.resolve() and info["data_relative"]
    # the run and its data moved together, keeping their relative places: the relative path finds it
    relative = tmp_path / "together" / "runs" / "tiny"
    shutil.copytree(trained_run, relative)
    moved_data = (relative / info["data_relative"]).resolve()
    shutil.copytree(data_dir, moved_data)
    record = json.loads((relative / "run.json").read_text())
    record["data"] = str(tmp_path / "gone")  # as if on another machine
    (relative / "run.json").write_text(json.dumps(record))
    assert recorded_data_dir(relative) == moved_data
    # the run alone: commands that read text ask for --data, and work with it
    alone = tmp_path / "alone"
    shutil.copytree(trained_run, alone)
    (alone / "run.json").write_text(json.dumps({**record, "data_relative": "../nowhere"}))
    with pytest.raises(SystemExit):
        main(["eval", str(alone)])
    assert "is gone: pass --data DATA_DIR" in capsys.readouterr().err
    main(["eval", str(alone), "--data", str(data_dir), "--json"])
    assert "val_loss" in json.loads(capsys.readouterr().out)
